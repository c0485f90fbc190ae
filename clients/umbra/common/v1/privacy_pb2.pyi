import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PrivacyMechanism(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIVACY_MECHANISM_UNSPECIFIED: _ClassVar[PrivacyMechanism]
    PRIVACY_MECHANISM_DP_SGD: _ClassVar[PrivacyMechanism]
    PRIVACY_MECHANISM_GAUSSIAN: _ClassVar[PrivacyMechanism]
    PRIVACY_MECHANISM_LAPLACE: _ClassVar[PrivacyMechanism]
    PRIVACY_MECHANISM_RANDOMIZED_RESPONSE: _ClassVar[PrivacyMechanism]
    PRIVACY_MECHANISM_COMPOSITION: _ClassVar[PrivacyMechanism]

class PrivacyAccountant(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIVACY_ACCOUNTANT_UNSPECIFIED: _ClassVar[PrivacyAccountant]
    PRIVACY_ACCOUNTANT_PRV: _ClassVar[PrivacyAccountant]
    PRIVACY_ACCOUNTANT_RDP: _ClassVar[PrivacyAccountant]
    PRIVACY_ACCOUNTANT_GDP: _ClassVar[PrivacyAccountant]
    PRIVACY_ACCOUNTANT_ANALYTIC: _ClassVar[PrivacyAccountant]
    PRIVACY_ACCOUNTANT_BASIC_COMPOSITION: _ClassVar[PrivacyAccountant]
    PRIVACY_ACCOUNTANT_TIGHT_COMPOSITION: _ClassVar[PrivacyAccountant]

class PrivacyChargeState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIVACY_CHARGE_STATE_UNSPECIFIED: _ClassVar[PrivacyChargeState]
    PRIVACY_CHARGE_STATE_RESERVED: _ClassVar[PrivacyChargeState]
    PRIVACY_CHARGE_STATE_COMMITTED: _ClassVar[PrivacyChargeState]
    PRIVACY_CHARGE_STATE_RELEASED: _ClassVar[PrivacyChargeState]
PRIVACY_MECHANISM_UNSPECIFIED: PrivacyMechanism
PRIVACY_MECHANISM_DP_SGD: PrivacyMechanism
PRIVACY_MECHANISM_GAUSSIAN: PrivacyMechanism
PRIVACY_MECHANISM_LAPLACE: PrivacyMechanism
PRIVACY_MECHANISM_RANDOMIZED_RESPONSE: PrivacyMechanism
PRIVACY_MECHANISM_COMPOSITION: PrivacyMechanism
PRIVACY_ACCOUNTANT_UNSPECIFIED: PrivacyAccountant
PRIVACY_ACCOUNTANT_PRV: PrivacyAccountant
PRIVACY_ACCOUNTANT_RDP: PrivacyAccountant
PRIVACY_ACCOUNTANT_GDP: PrivacyAccountant
PRIVACY_ACCOUNTANT_ANALYTIC: PrivacyAccountant
PRIVACY_ACCOUNTANT_BASIC_COMPOSITION: PrivacyAccountant
PRIVACY_ACCOUNTANT_TIGHT_COMPOSITION: PrivacyAccountant
PRIVACY_CHARGE_STATE_UNSPECIFIED: PrivacyChargeState
PRIVACY_CHARGE_STATE_RESERVED: PrivacyChargeState
PRIVACY_CHARGE_STATE_COMMITTED: PrivacyChargeState
PRIVACY_CHARGE_STATE_RELEASED: PrivacyChargeState

class PrivacyCost(_message.Message):
    __slots__ = ("mechanism", "accountant", "epsilon", "delta", "description", "parameters", "components")
    class ParametersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MECHANISM_FIELD_NUMBER: _ClassVar[int]
    ACCOUNTANT_FIELD_NUMBER: _ClassVar[int]
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    mechanism: PrivacyMechanism
    accountant: PrivacyAccountant
    epsilon: float
    delta: float
    description: str
    parameters: _containers.ScalarMap[str, float]
    components: _containers.RepeatedCompositeFieldContainer[PrivacyCost]
    def __init__(self, mechanism: _Optional[_Union[PrivacyMechanism, str]] = ..., accountant: _Optional[_Union[PrivacyAccountant, str]] = ..., epsilon: _Optional[float] = ..., delta: _Optional[float] = ..., description: _Optional[str] = ..., parameters: _Optional[_Mapping[str, float]] = ..., components: _Optional[_Iterable[_Union[PrivacyCost, _Mapping]]] = ...) -> None: ...

class PrivacyBudget(_message.Message):
    __slots__ = ("epsilon", "delta")
    EPSILON_FIELD_NUMBER: _ClassVar[int]
    DELTA_FIELD_NUMBER: _ClassVar[int]
    epsilon: float
    delta: float
    def __init__(self, epsilon: _Optional[float] = ..., delta: _Optional[float] = ...) -> None: ...

class PrivacyLedgerEntry(_message.Message):
    __slots__ = ("name", "dataset", "cost", "spent_by", "create_time", "state", "request_id", "update_time")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DATASET_FIELD_NUMBER: _ClassVar[int]
    COST_FIELD_NUMBER: _ClassVar[int]
    SPENT_BY_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    dataset: str
    cost: PrivacyCost
    spent_by: str
    create_time: _timestamp_pb2.Timestamp
    state: PrivacyChargeState
    request_id: str
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., dataset: _Optional[str] = ..., cost: _Optional[_Union[PrivacyCost, _Mapping]] = ..., spent_by: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[_Union[PrivacyChargeState, str]] = ..., request_id: _Optional[str] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
