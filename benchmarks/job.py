"""Benchmark: the protection job (issue 16), whole jobs with simulated reviewers.

    python -m benchmarks.job [--quick] [--replicas-only] [--data DIR] [--faces N] [--local-store]

A simulated reviewer accepts the intensities of an interval [low, low + 0.1] that it keeps to itself, and answers
"more privacy" below it and "less privacy" above it. Two parts:

- `rounds_to_acceptance`: the coordinator's intensity search (umbra.anonymization.feedback.IntensitySearch, the
  code the job runs) answered by 901 reviewers (low = 0, 0.001, ..., 0.9) from each first intensity 0, 0.05,
  ..., 1: the rounds until the reviewer sees an intensity it accepts (median, max, histogram). No service.
- Whole jobs through the real services: the S3 server (or a local folder with --local-store), a coordinator and
  two anonymizer replicas, each its own process. The faces are uploaded through the coordinator, a DP generator
  is trained on their training split by the anonymizer (TrainGenerator; a job must name one), and the tenant
  runs protection jobs (CreateProtectionJob) protecting gender and keeping race (skin_tone on synthetic
  faces). The benchmark is the reviewer: it answers each round's preview (GetPreview, SubmitFeedback) as the
  reviewer would, waits for the job, and reads the report (GetReport). The job's stage, polled from its
  operation's metadata every POLL seconds, times each stage: previews, awaiting feedback (the simulated
  reviewer's answer and the poll), anonymizing the dataset, committing the version, writing the report. Each
  job's intensities must be the ones IntensitySearch shows the same reviewer.

The first reviewer's job runs twice: with the coordinator started with one anonymizer replica
(UMBRA_ANONYMIZER_URLS), then restarted on the same home with both. `shard_speedup_two_replicas` is the ratio of
the two jobs' anonymizing stages (the job deals the output shards to the replicas,
umbra.services.coordinator.sharding), and the two anonymized versions must hold identical images and labels.
`preview_epsilon_share` is the report's: ε of every preview ÷ ε of every preview, the dataset and the generator's
training (once, as the ledger charges it), both composed as the ledger composes (composition.tight); the
benchmark composes them again from the report's rounds to check it. The headline is the largest share of the
jobs.

`coordinator_peak_rss_mb` is the largest VmHWM (/proc/<pid>/status, read before the process is stopped) of the two
coordinator processes that ran these whole jobs (the goal is at most 300 MB).

Then the replicas part (benchmarks.job_replicas, issue 26): two coordinator replicas on PostgreSQL against one on
SQLite, `previews_per_minute_two_pg_vs_one_sqlite` (phases alternating between the two, goal at least 0.9) and
`takeover_seconds` (from a SIGKILL of the replica driving a job to the other holding its lease, at a 6 s lease; goal
at most the lease + 5 s). `--replicas-only` runs that part alone, with its own generator, and carries the takeover's
job to its report, so its `coordinator_peak_rss_mb` is the survivor's peak over that job and the previews before it.

Writes out/bench/job.json (out/bench/job-replicas.json with --replicas-only), out/bench/job.png (rounds to
acceptance by interval; each job's stages; not with --replicas-only) and out/bench/job-replicas.png (previews per
minute by phase, the takeover, peak RSS). `--quick` uses the first 512 faces (two output shards of 256, the fewest
that give each replica a full shard), one DP epoch and a smaller replicas part (job_replicas.SETTINGS); how long it
takes is in docs/benchmarks.md (the job's own evaluation stages dominate it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import secrets
import statistics
import tempfile
import time
import uuid
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

from benchmarks import job_replicas
from benchmarks.anonymizer import run_training
from benchmarks.anonymizer_sharding import _operations, _store
from benchmarks.common import (OUT, create_tenant, default_data, free_port, running_services, s3_server, subset_folder,
                               write_result)
from benchmarks.job_replicas import served
from umbra.anonymization.feedback import LESS, MORE, IntensitySearch
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import job_service_pb2_grpc
from umbra.privacy import composition
from umbra.privacy.mechanisms import Cost
from umbra.storage import keys
from umbra.storage.datasets import DatasetReader

WIDTH = 0.1  # of every reviewer's interval (the issue's)
LOWS = [i / 1000 for i in range(901)]  # interval starts 0, 0.001, ..., 0.9
INITIALS = [i / 20 for i in range(21)]  # first intensities 0, 0.05, ..., 1
SIZE = 32  # the generator's (as in benchmarks.anonymizer); the faces are 64 px
POLL = 0.25  # seconds between reads of a job's operation
SETTINGS = {
    # faces (0: all), DP epochs, batch; the whole jobs' reviewers: (interval start, first intensity, 0: default)
    "quick": {"faces": 512, "dp_epochs": 1, "batch": 64, "reviewers": [(0.78, 0.0)]},
    "full": {"faces": 0, "dp_epochs": 2, "batch": 256, "reviewers": [(0.78, 0.0), (0.05, 0.0), (0.4, 0.9)]},
}
TARGETS = {"rounds_median": 5, "rounds_max": 8, "preview_epsilon_share": 0.5}
TARGET_EPSILON, DELTA = 10.0, 1e-5
STAGES = ("preparing", "previews", "awaiting_feedback", "anonymizing", "committing", "evaluating", "unlearning",
          "report", "other")
AWAITING_STAGE = re.compile(r"round (\d+): awaiting feedback")
ANSWER_PROTO = {"accept": js.FEEDBACK_ACCEPT, MORE: js.FEEDBACK_MORE_PRIVACY, LESS: js.FEEDBACK_LESS_PRIVACY}


@dataclass(frozen=True)
class Reviewer:
    """Accepts the intensities in [low, high], which it keeps to itself."""

    low: float
    high: float

    def answer(self, intensity: float) -> str:
        return MORE if intensity < self.low else LESS if intensity > self.high else "accept"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="512 faces, one DP epoch: a smoke run")
    parser.add_argument("--data", type=Path, help="a folder with images/ and labels.csv (default: the face sample)")
    parser.add_argument("--local-store", action="store_true", help="a local folder instead of the S3 server")
    parser.add_argument("--faces", type=int, help="use the first N faces (default: 512 with --quick, else all)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--replicas-only", action="store_true",
                        help="only the replicas part: previews per minute on 2 PostgreSQL replicas against 1 SQLite "
                             "coordinator, the takeover, peak RSS")
    parser.add_argument("--coordinator-threads", type=int, default=0,
                        help="OMP_NUM_THREADS of the replicas part's coordinators (default: unset, torch's one per "
                             "core; two coordinators on one machine then oversubscribe it)")
    args = parser.parse_args()
    plan = dict(SETTINGS["quick" if args.quick else "full"])
    if args.faces:
        plan["faces"] = args.faces
    if args.replicas_only:
        return replicas_only(args, plan)
    began = time.perf_counter()

    searched = search_rounds()
    print(f"intensity search: median {searched['median']} rounds, max {searched['max']} over "
          f"{searched['reviewers']} reviewers x {len(INITIALS)} first intensities", flush=True)

    with tempfile.TemporaryDirectory(prefix="ujob-", dir="/tmp") as scratch, ExitStack() as stack:
        scratch = Path(scratch)
        folder, what, kept, base = _prepare(args, plan, scratch, stack)
        store = _store(base)
        token = base["UMBRA_SERVICE_TOKEN"]

        # Two anonymizer replicas, each its own home, both charging the coordinator's ledger (started below).
        coordinator_port = free_port()
        coordinator_target = f"127.0.0.1:{coordinator_port}"
        replicas = []
        for index in range(2):
            env = dict(base, UMBRA_HOME=str(scratch / f"replica-{index}"), UMBRA_ANONYMIZER_PORT=str(free_port()),
                       UMBRA_COORDINATOR_URL=coordinator_target)
            replicas.append(stack.enter_context(running_services(env, ["anonymizer"]))["anonymizer"])
        coordinator_env = dict(base, UMBRA_HOME=str(scratch / "coordinator"),
                               UMBRA_COORDINATOR_PORT=str(coordinator_port))

        jobs: list[dict] = []
        versions: dict[str, dict] = {}
        whole_job_rss: list[dict] = []
        for count in (1, 2):  # the coordinator restarted on the same home, with one replica then both
            env = dict(coordinator_env, UMBRA_ANONYMIZER_URLS=",".join(replicas[:count]))
            with served("coordinator", env, coordinator_port) as coordinator:
                if count == 1:
                    # a measurement, not a release: lightly noised previews cost thousands of ε, so no budget binds
                    tenant, key = create_tenant(coordinator_target, base["UMBRA_ADMIN_KEY"], budget=(1e9, 0.5))
                    bucket = keys.bucket(tenant)
                    uploaded = DatasetsClient(open_channel(coordinator_target, key)).upload(
                        folder, "faces", progress=False, drop_invalid=True)
                    splits = dict(uploaded.split_counts)
                    print(f"uploaded {uploaded.sample_count} faces: {splits}", flush=True)
                    generator, train_seconds = train_generator(replicas[0], token, tenant, kept, plan, args.seed)
                    print(f"generator: ε_g = {generator.privacy_cost.epsilon:.3f} in {train_seconds:.0f} s",
                          flush=True)
                channel = open_channel(coordinator_target, key)
                stub, operations = job_service_pb2_grpc.JobServiceStub(channel), OperationsClient(channel)
                runs = [plan["reviewers"][0]] if count == 1 else plan["reviewers"]
                for number, (low, initial) in enumerate(runs):
                    spec = js.ProtectionJobSpec(
                        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1),
                        protected_attributes=["gender"], kept_attributes=[kept], preview_size=8,
                        generator=generator.generator, seed=args.seed, initial_intensity=initial)
                    job_id = f"bench-{count}-replica{'s' if count > 1 else ''}-{number}"
                    since, load = time.perf_counter(), os.getloadavg()[0]
                    job = run_job(stub, operations, job_id, spec, Reviewer(low, round(low + WIDTH, 6)))
                    job |= {"replicas": count, "load_average_before": load, "load_average_after": os.getloadavg()[0],
                            "replica_operations": [_operations(t, token, tenant, since) for t in replicas[:count]]}
                    jobs.append(job)
                    versions[job["job"]] = anonymized_images(store, bucket, job["anonymized_version"])
                    print(json.dumps({k: v for k, v in job.items() if k not in ("timeline", "report_privacy")}),
                          flush=True)
            whole_job_rss.append({"pid": coordinator.pid, "peak_rss_mb": coordinator.peak_rss_mb,
                                  "ran": ("the upload and " if count == 1 else "") + f"{len(runs)} whole job(s)"})
            print(f"coordinator pid {coordinator.pid}: peak RSS {coordinator.peak_rss_mb} MB", flush=True)

        print("replicas part", flush=True)
        replicas_part = job_replicas.run(base, scratch, folder, store, quick=args.quick, carry_on=not args.quick,
                                         generator=(bucket, generator.generator), threads=args.coordinator_threads)

    one, two = jobs[0], jobs[1]
    identical = versions[one["job"]] == versions[two["job"]]
    reference = two  # the first reviewer's job on both replicas: how the service is deployed
    shares = [j["report"]["preview_epsilon_share"] for j in jobs]
    rounds = searched | {"whole_jobs": [j["rounds"] for j in jobs],
                         "whole_jobs_match_search": all(j["matches_intensity_search"] for j in jobs)}
    result = {
        "benchmark": "job", "quick": args.quick, "data": what, "store": "local" if args.local_store else "s3",
        "cpus": os.cpu_count(), "protected": "gender", "kept": kept, "faces": uploaded.sample_count,
        "splits": splits, "preview_size": 8, "reviewer_width": WIDTH,
        "generator": {"epsilon": generator.privacy_cost.epsilon, "delta": generator.privacy_cost.delta,
                      "target_epsilon": TARGET_EPSILON, "image_size": SIZE, "epochs": plan["dp_epochs"],
                      "batch": plan["batch"], "train_seconds": round(train_seconds, 1)},
        "rounds_to_acceptance": rounds,
        "preview_epsilon_share": max(shares),
        "preview_epsilon_share_per_job": shares,
        "stage_seconds": reference["stage_seconds"],
        "shard_speedup_two_replicas": round(one["stage_seconds"]["anonymizing"]
                                            / two["stage_seconds"]["anonymizing"], 3),
        "shard_speedup": {"one_replica_anonymizing_s": one["stage_seconds"]["anonymizing"],
                          "two_replicas_anonymizing_s": two["stage_seconds"]["anonymizing"],
                          "whole_job_ratio": round(one["seconds"] / two["seconds"], 3),
                          "identical_images": identical, "output_shards": -(-uploaded.sample_count // 256)},
        "report": reference["report"] | {"privacy_total": reference["report_privacy"]["total"]},
        "coordinator_peak_rss_mb": max(r["peak_rss_mb"] for r in whole_job_rss),
        "coordinator_rss_whole_jobs": whole_job_rss,
        "takeover_seconds": replicas_part["takeover_seconds"],
        "previews_per_minute_two_pg_vs_one_sqlite": replicas_part["previews_per_minute_two_pg_vs_one_sqlite"],
        "replicas": replicas_part,
        "jobs": jobs,
    }
    result["targets"] = {
        "rounds_median_at_most_5": _target(rounds["median"], TARGETS["rounds_median"]),
        "rounds_max_at_most_8": _target(max(rounds["max"], *rounds["whole_jobs"]), TARGETS["rounds_max"]),
        "preview_epsilon_share_at_most_0.5": _target(result["preview_epsilon_share"],
                                                     TARGETS["preview_epsilon_share"]),
        "shard_outputs_identical": {"value": identical, "met": identical},
        "coordinator_peak_rss_mb_at_most_300": _target(result["coordinator_peak_rss_mb"],
                                                       job_replicas.TARGETS["coordinator_peak_rss_mb"]),
        **replicas_part["targets"],
    }
    result["seconds"] = round(time.perf_counter() - began, 1)
    path = write_result("job", result)
    plot(result, OUT / "job.png")
    job_replicas.plot(replicas_part, OUT / "job-replicas.png", whole_job_rss)
    print(f"rounds to acceptance: median {rounds['median']}, max {rounds['max']}; preview ε share "
          f"{result['preview_epsilon_share']:.3f}; stages {reference['stage_seconds']}; two replicas "
          f"{result['shard_speedup_two_replicas']}x (identical: {identical}); {_replicas_line(result)}; "
          f"{result['seconds']:.0f} s; written to {path}")
    return 0 if identical and rounds["whole_jobs_match_search"] else 1


def _prepare(args, plan: dict, scratch: Path, stack: ExitStack) -> tuple[Path, str, str, dict[str, str]]:
    """The faces (`--data`, or the default, cut to plan["faces"]), what they are, the attribute kept, and the
    services' base environment: fresh credentials and the object store (an S3 server started on `stack`, or
    `--local-store`)."""
    folder, what = default_data(args.data, scratch)
    header = (folder / "labels.csv").read_text().split("\n", 1)[0].split(",")
    kept = "race" if "race" in header else "skin_tone"
    if plan["faces"]:
        folder, what = subset_folder(folder, plan["faces"], scratch), f"{what}, first {plan['faces']}"
    print(f"data: {what}; protecting gender, keeping {kept}", flush=True)
    base = dict(os.environ, UMBRA_SERVICE_TOKEN=secrets.token_urlsafe(24), UMBRA_ADMIN_KEY=secrets.token_urlsafe(24))
    if args.local_store:
        base.update(UMBRA_STORE="local", UMBRA_STORE_DIR=str(scratch / "objects"))
    else:
        base.update(stack.enter_context(s3_server()), UMBRA_STORE="s3")
    return folder, what, kept, base


def replicas_only(args, plan: dict) -> int:
    """--replicas-only: the replicas part alone (benchmarks.job_replicas), with a generator it trains."""
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ujob-", dir="/tmp") as scratch, ExitStack() as stack:
        scratch = Path(scratch)
        folder, what, kept, base = _prepare(args, plan, scratch, stack)
        token = base["UMBRA_SERVICE_TOKEN"]
        part = job_replicas.run(base, scratch, folder, _store(base), quick=args.quick, carry_on=True, generator=None,
                                train=lambda target, tenant: train_generator(target, token, tenant, kept, plan,
                                                                             args.seed),
                                threads=args.coordinator_threads)
    result = {"benchmark": "job-replicas", "quick": args.quick, "data": what,
              "store": "local" if args.local_store else "s3", "cpus": os.cpu_count(),
              "coordinator_peak_rss_mb": part["coordinator_peak_rss_mb"],
              "takeover_seconds": part["takeover_seconds"],
              "previews_per_minute_two_pg_vs_one_sqlite": part["previews_per_minute_two_pg_vs_one_sqlite"],
              "targets": {"coordinator_peak_rss_mb_at_most_300": _target(
                  part["coordinator_peak_rss_mb"], job_replicas.TARGETS["coordinator_peak_rss_mb"]),
                  **part["targets"]},
              "replicas": part, "seconds": round(time.perf_counter() - began, 1)}
    path = write_result("job-replicas", result)
    job_replicas.plot(part, OUT / "job-replicas.png")
    print(f"{_replicas_line(result)}; {result['seconds']:.0f} s; written to {path}")
    return 0


def _replicas_line(result: dict) -> str:
    part = result["replicas"]
    return (f"coordinator peak RSS {result['coordinator_peak_rss_mb']:.0f} MB; takeover "
            f"{result['takeover_seconds']:.1f} s at a {part['lease_seconds']:g} s lease; previews per minute "
            f"{part['previews_per_minute']['two_pg']:.2f} on 2 PostgreSQL replicas / "
            f"{part['previews_per_minute']['one_sqlite']:.2f} on 1 SQLite = "
            f"{result['previews_per_minute_two_pg_vs_one_sqlite']:.2f}x")


# -- the intensity search alone --------------------------------------------------------------------------------

def shown_to(reviewer: Reviewer, initial: float, limit: int = 64) -> list[float] | None:
    """The intensities IntensitySearch shows the reviewer, up to the one it accepts; None when the search runs
    out of intensities first."""
    search = IntensitySearch(initial=initial)
    shown = [search.first()]
    while len(shown) < limit:
        answer = reviewer.answer(shown[-1])
        if answer == "accept":
            return shown
        nxt = search.answer(answer)
        if nxt is None:
            return None
        shown.append(nxt)
    raise AssertionError("the search did not stop")


def _summary(counts: list[int | None]) -> dict:
    found = [c for c in counts if c is not None]
    return {"median": statistics.median(found), "max": max(found), "mean": round(statistics.fmean(found), 3),
            "failures": len(counts) - len(found)}


def search_rounds() -> dict:
    """Rounds to acceptance for every reviewer of LOWS from every first intensity of INITIALS."""
    by_initial: dict[float, list[int | None]] = {}
    for initial in INITIALS:
        by_initial[initial] = [len(s) if (s := shown_to(Reviewer(low, low + WIDTH), initial)) else None
                               for low in LOWS]
    every = [c for counts in by_initial.values() for c in counts]
    default = by_initial[0.5]
    return _summary(every) | {
        "reviewers": len(LOWS), "first_intensities": INITIALS, "width": WIDTH,
        "bound": 2 + math.floor(math.log2(1 / WIDTH)),
        "histogram": {str(k): v for k, v in sorted(Counter(c for c in every if c is not None).items())},
        "default_first_intensity": {"initial": 0.5, **_summary(default)},
        "per_first_intensity": {str(i): _summary(c) for i, c in by_initial.items()},
        "by_interval_start_at_0.5": default,
        "by_interval_start_worst": [max((c for c in column if c is not None), default=None)
                                    for column in zip(*by_initial.values(), strict=True)],
    }


# -- whole jobs through the services ---------------------------------------------------------------------------

def train_generator(target: str, token: str, tenant: str, kept: str, plan: dict,
                    seed: int) -> tuple[an.GeneratorResult, float]:
    """A DP generator on the faces' training split, through the anonymizer (the job must name one)."""
    channel = open_channel(target, token, tenant=tenant)
    began = time.perf_counter()
    result = run_training(anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel), OperationsClient(channel),
                          an.TrainGeneratorRequest(
                              dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1, split="train"),
                              condition_attributes=["gender", kept], model="models/faces-gen", image_size=SIZE,
                              epochs=plan["dp_epochs"], batch_size=plan["batch"], learning_rate=2e-3, seed=seed,
                              privacy=an.GeneratorPrivacy(target_epsilon=TARGET_EPSILON, target_delta=DELTA,
                                                          max_grad_norm=1.0, noise_multiplicity=1)))
    return result, time.perf_counter() - began


