import datetime

from google.longrunning import operations_pb2 as _operations_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from umbra.common.v1 import image_pb2 as _image_pb2
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

class Review(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REVIEW_UNSPECIFIED: _ClassVar[Review]
    REVIEW_PERSON: _ClassVar[Review]
    REVIEW_AUTOMATIC: _ClassVar[Review]

class Feedback(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FEEDBACK_UNSPECIFIED: _ClassVar[Feedback]
    FEEDBACK_ACCEPT: _ClassVar[Feedback]
    FEEDBACK_MORE_PRIVACY: _ClassVar[Feedback]
    FEEDBACK_LESS_PRIVACY: _ClassVar[Feedback]
REVIEW_UNSPECIFIED: Review
REVIEW_PERSON: Review
REVIEW_AUTOMATIC: Review
FEEDBACK_UNSPECIFIED: Feedback
FEEDBACK_ACCEPT: Feedback
FEEDBACK_MORE_PRIVACY: Feedback
FEEDBACK_LESS_PRIVACY: Feedback

class ProtectionJob(_message.Message):
    __slots__ = ("name", "state", "spec", "accepted_intensity", "privacy_spent", "anonymized_dataset", "distorted_dataset", "unlearned_model", "operation", "create_time", "update_time")
    class State(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
        __slots__ = ()
        STATE_UNSPECIFIED: _ClassVar[ProtectionJob.State]
        STATE_PENDING: _ClassVar[ProtectionJob.State]
        STATE_PREPARING: _ClassVar[ProtectionJob.State]
        STATE_AWAITING_FEEDBACK: _ClassVar[ProtectionJob.State]
        STATE_RUNNING: _ClassVar[ProtectionJob.State]
        STATE_SUCCEEDED: _ClassVar[ProtectionJob.State]
        STATE_FAILED: _ClassVar[ProtectionJob.State]
        STATE_CANCELLED: _ClassVar[ProtectionJob.State]
    STATE_UNSPECIFIED: ProtectionJob.State
    STATE_PENDING: ProtectionJob.State
    STATE_PREPARING: ProtectionJob.State
    STATE_AWAITING_FEEDBACK: ProtectionJob.State
    STATE_RUNNING: ProtectionJob.State
    STATE_SUCCEEDED: ProtectionJob.State
    STATE_FAILED: ProtectionJob.State
    STATE_CANCELLED: ProtectionJob.State
    NAME_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    ACCEPTED_INTENSITY_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_SPENT_FIELD_NUMBER: _ClassVar[int]
    ANONYMIZED_DATASET_FIELD_NUMBER: _ClassVar[int]
    DISTORTED_DATASET_FIELD_NUMBER: _ClassVar[int]
    UNLEARNED_MODEL_FIELD_NUMBER: _ClassVar[int]
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    UPDATE_TIME_FIELD_NUMBER: _ClassVar[int]
    name: str
    state: ProtectionJob.State
    spec: ProtectionJobSpec
    accepted_intensity: float
    privacy_spent: _privacy_pb2.PrivacyCost
    anonymized_dataset: _refs_pb2.DatasetRef
    distorted_dataset: _refs_pb2.DatasetRef
    unlearned_model: _refs_pb2.ModelRef
    operation: str
    create_time: _timestamp_pb2.Timestamp
    update_time: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., state: _Optional[_Union[ProtectionJob.State, str]] = ..., spec: _Optional[_Union[ProtectionJobSpec, _Mapping]] = ..., accepted_intensity: _Optional[float] = ..., privacy_spent: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ..., anonymized_dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., distorted_dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., unlearned_model: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., operation: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., update_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ProtectionJobSpec(_message.Message):
    __slots__ = ("dataset", "protected_attributes", "kept_attributes", "budget", "initial_intensity", "preview_size", "distortion_copies", "model", "verify_unlearning", "seed", "generator", "policy", "review")
    DATASET_FIELD_NUMBER: _ClassVar[int]
    PROTECTED_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    KEPT_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    INITIAL_INTENSITY_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_SIZE_FIELD_NUMBER: _ClassVar[int]
    DISTORTION_COPIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERIFY_UNLEARNING_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    GENERATOR_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    REVIEW_FIELD_NUMBER: _ClassVar[int]
    dataset: _refs_pb2.DatasetRef
    protected_attributes: _containers.RepeatedScalarFieldContainer[str]
    kept_attributes: _containers.RepeatedScalarFieldContainer[str]
    budget: _privacy_pb2.PrivacyBudget
    initial_intensity: float
    preview_size: int
    distortion_copies: int
    model: _refs_pb2.ModelRef
    verify_unlearning: bool
    seed: int
    generator: _refs_pb2.ModelRef
    policy: ReleasePolicy
    review: Review
    def __init__(self, dataset: _Optional[_Union[_refs_pb2.DatasetRef, _Mapping]] = ..., protected_attributes: _Optional[_Iterable[str]] = ..., kept_attributes: _Optional[_Iterable[str]] = ..., budget: _Optional[_Union[_privacy_pb2.PrivacyBudget, _Mapping]] = ..., initial_intensity: _Optional[float] = ..., preview_size: _Optional[int] = ..., distortion_copies: _Optional[int] = ..., model: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., verify_unlearning: _Optional[bool] = ..., seed: _Optional[int] = ..., generator: _Optional[_Union[_refs_pb2.ModelRef, _Mapping]] = ..., policy: _Optional[_Union[ReleasePolicy, _Mapping]] = ..., review: _Optional[_Union[Review, str]] = ...) -> None: ...

class ReleasePolicy(_message.Message):
    __slots__ = ("max_reidentification", "max_adversary_advantage", "min_kept_utility", "max_epsilon")
    class MaxAdversaryAdvantageEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class MinKeptUtilityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    MAX_REIDENTIFICATION_FIELD_NUMBER: _ClassVar[int]
    MAX_ADVERSARY_ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    MIN_KEPT_UTILITY_FIELD_NUMBER: _ClassVar[int]
    MAX_EPSILON_FIELD_NUMBER: _ClassVar[int]
    max_reidentification: float
    max_adversary_advantage: _containers.ScalarMap[str, float]
    min_kept_utility: _containers.ScalarMap[str, float]
    max_epsilon: float
    def __init__(self, max_reidentification: _Optional[float] = ..., max_adversary_advantage: _Optional[_Mapping[str, float]] = ..., min_kept_utility: _Optional[_Mapping[str, float]] = ..., max_epsilon: _Optional[float] = ...) -> None: ...

class PolicyCriterion(_message.Message):
    __slots__ = ("name", "attribute", "value", "limit", "met", "comparison", "faces", "summary")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ATTRIBUTE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    MET_FIELD_NUMBER: _ClassVar[int]
    COMPARISON_FIELD_NUMBER: _ClassVar[int]
    FACES_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    name: str
    attribute: str
    value: float
    limit: float
    met: bool
    comparison: str
    faces: int
    summary: str
    def __init__(self, name: _Optional[str] = ..., attribute: _Optional[str] = ..., value: _Optional[float] = ..., limit: _Optional[float] = ..., met: _Optional[bool] = ..., comparison: _Optional[str] = ..., faces: _Optional[int] = ..., summary: _Optional[str] = ...) -> None: ...

class ProtectionJobMetadata(_message.Message):
    __slots__ = ("progress", "job", "round")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    JOB_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    progress: _operation_pb2.OperationProgress
    job: str
    round: int
    def __init__(self, progress: _Optional[_Union[_operation_pb2.OperationProgress, _Mapping]] = ..., job: _Optional[str] = ..., round: _Optional[int] = ...) -> None: ...

class PreviewPair(_message.Message):
    __slots__ = ("original", "anonymized", "released_attributes")
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    ANONYMIZED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_ATTRIBUTES_FIELD_NUMBER: _ClassVar[int]
    original: _image_pb2.Image
    anonymized: _image_pb2.Image
    released_attributes: _containers.RepeatedCompositeFieldContainer[_image_pb2.AttributeValue]
    def __init__(self, original: _Optional[_Union[_image_pb2.Image, _Mapping]] = ..., anonymized: _Optional[_Union[_image_pb2.Image, _Mapping]] = ..., released_attributes: _Optional[_Iterable[_Union[_image_pb2.AttributeValue, _Mapping]]] = ...) -> None: ...

class FeedbackRound(_message.Message):
    __slots__ = ("name", "intensity", "privacy_cost", "feedback", "flagged_samples", "budget_left", "create_time", "risk", "criteria")
    class RiskEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    INTENSITY_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_COST_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    BUDGET_LEFT_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    RISK_FIELD_NUMBER: _ClassVar[int]
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    name: str
    intensity: float
    privacy_cost: _privacy_pb2.PrivacyCost
    feedback: Feedback
    flagged_samples: _containers.RepeatedScalarFieldContainer[str]
    budget_left: _privacy_pb2.PrivacyBudget
    create_time: _timestamp_pb2.Timestamp
    risk: _containers.ScalarMap[str, float]
    criteria: _containers.RepeatedCompositeFieldContainer[PolicyCriterion]
    def __init__(self, name: _Optional[str] = ..., intensity: _Optional[float] = ..., privacy_cost: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ..., feedback: _Optional[_Union[Feedback, str]] = ..., flagged_samples: _Optional[_Iterable[str]] = ..., budget_left: _Optional[_Union[_privacy_pb2.PrivacyBudget, _Mapping]] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., risk: _Optional[_Mapping[str, float]] = ..., criteria: _Optional[_Iterable[_Union[PolicyCriterion, _Mapping]]] = ...) -> None: ...

class CreateProtectionJobRequest(_message.Message):
    __slots__ = ("job_id", "spec", "request_id")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: ProtectionJobSpec
    request_id: str
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[ProtectionJobSpec, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class CreateProtectionJobResponse(_message.Message):
    __slots__ = ("operation",)
    OPERATION_FIELD_NUMBER: _ClassVar[int]
    operation: _operations_pb2.Operation
    def __init__(self, operation: _Optional[_Union[_operations_pb2.Operation, _Mapping]] = ...) -> None: ...

class GetProtectionJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class GetProtectionJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: ProtectionJob
    def __init__(self, job: _Optional[_Union[ProtectionJob, _Mapping]] = ...) -> None: ...

class ListProtectionJobsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListProtectionJobsResponse(_message.Message):
    __slots__ = ("jobs", "next_page_token")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[ProtectionJob]
    next_page_token: str
    def __init__(self, jobs: _Optional[_Iterable[_Union[ProtectionJob, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class CancelProtectionJobRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CancelProtectionJobResponse(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: ProtectionJob
    def __init__(self, job: _Optional[_Union[ProtectionJob, _Mapping]] = ...) -> None: ...

class GetPreviewRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: str
    def __init__(self, job: _Optional[str] = ...) -> None: ...

class GetPreviewResponse(_message.Message):
    __slots__ = ("round", "pairs")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PAIRS_FIELD_NUMBER: _ClassVar[int]
    round: FeedbackRound
    pairs: _containers.RepeatedCompositeFieldContainer[PreviewPair]
    def __init__(self, round: _Optional[_Union[FeedbackRound, _Mapping]] = ..., pairs: _Optional[_Iterable[_Union[PreviewPair, _Mapping]]] = ...) -> None: ...

class SubmitFeedbackRequest(_message.Message):
    __slots__ = ("round", "feedback", "flagged_samples", "request_id")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    FEEDBACK_FIELD_NUMBER: _ClassVar[int]
    FLAGGED_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    round: str
    feedback: Feedback
    flagged_samples: _containers.RepeatedScalarFieldContainer[str]
    request_id: str
    def __init__(self, round: _Optional[str] = ..., feedback: _Optional[_Union[Feedback, str]] = ..., flagged_samples: _Optional[_Iterable[str]] = ..., request_id: _Optional[str] = ...) -> None: ...

class SubmitFeedbackResponse(_message.Message):
    __slots__ = ("round", "next_round")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NEXT_ROUND_FIELD_NUMBER: _ClassVar[int]
    round: FeedbackRound
    next_round: FeedbackRound
    def __init__(self, round: _Optional[_Union[FeedbackRound, _Mapping]] = ..., next_round: _Optional[_Union[FeedbackRound, _Mapping]] = ...) -> None: ...

class ListFeedbackRoundsRequest(_message.Message):
    __slots__ = ("parent", "page_size", "page_token")
    PARENT_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    parent: str
    page_size: int
    page_token: str
    def __init__(self, parent: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListFeedbackRoundsResponse(_message.Message):
    __slots__ = ("rounds", "next_page_token")
    ROUNDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    rounds: _containers.RepeatedCompositeFieldContainer[FeedbackRound]
    next_page_token: str
    def __init__(self, rounds: _Optional[_Iterable[_Union[FeedbackRound, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetReportRequest(_message.Message):
    __slots__ = ("job",)
    JOB_FIELD_NUMBER: _ClassVar[int]
    job: str
    def __init__(self, job: _Optional[str] = ...) -> None: ...

class GetReportResponse(_message.Message):
    __slots__ = ("report_json", "report_html", "metrics", "privacy_total", "json_content", "html_content", "report_pdf", "policy_met", "criteria", "pdf_content")
    class MetricsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    REPORT_JSON_FIELD_NUMBER: _ClassVar[int]
    REPORT_HTML_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PRIVACY_TOTAL_FIELD_NUMBER: _ClassVar[int]
    JSON_CONTENT_FIELD_NUMBER: _ClassVar[int]
    HTML_CONTENT_FIELD_NUMBER: _ClassVar[int]
    REPORT_PDF_FIELD_NUMBER: _ClassVar[int]
    POLICY_MET_FIELD_NUMBER: _ClassVar[int]
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    PDF_CONTENT_FIELD_NUMBER: _ClassVar[int]
    report_json: _refs_pb2.ObjectRef
    report_html: _refs_pb2.ObjectRef
    metrics: _containers.ScalarMap[str, float]
    privacy_total: _privacy_pb2.PrivacyCost
    json_content: bytes
    html_content: bytes
    report_pdf: _refs_pb2.ObjectRef
    policy_met: bool
    criteria: _containers.RepeatedCompositeFieldContainer[PolicyCriterion]
    pdf_content: bytes
    def __init__(self, report_json: _Optional[_Union[_refs_pb2.ObjectRef, _Mapping]] = ..., report_html: _Optional[_Union[_refs_pb2.ObjectRef, _Mapping]] = ..., metrics: _Optional[_Mapping[str, float]] = ..., privacy_total: _Optional[_Union[_privacy_pb2.PrivacyCost, _Mapping]] = ..., json_content: _Optional[bytes] = ..., html_content: _Optional[bytes] = ..., report_pdf: _Optional[_Union[_refs_pb2.ObjectRef, _Mapping]] = ..., policy_met: _Optional[bool] = ..., criteria: _Optional[_Iterable[_Union[PolicyCriterion, _Mapping]]] = ..., pdf_content: _Optional[bytes] = ...) -> None: ...
