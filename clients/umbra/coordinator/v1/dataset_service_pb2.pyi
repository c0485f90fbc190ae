import datetime

from google.longrunning import operations_pb2 as _operations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from umbra.common.v1 import operation_pb2 as _operation_pb2
from umbra.common.v1 import refs_pb2 as _refs_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dataset(_message.Message):
    __slots__ = ("name", "display_name", "description", "latest_version", "create_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DISPLAY_NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    LATEST_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    display_name: str
    description: str
    latest_version: int
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., display_name: _Optional[str] = ..., description: _Optional[str] = ..., latest_version: _Optional[int] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class DatasetVersion(_message.Message):
    __slots__ = ("name", "state", "origin", "parent", "sample_count", "shard_count", "size_bytes", "label_columns", "attribute_columns", "split_counts", "image_size", "manifest", "create_time", "commit_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[DatasetVersion.State]
        STATE_UPLOADING: _ClassVar[DatasetVersion.State]
        STATE_COMMITTING: _ClassVar[DatasetVersion.State]
        STATE_COMMITTED: _ClassVar[DatasetVersion.State]
        STATE_FAILED: _ClassVar[DatasetVersion.State]
    STATE_UNSPECIFIED: DatasetVersion.State
    STATE_UPLOADING: DatasetVersion.State
    STATE_COMMITTING: DatasetVersion.State
    STATE_COMMITTED: DatasetVersion.State
    STATE_FAILED: DatasetVersion.State
    class Origin(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        ORIGIN_UNSPECIFIED: _ClassVar[DatasetVersion.Origin]
        ORIGIN_UPLOAD: _ClassVar[DatasetVersion.Origin]
        ORIGIN_ANONYMIZED: _ClassVar[DatasetVersion.Origin]
        ORIGIN_DISTORTED: _ClassVar[DatasetVersion.Origin]
    ORIGIN_UNSPECIFIED: DatasetVersion.Origin
    ORIGIN_UPLOAD: DatasetVersion.Origin
    ORIGIN_ANONYMIZED: DatasetVersion.Origin
    ORIGIN_DISTORTED: DatasetVersion.Origin
    class SplitCountsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ORIGIN_FIELD_NUMBER: _ClassVar[int]
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_COUNT_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    LABEL_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_COLUMNS_FIELD_NUMBER: _ClassVar[int]
    SPLIT_COUNTS_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    COMMIT_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: DatasetVersion.State
    origin: DatasetVersion.Origin
    parent: _refs_pb2.DatasetRef
    sample_count: int
    shard_count: int
    size_bytes: int
    label_columns: _containers.RepeatedScalarFieldContainer[str]
    attribute_columns: _containers.RepeatedScalarFieldContainer[str]
    split_counts: _containers.ScalarMap[str, int]
    image_size: int
    manifest: _refs_pb2.ObjectRef
    create_time: _timestamp_pb2.Timestamp
    commit_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[DatasetVersion.State, str]] = ..., origin: _Optional[_Union[DatasetVersion.Origin, str]] = ..., parent: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., sample_count: _Optional[int] = ..., shard_count: _Optional[int] = ..., size_bytes: _Optional[int] = ..., label_columns: _Optional[_Iterable[str]] = ..., attribute_columns: _Optional[_Iterable[str]] = ..., split_counts: _Optional[_Mapping[str, int]] = ..., image_size: _Optional[int] = ..., manifest: _Optional[_Union[_refs_pb2.ObjectRef, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., commit_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UploadTarget(_message.Message):
    __slots__ = ("shard", "url", "expire_time")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    shard: str
    url: str
    expire_time: _timestamp_pb2.Timestamp
    def __init__(self, shard: _Optional[str] = ..., url: _Optional[str] = ..., expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreateDatasetRequest(_message.Message):
    __slots__ = ("dataset_id", "dataset", "request_id")
    DATASET_ID_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    dataset_id: str
    dataset: Dataset
    request_id: str
    def __init__(self, dataset_id: _Optional[str] = ..., dataset: _Optional[_Union[Dataset, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class GetDatasetRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDatasetResponse(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: Dataset
    def __init__(self, dataset: _Optional[_Union[Dataset, _Mapping]] = ...) -> None: ...

class ListDatasetsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetsResponse(_message.Message):
    __slots__ = ("datasets", "next_page_token")
    DATASETS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    datasets: _containers.RepeatedCompositeFieldContainer[Dataset]
    next_page_token: str
    def __init__(self, datasets: _Optional[_Iterable[_Union[Dataset, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class DeleteDatasetRequest(_message.Message):
    __slots__ = ("name", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    request_id: str
    def __init__(self, name: _Optional[str] = ..., request_id: _Optional[str] = ...) -> None: ...

class DeleteDatasetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CreateDatasetVersionRequest(_message.Message):
    __slots__ = ("parent", "shard_count", "request_id")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    SHARD_COUNT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    parent: str
    shard_count: int
    request_id: str
    def __init__(self, parent: _Optional[str] = ..., shard_count: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateDatasetVersionResponse(_message.Message):
    __slots__ = ("dataset_version", "shard_targets", "manifest_target")
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_TARGETS_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_TARGET_FIELD_NUMBER: _ClassVar[int]
    dataset_version: DatasetVersion
    shard_targets: _containers.RepeatedCompositeFieldContainer[UploadTarget]
    manifest_target: UploadTarget
    def __init__(self, dataset_version: _Optional[_Union[DatasetVersion, _Mapping]] = ..., shard_targets: _Optional[_Iterable[_Union[UploadTarget, _Mapping]]] = ..., manifest_target: _Optional[_Union[UploadTarget, _Mapping]] = ...) -> None: ...

class UploadDatasetChunkRequest(_message.Message):
    __slots__ = ("dataset_version", "shard", "offset", "data", "sha256")
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    dataset_version: str
    shard: str
    offset: int
    data: bytes
    sha256: str
    def __init__(self, dataset_version: _Optional[str] = ..., shard: _Optional[str] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...

class UploadDatasetChunkResponse(_message.Message):
    __slots__ = ("object",)
    OBJECT_FIELD_NUMBER: _ClassVar[int]
    object: _refs_pb2.ObjectRef
    def __init__(self, object: _Optional[_Union[_refs_pb2.ObjectRef, _Mapping]] = ...) -> None: ...

class CommitDatasetVersionRequest(_message.Message):
    __slots__ = ("name", "drop_invalid", "request_id")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DROP_INVALID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    name: str
    drop_invalid: bool
    request_id: str
    def __init__(self, name: _Optional[str] = ..., drop_invalid: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class CommitDatasetVersionResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _operations_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_operations_pb2.Operation, _Mapping]] = ...) -> None: ...

class SampleProblem(_message.Message):
    __slots__ = ("sample", "reason")
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    sample: str
    reason: str
    def __init__(self, sample: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class CommitDatasetVersionMetadata(_message.Message):
    __slots__ = ("progress", "problems")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    PROBLEMS_FIELD_NUMBER: _ClassVar[int]
    progress: _operation_pb2.OperationProgress
    problems: _containers.RepeatedCompositeFieldContainer[SampleProblem]
    def __init__(self, progress: _Optional[_Union[_operation_pb2.OperationProgress, _Mapping]] = ..., problems: _Optional[_Iterable[_Union[SampleProblem, _Mapping]]] = ...) -> None: ...

class GetDatasetVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetDatasetVersionResponse(_message.Message):
    __slots__ = ("dataset_version",)
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    dataset_version: DatasetVersion
    def __init__(self, dataset_version: _Optional[_Union[DatasetVersion, _Mapping]] = ...) -> None: ...

class ListDatasetVersionsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListDatasetVersionsResponse(_message.Message):
    __slots__ = ("dataset_versions", "next_page_token")
    DATASET_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dataset_versions: _containers.RepeatedCompositeFieldContainer[DatasetVersion]
    next_page_token: str
    def __init__(self, dataset_versions: _Optional[_Iterable[_Union[DatasetVersion, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExportDatasetVersionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class ExportDatasetVersionResponse(_message.Message):
    __slots__ = ("shard_sources", "manifest_source")
    SHARD_SOURCES_FIELD_NUMBER: _ClassVar[int]
    MANIFEST_SOURCE_FIELD_NUMBER: _ClassVar[int]
    shard_sources: _containers.RepeatedCompositeFieldContainer[UploadTarget]
    manifest_source: UploadTarget
    def __init__(self, shard_sources: _Optional[_Iterable[_Union[UploadTarget, _Mapping]]] = ..., manifest_source: _Optional[_Union[UploadTarget, _Mapping]] = ...) -> None: ...

class DownloadDatasetChunkRequest(_message.Message):
    __slots__ = ("dataset_version", "shard")
    DATASET_VERSION_FIELD_NUMBER: _ClassVar[int]
    SHARD_FIELD_NUMBER: _ClassVar[int]
    dataset_version: str
    shard: str
    def __init__(self, dataset_version: _Optional[str] = ..., shard: _Optional[str] = ...) -> None: ...

class DownloadDatasetChunkResponse(_message.Message):
    __slots__ = ("offset", "data", "sha256")
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    offset: int
    data: bytes
    sha256: str
    def __init__(self, offset: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...
