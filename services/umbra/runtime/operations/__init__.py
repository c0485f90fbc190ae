"""Long-running operations (AIP-151) that survive a restart: a persisted record per operation, a runner that
does the work on background threads with progress and cancellation, `LongRunning` (the one way a service starts
or resumes an operation from its request), and the `google.longrunning.Operations` servicer over them."""

from umbra.runtime.operations.long_running import LongRunning
from umbra.runtime.operations.runner import OperationContext, OperationRunner
from umbra.runtime.operations.store import OperationStore

__all__ = ["LongRunning", "OperationContext", "OperationRunner", "OperationStore"]
