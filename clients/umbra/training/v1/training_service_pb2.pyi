import datetime

from google.longrunning import operations_pb2 as _operations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from umbra.common.v1 import operation_pb2 as _operation_pb2
from umbra.common.v1 import privacy_pb2 as _privacy_pb2
from umbra.common.v1 import refs_pb2 as _refs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Architecture(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ARCHITECTURE_UNSPECIFIED: _ClassVar[Architecture]
    ARCHITECTURE_GROUPNORM_CNN: _ClassVar[Architecture]
    ARCHITECTURE_SMALL_RESNET: _ClassVar[Architecture]
    ARCHITECTURE_SCATTERNET_LINEAR: _ClassVar[Architecture]
    ARCHITECTURE_SCATTERNET_CNN: _ClassVar[Architecture]
ARCHITECTURE_UNSPECIFIED: Architecture
ARCHITECTURE_GROUPNORM_CNN: Architecture
ARCHITECTURE_SMALL_RESNET: Architecture
ARCHITECTURE_SCATTERNET_LINEAR: Architecture
ARCHITECTURE_SCATTERNET_CNN: Architecture

class Hyperparameters(_message.Message):
    __slots__ = ("epochs", "batch_size", "physical_batch_size", "learning_rate", "optimizer", "momentum", "weight_decay", "image_size", "augmentation_multiplicity", "width", "mirror_average", "schedule")
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    OPTIMIZER_FIELD_NUMBER: _ClassVar[int]
    MOMENTUM_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_DECAY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    AUGMENTATION_MULTIPLICITY_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    MIRROR_AVERAGE_FIELD_NUMBER: _ClassVar[int]
    SCHEDULE_FIELD_NUMBER: _ClassVar[int]
    epochs: int
    batch_size: int
    physical_batch_size: int
    learning_rate: float
    optimizer: str
    momentum: float
    weight_decay: float
    image_size: int
    augmentation_multiplicity: int
    width: int
    mirror_average: bool
    schedule: str
    def __init__(self, epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., physical_batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., optimizer: _Optional[str] = ..., momentum: _Optional[float] = ..., weight_decay: _Optional[float] = ..., image_size: _Optional[int] = ..., augmentation_multiplicity: _Optional[int] = ..., width: _Optional[int] = ..., mirror_average: _Optional[bool] = ..., schedule: _Optional[str] = ...) -> None: ...

class DifferentialPrivacy(_message.Message):
    __slots__ = ("target_epsilon", "target_delta", "noise_multiplier", "max_grad_norm", "poisson_sampling", "accountant", "secure_mode")
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    TARGET_DELTA_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    POISSON_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    SECURE_MODE_FIELD_NUMBER: _ClassVar[int]
    target_epsilon: float
    target_delta: float
    noise_multiplier: float
    max_grad_norm: float
    poisson_sampling: bool
    accountant: _privacy_pb2.PrivacyAccountant
    secure_mode: bool
    def __init__(self, target_epsilon: _Optional[float] = ..., target_delta: _Optional[float] = ..., noise_multiplier: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., poisson_sampling: _Optional[bool] = ..., accountant: _Optional[_Union[_privacy_pb2.PrivacyAccountant, str]] = ..., secure_mode: _Optional[bool] = ...) -> None: ...

class ModelVersion(_message.Message):
    __slots__ = ("name", "state", "weights", "config", "record", "training_record", "create_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ModelVersion.State]
        STATE_CREATING: _ClassVar[ModelVersion.State]
        STATE_READY: _ClassVar[ModelVersion.State]
        STATE_DELETED: _ClassVar[ModelVersion.State]
    STATE_UNSPECIFIED: ModelVersion.State
    STATE_CREATING: ModelVersion.State
    STATE_READY: ModelVersion.State
    STATE_DELETED: ModelVersion.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    TRAINING_RECORD_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: ModelVersion.State
    weights: _refs_pb2.ObjectRef
    config: _refs_pb2.ObjectRef
    record: _refs_pb2.ObjectRef
    training_record: TrainingRecord
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[ModelVersion.State, str]] = ..., weights: _Optional[_Union[_refs_pb2.ObjectRef, _Mapping]] = ..., config: _Optional[_Union[_refs_pb2.ObjectRef, _Mapping]] = ..., record: _Optional[_Union[_refs_pb2.ObjectRef, _Mapping]] = ..., training_record: _Optional[_Union[TrainingRecord, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class TrainingRecord(_message.Message):
    __slots__ = ("dataset", "task", "classes", "architecture", "hyperparameters", "seed", "differential_privacy", "privacy_cost", "steps", "metrics", "initialized_from", "code_version", "processes")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    CLASSES_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    DIFFERENTIAL_PRIVACY_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_COST_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    INITIALIZED_FROM_FIELD_NUMBER: _ClassVar[int]
    CODE_VERSION_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    dataset: _refs_pb2.DatasetRef
    task: str
    classes: _containers.RepeatedScalarFieldContainer[str]
    architecture: Architecture
    hyperparameters: Hyperparameters
    seed: int
    differential_privacy: DifferentialPrivacy
    privacy_cost: _privacy_pb2.PrivacyCost
    steps: int
    metrics: _containers.ScalarMap[str, float]
    initialized_from: _refs_pb2.ModelRef
    code_version: str
    processes: int
    def __init__(self, dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., task: _Optional[str] = ..., classes: _Optional[_Iterable[str]] = ..., architecture: _Optional[_Union[Architecture, str]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., seed: _Optional[int] = ..., differential_privacy: _Optional[_Union[DifferentialPrivacy, _Mapping]] = ..., privacy_cost: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ..., steps: _Optional[int] = ..., metrics: _Optional[_Mapping[str, float]] = ..., initialized_from: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., code_version: _Optional[str] = ..., processes: _Optional[int] = ...) -> None: ...

class TrainRequest(_message.Message):
    __slots__ = ("model", "dataset", "task", "architecture", "hyperparameters", "differential_privacy", "initialize_from", "seed", "request_id", "revision", "processes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    TASK_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    HYPERPARAMETERS_FIELD_NUMBER: _ClassVar[int]
    DIFFERENTIAL_PRIVACY_FIELD_NUMBER: _ClassVar[int]
    INITIALIZE_FROM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    PROCESSES_FIELD_NUMBER: _ClassVar[int]
    model: str
    dataset: _refs_pb2.DatasetRef
    task: str
    architecture: Architecture
    hyperparameters: Hyperparameters
    differential_privacy: DifferentialPrivacy
    initialize_from: _refs_pb2.ModelRef
    seed: int
    request_id: str
    revision: _refs_pb2.DatasetRevision
    processes: int
    def __init__(self, model: _Optional[str] = ..., dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., task: _Optional[str] = ..., architecture: _Optional[_Union[Architecture, str]] = ..., hyperparameters: _Optional[_Union[Hyperparameters, _Mapping]] = ..., differential_privacy: _Optional[_Union[DifferentialPrivacy, _Mapping]] = ..., initialize_from: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., seed: _Optional[int] = ..., request_id: _Optional[str] = ..., revision: _Optional[_Union[_refs_pb2.DatasetRevision, _Mapping]] = ..., processes: _Optional[int] = ...) -> None: ...

class TrainResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _operations_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_operations_pb2.Operation, _Mapping]] = ...) -> None: ...

class TrainMetadata(_message.Message):
    __slots__ = ("progress", "epoch", "loss", "checkpoint")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    CHECKPOINT_FIELD_NUMBER: _ClassVar[int]
    progress: _operation_pb2.OperationProgress
    epoch: int
    loss: float
    checkpoint: _refs_pb2.ObjectRef
    def __init__(self, progress: _Optional[_Union[_operation_pb2.OperationProgress, _Mapping]] = ..., epoch: _Optional[int] = ..., loss: _Optional[float] = ..., checkpoint: _Optional[_Union[_refs_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class Evaluation(_message.Message):
    __slots__ = ("model", "dataset", "accuracy", "balanced_accuracy", "per_class", "sample_count")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_FIELD_NUMBER: _ClassVar[int]
    BALANCED_ACCURACY_FIELD_NUMBER: _ClassVar[int]
    PER_CLASS_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    model: _refs_pb2.ModelRef
    dataset: _refs_pb2.DatasetRef
    accuracy: float
    balanced_accuracy: float
    per_class: _containers.RepeatedCompositeFieldContainer[ClassMetrics]
    sample_count: int
    def __init__(self, model: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., accuracy: _Optional[float] = ..., balanced_accuracy: _Optional[float] = ..., per_class: _Optional[_Iterable[_Union[ClassMetrics, _Mapping]]] = ..., sample_count: _Optional[int] = ...) -> None: ...

class ClassMetrics(_message.Message):
    __slots__ = ("class_name", "precision", "recall", "support")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    RECALL_FIELD_NUMBER: _ClassVar[int]
    SUPPORT_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    precision: float
    recall: float
    support: int
    def __init__(self, class_name: _Optional[str] = ..., precision: _Optional[float] = ..., recall: _Optional[float] = ..., support: _Optional[int] = ...) -> None: ...

class EvaluateRequest(_message.Message):
    __slots__ = ("model", "dataset", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: _refs_pb2.ModelRef
    dataset: _refs_pb2.DatasetRef
    request_id: str
    def __init__(self, model: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class EvaluateResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _operations_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_operations_pb2.Operation, _Mapping]] = ...) -> None: ...

class EvaluateMetadata(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: _operation_pb2.OperationProgress
    def __init__(self, progress: _Optional[_Union[_operation_pb2.OperationProgress, _Mapping]] = ...) -> None: ...

class GetModelVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetModelVersionResponse(_message.Message):
    __slots__ = ("model_version",)
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    model_version: ModelVersion
    def __init__(self, model_version: _Optional[_Union[ModelVersion, _Mapping]] = ...) -> None: ...

class ListModelVersionsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelVersionsResponse(_message.Message):
    __slots__ = ("model_versions", "next_page_token")
    MODEL_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    model_versions: _containers.RepeatedCompositeFieldContainer[ModelVersion]
    next_page_token: str
    def __init__(self, model_versions: _Optional[_Iterable[_Union[ModelVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteModelVersionRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteModelVersionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExportModelVersionRequest(_message.Message):
    __slots__ = ("model", "served_model_name", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SERVED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: _refs_pb2.ModelRef
    served_model_name: str
    request_id: str
    def __init__(self, model: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., served_model_name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class ExportModelVersionResponse(_message.Message):
    __slots__ = ("served_model_name", "endpoint")
    SERVED_MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    served_model_name: str
    endpoint: str
    def __init__(self, served_model_name: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...
