"""Long-running operations (AIP-151) that survive a restart: a persisted record per operation, a runner that
does the work on background threads with progress and cancellation, and the `google.longrunning.Operations`
servicer over both."""

from umbra.runtime.operations.runner import OperationContext, OperationRunner
from umbra.runtime.operations.store import OperationStore

__all__ = ["OperationContext", "OperationRunner", "OperationStore"]
