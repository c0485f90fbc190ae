from google.longrunning import operations_pb2 as _operations_pb2
from umbra.common.v1 import image_pb2 as _image_pb2
from umbra.common.v1 import operation_pb2 as _operation_pb2
from umbra.common.v1 import privacy_pb2 as _privacy_pb2
from umbra.common.v1 import refs_pb2 as _refs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GeneratorPrivacy(_message.Message):
    __slots__ = ("target_epsilon", "target_delta", "max_grad_norm", "noise_multiplicity")
    TARGET_EPSILON_FIELD_NUMBER: _ClassVar[int]
    TARGET_DELTA_FIELD_NUMBER: _ClassVar[int]
    MAX_GRAD_NORM_FIELD_NUMBER: _ClassVar[int]
    NOISE_MULTIPLICITY_FIELD_NUMBER: _ClassVar[int]
    target_epsilon: float
    target_delta: float
    max_grad_norm: float
    noise_multiplicity: int
    def __init__(self, target_epsilon: _Optional[float] = ..., target_delta: _Optional[float] = ..., max_grad_norm: _Optional[float] = ..., noise_multiplicity: _Optional[int] = ...) -> None: ...

class TrainGeneratorRequest(_message.Message):
    __slots__ = ("dataset", "condition_attributes", "model", "privacy", "image_size", "epochs", "batch_size", "learning_rate", "initialize_from", "seed", "request_id", "budget", "design", "latent_dim", "initialize_from_public")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    CONDITION_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    EPOCHS_FIELD_NUMBER: _ClassVar[int]
    BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    LEARNING_RATE_FIELD_NUMBER: _ClassVar[int]
    INITIALIZE_FROM_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    DESIGN_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    INITIALIZE_FROM_PUBLIC_FIELD_NUMBER: _ClassVar[int]
    dataset: _refs_pb2.DatasetRef
    condition_attributes: _containers.RepeatedScalarFieldContainer[str]
    model: str
    privacy: GeneratorPrivacy
    image_size: int
    epochs: int
    batch_size: int
    learning_rate: float
    initialize_from: _refs_pb2.ModelRef
    seed: int
    request_id: str
    budget: _privacy_pb2.PrivacyBudget
    design: str
    latent_dim: int
    initialize_from_public: str
    def __init__(self, dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., condition_attributes: _Optional[_Iterable[str]] = ..., model: _Optional[str] = ..., privacy: _Optional[_Union[GeneratorPrivacy, _Mapping]] = ..., image_size: _Optional[int] = ..., epochs: _Optional[int] = ..., batch_size: _Optional[int] = ..., learning_rate: _Optional[float] = ..., initialize_from: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., seed: _Optional[int] = ..., request_id: _Optional[str] = ..., budget: _Optional[_Union[_privacy_pb2.PrivacyBudget, _Mapping]] = ..., design: _Optional[str] = ..., latent_dim: _Optional[int] = ..., initialize_from_public: _Optional[str] = ...) -> None: ...

class TrainGeneratorResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _operations_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_operations_pb2.Operation, _Mapping]] = ...) -> None: ...

class TrainGeneratorMetadata(_message.Message):
    __slots__ = ("progress", "epoch", "loss")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    progress: _operation_pb2.OperationProgress
    epoch: int
    loss: float
    def __init__(self, progress: _Optional[_Union[_operation_pb2.OperationProgress, _Mapping]] = ..., epoch: _Optional[int] = ..., loss: _Optional[float] = ...) -> None: ...

class GeneratorResult(_message.Message):
    __slots__ = ("generator", "privacy_cost")
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_COST_FIELD_NUMBER: _ClassVar[int]
    generator: _refs_pb2.ModelRef
    privacy_cost: _privacy_pb2.PrivacyCost
    def __init__(self, generator: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., privacy_cost: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ...) -> None: ...

