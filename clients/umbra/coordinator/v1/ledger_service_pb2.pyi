from umbra.common.v1 import privacy_pb2 as _privacy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetPrivacyBalanceRequest(_message.Message):
    __slots__ = ("dataset",)
    DATASET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    def __init__(self, dataset: _Optional[str] = ...) -> None: ...

class GetPrivacyBalanceResponse(_message.Message):
    __slots__ = ("budget", "spent", "remaining", "spent_basic", "reserved_entries", "committed_entries")
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    SPENT_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    SPENT_BASIC_FIELD_NUMBER: _ClassVar[int]
    RESERVED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_ENTRIES_FIELD_NUMBER: _ClassVar[int]
    budget: _privacy_pb2.PrivacyBudget
    spent: _privacy_pb2.PrivacyCost
    remaining: _privacy_pb2.PrivacyBudget
    spent_basic: _privacy_pb2.PrivacyCost
    reserved_entries: int
    committed_entries: int
    def __init__(self, budget: _Optional[_Union[_privacy_pb2.PrivacyBudget, _Mapping]] = ..., spent: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ..., remaining: _Optional[_Union[_privacy_pb2.PrivacyBudget, _Mapping]] = ..., spent_basic: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ..., reserved_entries: _Optional[int] = ..., committed_entries: _Optional[int] = ...) -> None: ...

class ListLedgerEntriesRequest(_message.Message):
    __slots__ = ("dataset", "page_size", "page_token")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    page_size: int
    page_token: str
    def __init__(self, dataset: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListLedgerEntriesResponse(_message.Message):
    __slots__ = ("entries", "next_page_token")
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[_privacy_pb2.PrivacyLedgerEntry]
    next_page_token: str
    def __init__(self, entries: _Optional[_Iterable[_Union[_privacy_pb2.PrivacyLedgerEntry, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReservePrivacyChargeRequest(_message.Message):
    __slots__ = ("dataset", "cost", "request_id", "spent_by", "budget")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    SPENT_BY_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    dataset: str
    cost: _privacy_pb2.PrivacyCost
    request_id: str
    spent_by: str
    budget: _privacy_pb2.PrivacyBudget
    def __init__(self, dataset: _Optional[str] = ..., cost: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ..., request_id: _Optional[str] = ..., spent_by: _Optional[str] = ..., budget: _Optional[_Union[_privacy_pb2.PrivacyBudget, _Mapping]] = ...) -> None: ...

class ReservePrivacyChargeResponse(_message.Message):
    __slots__ = ("entry", "remaining")
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    REMAINING_FIELD_NUMBER: _ClassVar[int]
    entry: _privacy_pb2.PrivacyLedgerEntry
    remaining: _privacy_pb2.PrivacyBudget
    def __init__(self, entry: _Optional[_Union[_privacy_pb2.PrivacyLedgerEntry, _Mapping]] = ..., remaining: _Optional[_Union[_privacy_pb2.PrivacyBudget, _Mapping]] = ...) -> None: ...

class CommitPrivacyChargeRequest(_message.Message):
    __slots__ = ("request_id", "cost")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    cost: _privacy_pb2.PrivacyCost
    def __init__(self, request_id: _Optional[str] = ..., cost: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ...) -> None: ...

class CommitPrivacyChargeResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: _privacy_pb2.PrivacyLedgerEntry
    def __init__(self, entry: _Optional[_Union[_privacy_pb2.PrivacyLedgerEntry, _Mapping]] = ...) -> None: ...

class ReleasePrivacyChargeRequest(_message.Message):
    __slots__ = ("request_id", "reason")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    reason: str
    def __init__(self, request_id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReleasePrivacyChargeResponse(_message.Message):
    __slots__ = ("entry",)
    ENTRY_FIELD_NUMBER: _ClassVar[int]
    entry: _privacy_pb2.PrivacyLedgerEntry
    def __init__(self, entry: _Optional[_Union[_privacy_pb2.PrivacyLedgerEntry, _Mapping]] = ...) -> None: ...
