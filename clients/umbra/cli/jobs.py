"""`umbra jobs …`: the protection job from the command line (tenant API key).

    umbra jobs create JOB --dataset faces --version 1 --protect gender --keep skin_tone --watch
                          [--generator faces-gen:1] [--model gender:1 [--verify-unlearning]]
                          [--policy policy.yaml [--review automatic]]
    umbra jobs preview JOB --out round.png     # originals (top) over released images (bottom), risk, ε
    umbra jobs feedback JOB --more             # or --less, --accept, --flag KEY [KEY ...]
    umbra jobs report JOB --out DIR            # report.json, report.html and report.pdf; the verdict
    umbra jobs cancel JOB                      # in any stage, queued too; what it reserved and did not spend is
                                               # released (a finished job: FAILED_PRECONDITION)
    umbra jobs list | show JOB | rounds JOB

Names, labels and messages from the server are printed escaped (`umbra.cli.text.printable`): a control character
in a tenant's label shows as `\\x1b`, it never reaches the terminal.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
import uuid
from pathlib import Path

from google.protobuf import json_format

from umbra.client.channel import open_channel
from umbra.client.errors import OperationFailed, UmbraRpcError
from umbra.client.operations import call
from umbra.cli.text import echo, printable
from umbra.client.jobs import create_protection_job, model_ref, protection_job_spec
from umbra.client.policy import PolicyError
from umbra.client.progress import Progress
from umbra.client.settings import ClientSettings
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.coordinator.v1 import job_service_pb2_grpc

STATES = {v: k.removeprefix("STATE_").lower() for k, v in js.ProtectionJob.State.items()}
WAITING_FOR_YOU = ("awaiting_feedback", "succeeded", "failed", "cancelled")


def _channel():
    settings = ClientSettings.load()
    if not settings.api_key:
        raise SystemExit("umbra jobs: needs a tenant API key in UMBRA_API_KEY (or the config file)")
    return open_channel(settings.endpoint, settings.api_key)


def _stub() -> job_service_pb2_grpc.JobServiceStub:
    return job_service_pb2_grpc.JobServiceStub(_channel())


def watch(stub, job: str, *, poll_seconds: float = 1.0) -> js.ProtectionJob:
    """Shows the job's state and round until it waits for the tenant or ends; returns the job then."""
    progress = Progress("job")
    try:
        while True:
            current = call(stub.GetProtectionJob, js.GetProtectionJobRequest(name=job), timeout=30).job
            state = STATES[current.state]
            rounds = call(stub.ListFeedbackRounds, js.ListFeedbackRoundsRequest(parent=job, page_size=1000),
                          timeout=30).rounds
            progress.show(stage=state, done=len(rounds), unit="rounds")
            if state in WAITING_FOR_YOU and (state != "awaiting_feedback" or _preview_ready(stub, job)):
                return current
            time.sleep(poll_seconds)
    finally:
        progress.close()


def _preview_ready(stub, job: str) -> bool:
    try:
        call(stub.GetPreview, js.GetPreviewRequest(job=job), timeout=30)
        return True
    except UmbraRpcError as exc:
        if exc.reason == "ROUND_NOT_READY":
            return False
        raise


def _grid(pairs) -> bytes:
    """One PNG: originals on the top row, released images below."""
    from PIL import Image

    images = [(Image.open(io.BytesIO(p.original.data)).convert("RGB"),
               Image.open(io.BytesIO(p.anonymized.data)).convert("RGB")) for p in pairs]
    side = max(max(o.size[0], r.size[0]) for o, r in images)
    grid = Image.new("RGB", (side * len(images), side * 2), "white")
    for i, (original, released) in enumerate(images):
        grid.paste(original.resize((side, side)), (i * side, 0))
        grid.paste(released.resize((side, side)), (i * side, side))
    out = io.BytesIO()
    grid.save(out, format="PNG")
    return out.getvalue()


def _criterion_line(c: js.PolicyCriterion) -> str:
    """`met`/`missed` and the server's one-line summary (or one made from the figures when it sent none)."""
    if c.summary:
        text = c.summary
    else:
        about = f"{c.name} {c.attribute}".strip()
        text = f"{about} {c.value:.4g}{f', {c.faces} faces' if c.faces else ''}; limit {c.comparison} {c.limit:.4g}"
    return f"    {'met   ' if c.met else 'missed'}  {text}"


def _print_round(r: js.FeedbackRound) -> None:
    answer = js.Feedback.Name(r.feedback).removeprefix("FEEDBACK_").lower()
    risk = "  ".join(f"{k}={v:.3g}" for k, v in sorted(r.risk.items())) or "risk not measured"
    echo(f"{r.name}  intensity {r.intensity:.4f}  ε={r.privacy_cost.epsilon:.4g}  answer: {answer}  {risk}  "
         f"budget left ε={r.budget_left.epsilon:.4g}")
    if r.flagged_samples:
        echo(f"  flagged: {', '.join(r.flagged_samples)}")
    if r.criteria:
        met = sum(c.met for c in r.criteria)
        echo(f"  policy: {met} of {len(r.criteria)} criteria met")
        for c in r.criteria:
            echo(_criterion_line(c))