class AnonymizationSettings(_message.Message):
    __slots__ = ("generator", "protected_attributes", "kept_attributes", "intensity", "steps", "seed", "budget")
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    KEPT_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    INTENSITY_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    generator: _refs_pb2.ModelRef
    protected_attributes: _containers.RepeatedScalarFieldContainer[str]
    kept_attributes: _containers.RepeatedScalarFieldContainer[str]
    intensity: float
    steps: int
    seed: int
    budget: _privacy_pb2.PrivacyBudget
    def __init__(self, generator: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., protected_attributes: _Optional[_Iterable[str]] = ..., kept_attributes: _Optional[_Iterable[str]] = ..., intensity: _Optional[float] = ..., steps: _Optional[int] = ..., seed: _Optional[int] = ..., budget: _Optional[_Union[_privacy_pb2.PrivacyBudget, _Mapping]] = ...) -> None: ...

class AnonymizedImage(_message.Message):
    __slots__ = ("image", "released_attributes", "privacy_cost")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    RELEASED_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_COST_FIELD_NUMBER: _ClassVar[int]
    image: _image_pb2.Image
    released_attributes: _containers.RepeatedCompositeFieldContainer[_image_pb2.AttributeValue]
    privacy_cost: _privacy_pb2.PrivacyCost
    def __init__(self, image: _Optional[_Union[_image_pb2.Image, _Mapping]] = ..., released_attributes: _Optional[_Iterable[_Union[_image_pb2.AttributeValue, _Mapping]]] = ..., privacy_cost: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ...) -> None: ...

class AnonymizeRequest(_message.Message):
    __slots__ = ("settings", "dataset", "sample_keys", "request_id")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    settings: AnonymizationSettings
    dataset: _refs_pb2.DatasetRef
    sample_keys: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, settings: _Optional[_Union[AnonymizationSettings, _Mapping]] = ..., dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., sample_keys: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class AnonymizeResponse(_message.Message):
    __slots__ = ("images", "privacy_cost")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_COST_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedCompositeFieldContainer[AnonymizedImage]
    privacy_cost: _privacy_pb2.PrivacyCost
    def __init__(self, images: _Optional[_Iterable[_Union[AnonymizedImage, _Mapping]]] = ..., privacy_cost: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ...) -> None: ...

class AnonymizeDatasetRequest(_message.Message):
    __slots__ = ("settings", "dataset", "output_dataset", "shards", "request_id", "output_version")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DATASET_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_VERSION_FIELD_NUMBER: _ClassVar[int]
    settings: AnonymizationSettings
    dataset: _refs_pb2.DatasetRef
    output_dataset: str
    shards: _containers.RepeatedScalarFieldContainer[int]
    request_id: str
    output_version: int
    def __init__(self, settings: _Optional[_Union[AnonymizationSettings, _Mapping]] = ..., dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., output_dataset: _Optional[str] = ..., shards: _Optional[_Iterable[int]] = ..., request_id: _Optional[str] = ..., output_version: _Optional[int] = ...) -> None: ...

class AnonymizeDatasetResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _operations_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_operations_pb2.Operation, _Mapping]] = ...) -> None: ...

class AnonymizeDatasetMetadata(_message.Message):
    __slots__ = ("progress", "shards_done")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_DONE_FIELD_NUMBER: _ClassVar[int]
    progress: _operation_pb2.OperationProgress
    shards_done: int
    def __init__(self, progress: _Optional[_Union[_operation_pb2.OperationProgress, _Mapping]] = ..., shards_done: _Optional[int] = ...) -> None: ...

