"""The review page's calls: the coordinator's own gRPC API over a loopback channel, as the signed-in tenant.

Every call carries the session's API key, so the page may do exactly what that key may do through the API (another
tenant's job is NOT_FOUND there as it is here). Errors come back as the SDK's UmbraRpcError.
"""

from __future__ import annotations

import hashlib
import threading
import time
import uuid
from collections import OrderedDict

from google.longrunning import operations_pb2_grpc
from google.longrunning import operations_proto_pb2 as lro

from umbra.client import protos
from umbra.client.channel import open_channel
from umbra.client.operations import call
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import job_service_pb2_grpc

TIMEOUT = 30.0
ANSWERS = {"accept": js.FEEDBACK_ACCEPT, "more": js.FEEDBACK_MORE_PRIVACY, "less": js.FEEDBACK_LESS_PRIVACY}


def round_number(round_name: str) -> int:
    """3 for "jobs/x/rounds/3"; 0 when there is none."""
    tail = round_name.rpartition("/rounds/")[2]
    return int(tail) if tail.isdigit() else 0


class CoordinatorApi:
    """The JobService and Operations stubs on one channel to `target`; the credential goes with each call."""

    def __init__(self, target: str, store=None):
        self.store = store  # the coordinator's object store: the report's PDF, by the ref GetReport gave
        protos.load_all()  # so that an operation's metadata unpacks (umbra.client.operations.progress_of)
        self.channel = open_channel(target)
        self.jobs = job_service_pb2_grpc.JobServiceStub(self.channel)
        self.operations = operations_pb2_grpc.OperationsStub(self.channel)
        self.previews = PreviewCache()

    def close(self) -> None:
        self.channel.close()

    @staticmethod
    def _auth(key: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {key}"),)

    def check_key(self, key: str) -> None:
        """Raises UmbraRpcError (UNAUTHENTICATED, PERMISSION_DENIED) unless `key` may list the tenant's jobs."""
        call(self.jobs.ListProtectionJobs, js.ListProtectionJobsRequest(page_size=1), timeout=TIMEOUT,
             metadata=self._auth(key))

    def list_jobs(self, key: str, limit: int = 1000) -> list[js.ProtectionJob]:
        jobs, token = [], ""
        while len(jobs) < limit:
            page = call(self.jobs.ListProtectionJobs, js.ListProtectionJobsRequest(page_size=100, page_token=token),
                        timeout=TIMEOUT, metadata=self._auth(key))
            jobs.extend(page.jobs)
            token = page.next_page_token
            if not token:
                break
        return jobs[:limit]

    def job(self, key: str, job: str) -> js.ProtectionJob:
        return call(self.jobs.GetProtectionJob, js.GetProtectionJobRequest(name=f"jobs/{job}"), timeout=TIMEOUT,
                    metadata=self._auth(key)).job

    def operation(self, key: str, name: str) -> lro.Operation:
        return call(self.operations.GetOperation, lro.GetOperationRequest(name=name), timeout=TIMEOUT,
                    metadata=self._auth(key))

    def preview(self, key: str, job: str) -> js.GetPreviewResponse:
        shown = call(self.jobs.GetPreview, js.GetPreviewRequest(job=f"jobs/{job}"), timeout=TIMEOUT,
                     metadata=self._auth(key))
        self.previews.put(key, job, round_number(shown.round.name), shown)
        return shown

    def preview_of_round(self, key: str, job: str, number: int) -> js.GetPreviewResponse | None:
        """Round `number`'s preview while it is the current round (from the cache the job page filled, else asked
        again); None when another round is current."""
        def fetch():
            shown = call(self.jobs.GetPreview, js.GetPreviewRequest(job=f"jobs/{job}"), timeout=TIMEOUT,
                         metadata=self._auth(key))
            return round_number(shown.round.name), shown
        return self.previews.get(key, job, number, fetch)

    def rounds(self, key: str, job: str) -> list[js.FeedbackRound]:
        rounds, token = [], ""
        while True:
            page = call(self.jobs.ListFeedbackRounds, js.ListFeedbackRoundsRequest(
                parent=f"jobs/{job}", page_size=100, page_token=token), timeout=TIMEOUT, metadata=self._auth(key))
            rounds.extend(page.rounds)
            token = page.next_page_token
            if not token:
                return rounds

    def answer(self, key: str, job: str, number: int, answer: str, flagged: list[str]) -> js.SubmitFeedbackResponse:
        return call(self.jobs.SubmitFeedback, js.SubmitFeedbackRequest(
            round=f"jobs/{job}/rounds/{number}", feedback=ANSWERS[answer], flagged_samples=flagged,
            request_id=str(uuid.uuid4())), timeout=TIMEOUT, metadata=self._auth(key))

    def object_bytes(self, ref) -> bytes:
        """An object a call of the tenant's named (GetReport's report_pdf): read from the coordinator's store."""
        return self.store.get(ref.bucket, ref.key, expected_sha256=ref.sha256)

    def report(self, key: str, job: str) -> js.GetReportResponse:
        return call(self.jobs.GetReport, js.GetReportRequest(job=f"jobs/{job}"), timeout=60.0,
                    metadata=self._auth(key))


class PreviewCache:
    """The last previews shown, so that the page's images (two routes per face) do not each ask GetPreview again
    (a tenant has few calls in flight: UMBRA_TENANT_MAX_CALLS). Keyed by a hash of the API key, never the key."""

    def __init__(self, size: int = 64, seconds: float = 600.0):
        self._entries: OrderedDict[tuple, tuple[float, js.GetPreviewResponse]] = OrderedDict()
        self._lock = threading.Lock()
        self._fetching = threading.Lock()
        self.size, self.seconds = size, seconds

    @staticmethod
    def _id(key: str, job: str, number: int) -> tuple:
        return hashlib.sha256(key.encode()).hexdigest(), job, number

    def put(self, key: str, job: str, number: int, shown: js.GetPreviewResponse) -> None:
        with self._lock:
            self._entries[self._id(key, job, number)] = (time.monotonic() + self.seconds, shown)
            self._entries.move_to_end(self._id(key, job, number))
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def _cached(self, key: str, job: str, number: int) -> js.GetPreviewResponse | None:
        with self._lock:
            entry = self._entries.get(self._id(key, job, number))
            return entry[1] if entry is not None and entry[0] > time.monotonic() else None

    def get(self, key: str, job: str, number: int, fetch) -> js.GetPreviewResponse | None:
        shown = self._cached(key, job, number)
        if shown is not None:
            return shown
        with self._fetching:  # the images of one page arrive together: one of them asks, the others wait
            shown = self._cached(key, job, number)
            if shown is not None:
                return shown
            current, shown = fetch()
            self.put(key, job, current, shown)
            return shown if current == number else None
