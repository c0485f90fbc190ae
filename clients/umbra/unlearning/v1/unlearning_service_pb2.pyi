from google.longrunning import operations_pb2 as _operations_pb2
from umbra.common.v1 import operation_pb2 as _operation_pb2
from umbra.common.v1 import refs_pb2 as _refs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Method(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METHOD_UNSPECIFIED: _ClassVar[Method]
    METHOD_FIRST_ORDER: _ClassVar[Method]
    METHOD_SECOND_ORDER: _ClassVar[Method]
METHOD_UNSPECIFIED: Method
METHOD_FIRST_ORDER: Method
METHOD_SECOND_ORDER: Method

class Lissa(_message.Message):
    __slots__ = ("damping", "scale", "depth", "patience", "batch_size")
    DAMPING_FIELD_NUMBER: _ClassVar[int]
    SCALE_FIELD_NUMBER: _ClassVar[int]
    DEPTH_FIELD_NUMBER: _ClassVar[int]
    PATIENCE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    damping: float
    scale: float
    depth: int
    patience: int
    batch_size: int
    def __init__(self, damping: _Optional[float] = ..., scale: _Optional[float] = ..., depth: _Optional[int] = ..., patience: _Optional[int] = ..., batch_size: _Optional[int] = ...) -> None: ...

class Revision(_message.Message):
    __slots__ = ("revised", "removed")
    REVISED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    revised: _refs_pb2.DatasetRef
    removed: RemovedKeys
    def __init__(self, revised: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., removed: _Optional[_Union[RemovedKeys, _Mapping]] = ...) -> None: ...

class RemovedKeys(_message.Message):
    __slots__ = ("keys",)
    KEYS_FIELD_NUMBER: _ClassVar[int]
    keys: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, keys: _Optional[_Iterable[str]] = ...) -> None: ...

class UnlearnRequest(_message.Message):
    __slots__ = ("model", "original", "revision", "method", "tau", "lissa", "verify", "output_model", "request_id", "probe_attribute")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TAU_FIELD_NUMBER: _ClassVar[int]
    LISSA_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_MODEL_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROBE_ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    model: _refs_pb2.ModelRef
    original: _refs_pb2.DatasetRef
    revision: Revision
    method: Method
    tau: float
    lissa: Lissa
    verify: bool
    output_model: str
    request_id: str
    probe_attribute: str
    def __init__(self, model: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., original: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., revision: _Optional[_Union[Revision, _Mapping]] = ..., method: _Optional[_Union[Method, str]] = ..., tau: _Optional[float] = ..., lissa: _Optional[_Union[Lissa, _Mapping]] = ..., verify: _Optional[bool] = ..., output_model: _Optional[str] = ..., request_id: _Optional[str] = ..., probe_attribute: _Optional[str] = ...) -> None: ...

class UnlearnResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _operations_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_operations_pb2.Operation, _Mapping]] = ...) -> None: ...

class UnlearnMetadata(_message.Message):
    __slots__ = ("progress", "gradient_evaluations")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    progress: _operation_pb2.OperationProgress
    gradient_evaluations: int
    def __init__(self, progress: _Optional[_Union[_operation_pb2.OperationProgress, _Mapping]] = ..., gradient_evaluations: _Optional[int] = ...) -> None: ...

class Verification(_message.Message):
    __slots__ = ("accuracy_original", "accuracy_unlearned", "accuracy_retrained", "agreement_with_retrained", "parameter_distance", "probe_balanced_accuracy", "retrain_seconds", "retrained", "test_count")
    class ProbeBalancedAccuracyEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    ACCURACY_ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_UNLEARNED_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_RETRAINED_FIELD_NUMBER: _ClassVar[int]
    AGREEMENT_WITH_RETRAINED_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    PROBE_BALANCED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    RETRAIN_SECONDS_FIELD_NUMBER: _ClassVar[int]
    RETRAINED_FIELD_NUMBER: _ClassVar[int]
    TEST_COUNT_FIELD_NUMBER: _ClassVar[int]
    accuracy_original: float
    accuracy_unlearned: float
    accuracy_retrained: float
    agreement_with_retrained: float
    parameter_distance: float
    probe_balanced_accuracy: _containers.ScalarMap[str, float]
    retrain_seconds: float
    retrained: _refs_pb2.ModelRef
    test_count: int
    def __init__(self, accuracy_original: _Optional[float] = ..., accuracy_unlearned: _Optional[float] = ..., accuracy_retrained: _Optional[float] = ..., agreement_with_retrained: _Optional[float] = ..., parameter_distance: _Optional[float] = ..., probe_balanced_accuracy: _Optional[_Mapping[str, float]] = ..., retrain_seconds: _Optional[float] = ..., retrained: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., test_count: _Optional[int] = ...) -> None: ...

class UnlearningResult(_message.Message):
    __slots__ = ("unlearned", "gradient_evaluations", "seconds", "verification", "outside_original_privacy_guarantee", "tau", "lissa_scale", "update_norm", "changed_samples", "removed_samples", "loss_before", "loss_after")
    UNLEARNED_FIELD_NUMBER: _ClassVar[int]
    GRADIENT_EVALUATIONS_FIELD_NUMBER: _ClassVar[int]
    SECONDS_FIELD_NUMBER: _ClassVar[int]
    VERIFICATION_FIELD_NUMBER: _ClassVar[int]
    OUTSIDE_ORIGINAL_PRIVACY_GUARANTEE_FIELD_NUMBER: _ClassVar[int]
    TAU_FIELD_NUMBER: _ClassVar[int]
    LISSA_SCALE_FIELD_NUMBER: _ClassVar[int]
    UPDATE_NORM_FIELD_NUMBER: _ClassVar[int]
    CHANGED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    REMOVED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    LOSS_BEFORE_FIELD_NUMBER: _ClassVar[int]
    LOSS_AFTER_FIELD_NUMBER: _ClassVar[int]
    unlearned: _refs_pb2.ModelRef
    gradient_evaluations: int
    seconds: float
    verification: Verification
    outside_original_privacy_guarantee: bool
    tau: float
    lissa_scale: float
    update_norm: float
    changed_samples: int
    removed_samples: int
    loss_before: float
    loss_after: float
    def __init__(self, unlearned: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., gradient_evaluations: _Optional[int] = ..., seconds: _Optional[float] = ..., verification: _Optional[_Union[Verification, _Mapping]] = ..., outside_original_privacy_guarantee: _Optional[bool] = ..., tau: _Optional[float] = ..., lissa_scale: _Optional[float] = ..., update_norm: _Optional[float] = ..., changed_samples: _Optional[int] = ..., removed_samples: _Optional[int] = ..., loss_before: _Optional[float] = ..., loss_after: _Optional[float] = ...) -> None: ...