def _spec(args) -> js.ProtectionJobSpec:
    """The job's spec from `umbra jobs create`'s arguments; SystemExit naming the option when one is wrong."""
    if args.review == "automatic" and not args.policy:
        raise SystemExit("umbra jobs create: --review automatic needs --policy FILE: the coordinator answers each "
                         "round by the policy's limits, and without one it has none to answer by")
    for option, value in (("--generator", args.generator), ("--model", args.model)):
        try:
            if value:
                model_ref(value)
        except ValueError as exc:
            raise SystemExit(printable(f"umbra jobs create: {option} {exc}")) from None
    try:
        return protection_job_spec(
            dataset=args.dataset, version=args.version, protect=args.protect, keep=args.keep,
            generator=args.generator, model=args.model, verify_unlearning=args.verify_unlearning,
            distortion_copies=args.distortion_copies, preview_size=args.preview_size,
            initial_intensity=args.initial_intensity, epsilon=args.epsilon, delta=args.delta, seed=args.seed,
            policy=args.policy, review=args.review)
    except PolicyError as exc:
        raise SystemExit(printable(f"umbra jobs create: --policy {exc}")) from None
    except ValueError as exc:
        raise SystemExit(printable(f"umbra jobs create: {exc}")) from None


def jobs(args) -> int:
    spec = _spec(args) if args.action == "create" else None  # refused here, before a key or a server is needed
    stub = _stub()
    name = f"jobs/{args.job}" if getattr(args, "job", None) else ""
    try:
        if args.action == "create":
            op = create_protection_job(stub, args.job, spec)
            review = " (rounds answered by the policy)" if args.review == "automatic" else ""
            echo(f"{name} started ({op.name}){review}")
            if args.watch:
                job = watch(stub, name)
                echo(f"{name}: {STATES[job.state]}" + ("; look at it with `umbra jobs preview " + args.job + "`"
                                                       if STATES[job.state] == "awaiting_feedback" else ""))
        elif args.action == "list":
            for job in call(stub.ListProtectionJobs, js.ListProtectionJobsRequest(page_size=1000), timeout=30).jobs:
                echo(f"{job.name:32} {STATES[job.state]:18} accepted intensity {job.accepted_intensity:.4f}")
        elif args.action == "cancel":
            job = call(stub.CancelProtectionJob, js.CancelProtectionJobRequest(name=name), timeout=30).job
            if job.state == js.ProtectionJob.STATE_CANCELLED:
                echo(f"{name}: cancelled before it started (it was queued); it reserved nothing, so nothing "
                     "was released")
            else:
                echo(f"{name}: cancel requested while {STATES[job.state]} ({job.operation}); it stops at its next "
                     f"check and releases what it reserved and did not spend; `umbra jobs show {args.job}` says "
                     "when it has ended")
        elif args.action == "show":
            job = call(stub.GetProtectionJob, js.GetProtectionJobRequest(name=name), timeout=30).job
            print(json_format.MessageToJson(job, indent=2))
        elif args.action == "rounds":
            for r in call(stub.ListFeedbackRounds, js.ListFeedbackRoundsRequest(parent=name, page_size=1000),
                          timeout=30).rounds:
                _print_round(r)
        elif args.action == "preview":
            shown = call(stub.GetPreview, js.GetPreviewRequest(job=name), timeout=60)
            _print_round(shown.round)
            for pair in shown.pairs:
                released = ", ".join(f"{a.attribute}={a.category or a.number}" for a in pair.released_attributes)
                echo(f"  {pair.original.sample_key}: released {released}")
            out = Path(args.out or f"{args.job}-round-{shown.round.name.rsplit('/', 1)[-1]}.png")
            out.write_bytes(_grid(shown.pairs))
            echo(f"originals (top) and released images (bottom): {out}")
        elif args.action == "feedback":
            shown = call(stub.GetPreview, js.GetPreviewRequest(job=name), timeout=60)
            answer = (js.FEEDBACK_ACCEPT if args.accept else js.FEEDBACK_MORE_PRIVACY if args.more
                      else js.FEEDBACK_LESS_PRIVACY if args.less else js.FEEDBACK_UNSPECIFIED)
            done = call(stub.SubmitFeedback, js.SubmitFeedbackRequest(
                round=shown.round.name, feedback=answer, flagged_samples=args.flag or [],
                request_id=str(uuid.uuid4())), timeout=60)
            _print_round(done.round)
            if done.HasField("next_round"):
                echo(f"next: {done.next_round.name} at intensity {done.next_round.intensity:.4f}")
        else:  # report
            report = call(stub.GetReport, js.GetReportRequest(job=name), timeout=120)
            folder = Path(args.out)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "report.json").write_bytes(report.json_content)
            (folder / "report.html").write_bytes(report.html_content)
            written = "report.json"
            if report.pdf_content:
                (folder / "report.pdf").write_bytes(report.pdf_content)
                written += ", report.pdf"
            if report.criteria:
                met = sum(c.met for c in report.criteria)
                echo(f"verdict: the release {'meets' if report.policy_met else 'does not meet'} the policy ({met} "
                     f"of {len(report.criteria)} criteria met)")
                for criterion in report.criteria:
                    echo(f"  {'met   ' if criterion.met else 'MISSED'} {criterion.summary}")
            else:
                echo("verdict: the job set no policy; judge the figures in the report")
            for key, value in sorted(report.metrics.items()):
                echo(f"{key:28} {value:.4g}")
            echo(f"report: {folder / 'report.html'} (and {written})")
    except (UmbraRpcError, OperationFailed) as exc:
        echo(f"umbra jobs {args.action}: {exc}", file=sys.stderr)
        return 1
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    j = sub.add_parser("jobs", help="protection jobs: create, look at previews, answer, get the report (tenant key)")
    j_sub = j.add_subparsers(dest="action", required=True)
    create = j_sub.add_parser("create", help="start a protection job")
    create.add_argument("job", help="job id: 3-63 lower-case letters, digits and '-'")
    create.add_argument("--dataset", required=True, help="dataset id")
    create.add_argument("--version", type=int, required=True, help="dataset version to protect")
    create.add_argument("--protect", nargs="+", required=True, metavar="ATTRIBUTE", help="attributes to change")
    create.add_argument("--keep", nargs="*", default=[], metavar="ATTRIBUTE", help="attributes to keep")
    create.add_argument("--generator", help="the DP generator to use: MODEL:VERSION (default: the tenant's DP "
                                            "generator trained on the dataset, else one the job trains)")
    create.add_argument("--model", help="a classifier trained on the dataset version, to update to the released "
                                        "images by feature unlearning: MODEL:VERSION")
    create.add_argument("--verify-unlearning", action="store_true",
                        help="also retrain the model from scratch and compare (needs --model)")
    create.add_argument("--distortion-copies", type=int, default=0,
                        help="then MDP (1) or AugMDP (2-8 copies) of the anonymized training split, matching the "
                             "features of --model (default 0: none)")
    create.add_argument("--preview-size", type=int, default=0, help="images per preview (default 8, at most 16)")
    create.add_argument("--initial-intensity", type=float, default=0.0, help="first preview's intensity (0.5)")
    create.add_argument("--epsilon", type=float, default=None, help="most ε the job may spend (default: the budget)")
    create.add_argument("--delta", type=float, default=1e-5, help="δ of that limit")
    create.add_argument("--seed", type=int, default=0)
    create.add_argument("--policy", metavar="FILE",
                        help="release policy, YAML or JSON: max_reidentification, max_adversary_advantage "
                             "{ATTRIBUTE: share}, min_kept_utility {ATTRIBUTE: share}, max_epsilon; every round "
                             "is judged against it (shown by `preview` and `rounds`)")
    create.add_argument("--review", choices=["person", "automatic"], default=None,
                        help="who answers the rounds: person (default: you, with `umbra jobs feedback`) or "
                             "automatic (the coordinator, by --policy: more privacy while a risk is over its "
                             "limit, less while a utility is under, accept when all hold; needs --policy)")
    create.add_argument("--watch", action="store_true", help="show the job's progress until it needs you")
    j_sub.add_parser("list", help="list jobs")
    for action, text in (("show", "show a job"), ("rounds", "list a job's feedback rounds"),
                         ("cancel", "cancel a job that has not finished, queued or under way (what it reserved and did "
                                    "not spend is released)"),
                         ("preview", "write the current round's images as a PNG grid and print its figures"),
                         ("report", "write the job's report (JSON, HTML and PDF) and print its verdict")):
        cmd = j_sub.add_parser(action, help=text)
        cmd.add_argument("job")
        if action in ("preview", "report"):
            cmd.add_argument("--out", required=action == "report", help="PNG file (preview) or folder (report)")
    fb = j_sub.add_parser("feedback", help="answer the current round")
    fb.add_argument("job")
    choice = fb.add_mutually_exclusive_group(required=True)
    choice.add_argument("--accept", action="store_true", help="anonymize the dataset at this intensity")
    choice.add_argument("--more", action="store_true", help="more privacy: raise the intensity")
    choice.add_argument("--less", action="store_true", help="less privacy: lower the intensity")
    choice.add_argument("--flag", nargs="+", metavar="KEY", help="images still too recognisable (more privacy)")
    j.set_defaults(func=jobs)
