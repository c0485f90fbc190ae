"""RPCs of the contract that are not built yet answer UNIMPLEMENTED with a message saying so: no fake results.

    class TrainingServicer(training_service_pb2_grpc.TrainingServiceServicer):
        Train = not_built_yet("Train", "DP and plain classifier training")
"""

from __future__ import annotations

from umbra.runtime.errors import Unimplemented


def not_built_yet(rpc: str, what: str):
    def method(self, request, context):
        raise Unimplemented(f"{rpc} is not built yet: {what} is still to come in this version of Umbra",
                            metadata={"rpc": rpc})

    method.__name__ = rpc
    method.__doc__ = f"Not built yet ({what}): answers UNIMPLEMENTED."
    return method