def stage_of(stage: str) -> str:
    """The benchmark's name for one of the job's progress stages (umbra.services.coordinator.protection)."""
    if stage.startswith(("preparing", "reusing the generator", "training a DP generator", "training the generator")):
        return "preparing"  # the generator (named by the job here, so nearly nothing)
    if stage.startswith("round ") and "previewing" in stage:
        return "previews"
    if AWAITING_STAGE.fullmatch(stage):
        return "awaiting_feedback"
    if stage.startswith("anonymizing"):
        return "anonymizing"
    if stage.startswith("commit"):
        return "committing"
    if stage.startswith(("measuring", "retraining an adversary", "training")):
        return "evaluating"  # the report's re-identification, adversaries and utility classifiers
    if stage.startswith("updating") or stage.startswith("unlearning"):
        return "unlearning"  # not asked for here
    if stage == "writing the report":
        return "report"
    return "other"  # queued, starting, "done"


def run_job(stub, operations: OperationsClient, job_id: str, spec: js.ProtectionJobSpec,
            reviewer: Reviewer) -> dict:
    """One job from creation to its report, the reviewer answering every round; what it showed, cost and took."""
    began = time.perf_counter()
    op = stub.CreateProtectionJob(js.CreateProtectionJobRequest(job_id=job_id, spec=spec,
                                                                request_id=str(uuid.uuid4())), timeout=60).operation
    name = f"jobs/{job_id}"
    timeline: list[tuple[float, str]] = []  # (seconds since creation, the stage first seen then)
    rounds: list[dict] = []
    while True:
        op = operations.get(op.name)
        metadata = js.ProtectionJobMetadata()
        op.metadata.Unpack(metadata)
        stage, now = metadata.progress.stage, time.perf_counter() - began
        if not timeline or timeline[-1][1] != stage:
            timeline.append((now, stage))
        if op.done:
            break
        waiting = AWAITING_STAGE.fullmatch(stage)
        if waiting and int(waiting[1]) > len(rounds):
            asked = time.perf_counter()
            shown = stub.GetPreview(js.GetPreviewRequest(job=name), timeout=60)
            r, answering = shown.round, time.perf_counter()
            answer = reviewer.answer(r.intensity)
            stub.SubmitFeedback(js.SubmitFeedbackRequest(round=r.name, feedback=ANSWER_PROTO[answer],
                                                         request_id=str(uuid.uuid4())), timeout=60)
            answered = time.perf_counter()
            rounds.append({"round": int(r.name.rsplit("/", 1)[1]), "intensity": r.intensity, "answer": answer,
                           "epsilon": r.privacy_cost.epsilon, "delta": r.privacy_cost.delta,
                           "reid_rank1": r.risk["reid_rank1"], "reid_verify_rate": r.risk["reid_verify_rate"],
                           "reid_gallery": r.risk["reid_gallery"],
                           "get_preview_s": round(answering - asked, 3),
                           "submit_feedback_s": round(answered - answering, 3)})
            continue
        time.sleep(POLL)
    seconds = time.perf_counter() - began
    if op.HasField("error"):
        raise RuntimeError(f"{name} failed: {op.error.message}")
    done = js.ProtectionJob()
    op.response.Unpack(done)
    timeline.append((seconds, "(finished)"))
    stages = dict.fromkeys(STAGES, 0.0)
    previews: dict[int, float] = {}
    for (start, stage), (end, _) in pairwise(timeline):
        stages[stage_of(stage)] += end - start
        if stage_of(stage) == "previews":
            number = int(stage.split(":", 1)[0].removeprefix("round "))
            previews[number] = previews.get(number, 0.0) + end - start
    for r in rounds:
        r["preview_seconds"] = round(previews.get(r["round"], 0.0), 2)

    report = stub.GetReport(js.GetReportRequest(job=name), timeout=60)
    content = json.loads(report.json_content)
    # Composed again as the ledger holds it: each round's per-image cost carries the generator's DP-SGD run (ε_g),
    # which the ledger charged once, when the generator was trained (the report's privacy "generator").
    costs = [Cost.from_dict(r["cost"]) for r in content["rounds"] if r["cost"]]
    charged = [c for c in composition.leaves(costs) if c.mechanism != "dp_sgd"]
    dataset_cost = Cost.from_dict(content["privacy"]["dataset"])
    generator = [Cost.from_dict(content["privacy"]["generator"])] if content["privacy"].get("generator") else []
    previews_eps = composition.tight(charged, "previews").epsilon
    total_eps = composition.tight([*charged, dataset_cost, *generator], "previews, dataset, generator").epsilon
    expected = shown_to(reviewer, spec.initial_intensity or 0.5)  # 0: the service's default first intensity
    return {
        "job": name, "reviewer": [reviewer.low, reviewer.high], "initial_intensity": spec.initial_intensity,
        "rounds": len(rounds), "intensities": [r["intensity"] for r in rounds],
        "matches_intensity_search": expected is not None and [r["intensity"] for r in rounds] == expected,
        "accepted_intensity": done.accepted_intensity, "anonymized_version": done.anonymized_dataset.version,
        "images": content["dataset"]["images"], "left_out": content["dataset"]["left_out"],
        "seconds": round(seconds, 2), "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
        "round_details": rounds,
        "report": dict(report.metrics),
        "recomposed": {"epsilon_previews": previews_eps, "epsilon_total": total_eps,
                       "preview_epsilon_share": previews_eps / total_eps,
                       "agrees_with_report": abs(previews_eps / total_eps
                                                 - report.metrics["preview_epsilon_share"]) < 1e-9,
                       "generator_counted": len(generator)},
        "report_privacy": content["privacy"],
        "timeline": [(round(t, 2), s) for t, s in timeline],
    }