class AnonymizationResult(_message.Message):
    __slots__ = ("anonymized", "privacy_cost", "image_count", "left_out", "record")
    ANONYMIZED_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_COST_FIELD_NUMBER: _ClassVar[int]
    IMAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    LEFT_OUT_FIELD_NUMBER: _ClassVar[int]
    RECORD_FIELD_NUMBER: _ClassVar[int]
    anonymized: _refs_pb2.DatasetRef
    privacy_cost: _privacy_pb2.PrivacyCost
    image_count: int
    left_out: int
    record: _refs_pb2.ObjectRef
    def __init__(self, anonymized: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., privacy_cost: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ..., image_count: _Optional[int] = ..., left_out: _Optional[int] = ..., record: _Optional[_Union[_refs_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class EstimatePrivacyCostRequest(_message.Message):
    __slots__ = ("settings", "image_count")
    SETTINGS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_COUNT_FIELD_NUMBER: _ClassVar[int]
    settings: AnonymizationSettings
    image_count: int
    def __init__(self, settings: _Optional[_Union[AnonymizationSettings, _Mapping]] = ..., image_count: _Optional[int] = ...) -> None: ...

class EstimatePrivacyCostResponse(_message.Message):
    __slots__ = ("privacy_cost",)
    PRIVACY_COST_FIELD_NUMBER: _ClassVar[int]
    privacy_cost: _privacy_pb2.PrivacyCost
    def __init__(self, privacy_cost: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ...) -> None: ...

class MeasureRiskRequest(_message.Message):
    __slots__ = ("dataset", "sample_keys", "gallery_sample_keys", "released_images", "protected_attributes", "seed", "request_id", "kept_attributes")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    GALLERY_SAMPLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    RELEASED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    KEPT_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    dataset: _refs_pb2.DatasetRef
    sample_keys: _containers.RepeatedScalarFieldContainer[str]
    gallery_sample_keys: _containers.RepeatedScalarFieldContainer[str]
    released_images: _containers.RepeatedCompositeFieldContainer[_image_pb2.Image]
    protected_attributes: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    request_id: str
    kept_attributes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., sample_keys: _Optional[_Iterable[str]] = ..., gallery_sample_keys: _Optional[_Iterable[str]] = ..., released_images: _Optional[_Iterable[_Union[_image_pb2.Image, _Mapping]]] = ..., protected_attributes: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., request_id: _Optional[str] = ..., kept_attributes: _Optional[_Iterable[str]] = ...) -> None: ...

class MeasureRiskResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _operations_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_operations_pb2.Operation, _Mapping]] = ...) -> None: ...

class MeasureRiskMetadata(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: _operation_pb2.OperationProgress
    def __init__(self, progress: _Optional[_Union[_operation_pb2.OperationProgress, _Mapping]] = ...) -> None: ...

class RiskResult(_message.Message):
    __slots__ = ("metrics",)
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    METRICS_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.ScalarMap[str, float]
    def __init__(self, metrics: _Optional[_Mapping[str, float]] = ...) -> None: ...

class EvaluateReleaseRequest(_message.Message):
    __slots__ = ("dataset", "anonymized_version", "sample_keys", "protected_attributes", "kept_attributes", "seed", "request_id")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    ANONYMIZED_VERSION_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_KEYS_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    KEPT_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    dataset: _refs_pb2.DatasetRef
    anonymized_version: int
    sample_keys: _containers.RepeatedScalarFieldContainer[str]
    protected_attributes: _containers.RepeatedScalarFieldContainer[str]
    kept_attributes: _containers.RepeatedScalarFieldContainer[str]
    seed: int
    request_id: str
    def __init__(self, dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., anonymized_version: _Optional[int] = ..., sample_keys: _Optional[_Iterable[str]] = ..., protected_attributes: _Optional[_Iterable[str]] = ..., kept_attributes: _Optional[_Iterable[str]] = ..., seed: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class EvaluateReleaseResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _operations_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_operations_pb2.Operation, _Mapping]] = ...) -> None: ...

class EvaluateReleaseMetadata(_message.Message):
    __slots__ = ("progress",)
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    progress: _operation_pb2.OperationProgress
    def __init__(self, progress: _Optional[_Union[_operation_pb2.OperationProgress, _Mapping]] = ...) -> None: ...

class EvaluationResult(_message.Message):
    __slots__ = ("metrics", "skipped")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class SkippedEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    METRICS_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_FIELD_NUMBER: _ClassVar[int]
    metrics: _containers.ScalarMap[str, float]
    skipped: _containers.ScalarMap[str, str]
    def __init__(self, metrics: _Optional[_Mapping[str, float]] = ..., skipped: _Optional[_Mapping[str, str]] = ...) -> None: ...
