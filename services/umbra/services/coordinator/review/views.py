"""What the templates show, made from the API's messages: plain dicts and words, no protobuf in a template."""

from __future__ import annotations

from google.longrunning import operations_proto_pb2 as lro

from umbra.client.operations import progress_of
from umbra.common.v1 import privacy_pb2
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.privacy.policy import epsilon_text, percent, share_text
from umbra.services.coordinator.review.api import round_number

State = js.ProtectionJob.State
STATE_WORDS = {
    State.STATE_PENDING: "pending", State.STATE_PREPARING: "preparing",
    State.STATE_AWAITING_FEEDBACK: "awaiting feedback", State.STATE_RUNNING: "running",
    State.STATE_SUCCEEDED: "succeeded", State.STATE_FAILED: "failed", State.STATE_CANCELLED: "cancelled",
}
FINISHED = {State.STATE_SUCCEEDED, State.STATE_FAILED, State.STATE_CANCELLED}
ANSWER_WORDS = {js.FEEDBACK_ACCEPT: "accepted", js.FEEDBACK_MORE_PRIVACY: "more privacy",
                js.FEEDBACK_LESS_PRIVACY: "less privacy", js.FEEDBACK_UNSPECIFIED: "waiting"}


def job_id(job: js.ProtectionJob) -> str:
    return job.name.removeprefix("jobs/")


def epsilon_left(value: float) -> str:
    return epsilon_text(value, up=False)  # what is left of a budget: rounded down, as ε spent is rounded up


def progress(op: lro.Operation | None) -> dict:
    """The job operation's stage and done/total (what the status endpoint returns and the bar shows)."""
    p = progress_of(op) if op is not None else None
    if p is None:
        return {"stage": "", "done": 0, "total": 0, "unit": "", "message": ""}
    return {"stage": p.stage, "done": int(p.done), "total": int(p.total), "unit": p.unit, "message": p.message}


def job_summary(job: js.ProtectionJob, op: lro.Operation | None = None) -> dict:
    spec = job.spec
    return {
        "id": job_id(job), "state": STATE_WORDS.get(job.state, "unknown"), "state_name": State.Name(job.state),
        "finished": job.state in FINISHED, "awaiting_feedback": job.state == State.STATE_AWAITING_FEEDBACK,
        "dataset": f"{spec.dataset.dataset} v{spec.dataset.version}",
        "protected": ", ".join(spec.protected_attributes), "kept": ", ".join(spec.kept_attributes),
        "epsilon_spent": job.privacy_spent.epsilon, "accepted_intensity": job.accepted_intensity,
        "operation": job.operation, "progress": progress(op),
        "error": op.error.message if op is not None and op.HasField("error") else "",
    }


def risk_sentences(risk: dict[str, float], faces: int) -> list[str]:
    """The preview's measured risk in plain words, each share with its 95% interval from the `faces` released
    faces it was measured on (a preview is a few faces: the intervals are wide)."""
    risk = dict(risk)
    lines = []
    if "reid_rank1" in risk:
        gallery = risk.pop("reid_gallery", 0.0)
        among = f" among {gallery:.0f} original faces" if gallery else ""
        lines.append(f"Re-identification rate: a face recognizer picked the right person first{among} for "
                     f"{share_text(risk.pop('reid_rank1'), faces)} of the {faces} released faces.")
    if "reid_verify_rate" in risk:
        lines.append(f"Judged the same person: {share_text(risk.pop('reid_verify_rate'), faces)} of the released "
                     "faces were judged to show the same person as their original when shown side by side (a "
                     "looser test than picking them out of the gallery).")
    for name in sorted(k for k in risk if k.endswith("_classifier_agreement")):
        attribute = name.removesuffix("_classifier_agreement")
        chance = risk.pop(f"{attribute}_classifier_chance", None)
        chance_text = f" (a coin toss: {percent(chance)})" if chance is not None else ""
        lines.append(f"A classifier of {attribute} still finds the true {attribute} on "
                     f"{share_text(risk.pop(name), faces)} of the released faces{chance_text}.")
    for name in sorted(k for k in risk if k.endswith("_kept_utility")):
        attribute = name.removesuffix("_kept_utility")
        released, original = risk.pop(f"{attribute}_kept_agreement", None), risk.pop(f"{attribute}_kept_original",
                                                                                     None)
        detail = (f" ({share_text(released, faces)} recognized on the released faces, {percent(original)} on the "
                  "originals)" if released is not None and original is not None else "")
        lines.append(f"Kept attribute {attribute}: {percent(risk.pop(name))} of its usefulness kept{detail}.")
    lines.extend(f"{name.replace('_', ' ')}: {value:.3g}" for name, value in sorted(risk.items()))
    return lines


def criteria(round_: js.FeedbackRound) -> list[dict]:
    return [{"name": c.name.replace("_", " ") + (f" ({c.attribute})" if c.attribute else ""),
             "summary": c.summary, "met": c.met} for c in round_.criteria]


def attribute_value(value) -> str:
    kind = value.WhichOneof("value")
    return value.category if kind == "category" else f"{value.number:.3g}" if kind == "number" else ""


def epsilon_spent(job: js.ProtectionJob, op: lro.Operation | None, rounds: list[js.FeedbackRound]) -> float:
    """ε the job has spent: its own figure once set, else its operation's running total, else the rounds' costs
    added up (basic composition: at most what the ledger composes)."""
    p = progress_of(op) if op is not None else None
    return (job.privacy_spent.epsilon or (p.privacy_spent.epsilon if p is not None else 0.0)
            or sum(r.privacy_cost.epsilon for r in rounds))


def charged(cost) -> tuple[float, float]:
    """(ε the round's images cost, the generator's ε_g inside it) of a round's per-image cost (a PrivacyCost): the
    anonymizer's per-image cost includes the generator's DP-SGD run when it was trained on this dataset, which the
    job counts once (coordinator.job_privacy, the report). Its parts compose by basic composition: ε adds up."""
    generator = sum(c.epsilon for c in cost.components if c.mechanism == privacy_pb2.PRIVACY_MECHANISM_DP_SGD)
    return max(cost.epsilon - generator, 0.0), generator


def preview(shown: js.GetPreviewResponse, spent: float) -> dict:
    """The current round: each pair, the risk, ε, the policy, the budget bar."""
    round_ = shown.round
    number = round_number(round_.name)
    count = len(shown.pairs)
    left = round_.budget_left.epsilon
    return {
        "number": number, "intensity": round_.intensity, "epsilon": charged(round_.privacy_cost)[0],
        "epsilon_generator": charged(round_.privacy_cost)[1],
        "epsilon_spent": spent, "epsilon_left": left, "epsilon_budget": spent + left,
        "risk": risk_sentences(dict(round_.risk), count), "criteria": criteria(round_),
        "pairs": [{"index": i, "position": i + 1, "count": count, "sample": pair.anonymized.sample_key
                   or pair.original.sample_key,
                   "attributes": [(a.attribute, attribute_value(a)) for a in pair.released_attributes]}
                  for i, pair in enumerate(shown.pairs)],
    }


def rounds_table(rounds: list[js.FeedbackRound]) -> list[dict]:
    return [{"number": round_number(r.name), "intensity": r.intensity, "epsilon": charged(r.privacy_cost)[0],
             "reid": r.risk["reid_rank1"] if "reid_rank1" in r.risk else None,
             "answer": ANSWER_WORDS.get(r.feedback, ""), "flagged": len(r.flagged_samples)} for r in rounds]
