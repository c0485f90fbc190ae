from google.longrunning import operations_pb2 as _operations_pb2
from umbra.common.v1 import operation_pb2 as _operation_pb2
from umbra.common.v1 import refs_pb2 as _refs_pb2
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class StartPolicy(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    START_POLICY_UNSPECIFIED: _ClassVar[StartPolicy]
    START_POLICY_RANDOM_OTHER_CLASS: _ClassVar[StartPolicy]
START_POLICY_UNSPECIFIED: StartPolicy
START_POLICY_RANDOM_OTHER_CLASS: StartPolicy

class DistortDatasetRequest(_message.Message):
    __slots__ = ("dataset", "label_column", "feature_extractor", "copies", "steps", "step_size", "batch_size", "start_policy", "seed", "output_dataset", "request_id", "output_version", "momentum")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    LABEL_COLUMN_FIELD_NUMBER: _ClassVar[int]
    FEATURE_EXTRACTOR_FIELD_NUMBER: _ClassVar[int]
    COPIES_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    STEP_SIZE_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    START_POLICY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DATASET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_VERSION_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    dataset: _refs_pb2.DatasetRef
    label_column: str
    feature_extractor: _refs_pb2.ModelRef
    copies: int
    steps: int
    step_size: float
    batch_size: int
    start_policy: StartPolicy
    seed: int
    output_dataset: str
    request_id: str
    output_version: int
    momentum: float
    def __init__(self, dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., label_column: _Optional[str] = ..., feature_extractor: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., copies: _Optional[int] = ..., steps: _Optional[int] = ..., step_size: _Optional[float] = ..., batch_size: _Optional[int] = ..., start_policy: _Optional[_Union[StartPolicy, str]] = ..., seed: _Optional[int] = ..., output_dataset: _Optional[str] = ..., request_id: _Optional[str] = ..., output_version: _Optional[int] = ..., momentum: _Optional[float] = ...) -> None: ...

class DistortDatasetResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _operations_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_operations_pb2.Operation, _Mapping]] = ...) -> None: ...

class DistortDatasetMetadata(_message.Message):
    __slots__ = ("progress", "shards_done", "feature_loss")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_DONE_FIELD_NUMBER: _ClassVar[int]
    FEATURE_LOSS_FIELD_NUMBER: _ClassVar[int]
    progress: _operation_pb2.OperationProgress
    shards_done: int
    feature_loss: float
    def __init__(self, progress: _Optional[_Union[_operation_pb2.OperationProgress, _Mapping]] = ..., shards_done: _Optional[int] = ..., feature_loss: _Optional[float] = ...) -> None: ...

class DistortionResult(_message.Message):
    __slots__ = ("released", "record", "feature_loss", "image_count", "unlabelled_skipped")
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    FEATURE_LOSS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    UNLABELLED_SKIPPED_FIELD_NUMBER: _ClassVar[int]
    released: _refs_pb2.DatasetRef
    record: _refs_pb2.ObjectRef
    feature_loss: float
    image_count: int
    unlabelled_skipped: int
    def __init__(self, released: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., record: _Optional[_Union[_refs_pb2.ObjectRef, _Mapping]] = ..., feature_loss: _Optional[float] = ..., image_count: _Optional[int] = ..., unlabelled_skipped: _Optional[int] = ...) -> None: ...