def anonymized_images(store, bucket: str, version: int) -> dict[str, tuple[str, bytes]]:
    """Each sample of the anonymized version: its labels and image bytes."""
    reader = DatasetReader(store, bucket, "faces", version)
    return {sample.key: (json.dumps(sample.labels, sort_keys=True), data) for sample, data in reader.iter_images()}


def _target(value: float, limit: float) -> dict:
    return {"value": value, "target": f"<= {limit}", "met": value <= limit}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    rounds = result["rounds_to_acceptance"]
    left.step(LOWS, rounds["by_interval_start_at_0.5"], where="post", label="first intensity 0.5")
    left.step(LOWS, rounds["by_interval_start_worst"], where="post", alpha=0.6,
              label="worst over first intensities 0 to 1")
    left.axhline(TARGETS["rounds_max"], color="red", linestyle="--", linewidth=1, label="target: never more than 8")
    left.axhline(TARGETS["rounds_median"], color="orange", linestyle=":", linewidth=1, label="target: median ≤ 5")
    left.set(xlabel="start of the reviewer's hidden interval (width 0.1)", ylabel="rounds to acceptance",
             title="The intensity search", ylim=(0, 10))
    left.legend(fontsize=8, loc="upper right", ncol=2)
    names = [f"{j['job'].removeprefix('jobs/bench-')}\n{j['rounds']} rounds" for j in result["jobs"]]
    bottom = [0.0] * len(names)
    for stage in STAGES:
        values = [j["stage_seconds"][stage] for j in result["jobs"]]
        right.barh(names, values, left=bottom, label=stage)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set(xlabel="seconds", title=f"Whole jobs by stage\n(anonymizing on two replicas: "
                                      f"{result['shard_speedup_two_replicas']}x one replica's speed)")
    right.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=5)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
