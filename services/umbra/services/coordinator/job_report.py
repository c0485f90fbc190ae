"""A protection job's report, for the privacy officer who must answer "may we release this?": the verdict of the
job's release policy first, then every figure in words with its 95% interval, the privacy guarantee, the rounds,
the faces, and the model's update. Written three ways into the tenant's bucket: `report.json` for machines
(schema "umbra.report/v2", docs/report.schema.json), `report.html` (one self-contained page, images and charts
embedded) and `report.pdf` (the same page, printed by WeasyPrint).

ε is composed as the ledger composes it (umbra.privacy.composition.tight) for the person who is in every preview
and in the dataset: the worst case. The generator's DP-SGD run is counted once, as the ledger charged it.

    summary = build(store, bucket, job_row, rounds, spec)  # object keys, metrics, total ε, policy_met, criteria
"""

from __future__ import annotations

import dataclasses
import json

from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.privacy import composition
from umbra.privacy.mechanisms import Cost
from umbra.privacy.policy import (ADVANTAGE, EPSILON, MEANINGS, REIDENTIFICATION, UTILITY, Criterion, Figure,
                                  Figures, Policy, judge, percent)
from umbra.services.coordinator import report_page
from umbra.services.coordinator.convert import policy_from_proto
from umbra.services.coordinator.job_privacy import job_epsilon, without_generator
from umbra.storage import keys
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader

SCHEMA = "umbra.report/v2"


def _privacy(job, rounds: list) -> dict:
    """Each round's charged cost, the job's ε after each round, and the composed previews, dataset, generator and
    total (job_privacy: the generator's training counted once)."""
    costs = {r.round: r.preview["cost"] for r in rounds if r.preview.get("cost")}
    parts = job_epsilon(list(costs.values()), job.outputs.get("dataset_cost"))
    charged = {n: without_generator(Cost.from_dict(c))[0] for n, c in costs.items()}
    once = [parts.generator] if parts.generator is not None else []
    so_far = [composition.tight(list(charged.values())[:i + 1] + once).epsilon for i in range(len(charged))]
    return {"rounds": charged, "so_far": so_far, "previews": parts.previews, "dataset": parts.dataset,
            "generator": parts.generator, "total": parts.total}


def _described(name: str, attribute: str, figure: Figure) -> Criterion:
    """A figure as a Criterion without a limit, for its title and its text with the 95% interval."""
    return Criterion(name, attribute, figure.value, float("nan"), figure.faces, figure.bounds())


def _figures(figures: Figures, evaluation: dict) -> list[dict]:
    """Every figure of the release in words: its plain name, what it means, its value and 95% interval."""
    rows = []

    def add(name: str, attribute: str, figure: Figure, detail: str = "") -> None:
        c = _described(name, attribute, figure)
        low, high = c.bounds or (None, None)
        rows.append({"name": name, "attribute": attribute, "title": c.title, "meaning": MEANINGS[name],
                     "value": figure.value, "low": low, "high": high, "faces": figure.faces,
                     "text": c.figure_text(), "detail": detail})

    if (f := figures.reidentification) is not None:
        add(REIDENTIFICATION, "", f, f"{round(f.value * f.faces)} of {f.faces} released test faces were matched to "
                                     "their own original first.")
    for attribute, f in figures.advantage.items():
        add(ADVANTAGE, attribute, f, f"The attacker is right {percent(f.value + f.chance)} of the time (balanced over "
                                     f"the values); a coin toss is right {percent(f.chance)}.")
    for attribute, f in figures.utility.items():
        released = evaluation.get(f"kept_{attribute}_bacc_trained_on_released")
        add(UTILITY, attribute, f, f"A model trained on the released faces is right {percent(released)} of the time, "
                                   f"one trained on the originals {percent(f.base)}." if released is not None else "")
    if figures.epsilon is not None:
        add(EPSILON, "", Figure(figures.epsilon))
    return rows


def _faces(store: ObjectStore, bucket: str, spec: js.ProtectionJobSpec, accepted) -> list[dict]:
    """The accepted round's faces: key, original and released image, and each attribute's true and released
    value (a kept attribute whose released value differs is `changed` and `flagged`)."""
    if accepted is None or not accepted.preview.get("images"):
        return []
    shown = accepted.preview["images"]
    reader = DatasetReader(store, bucket, spec.dataset.dataset.removeprefix("datasets/"), spec.dataset.version)
    originals = {s.key: (s, data) for s, data in reader.iter_images(only={i["key"] for i in shown})}
    kinds = {a: "protected" for a in spec.protected_attributes} | {a: "kept" for a in spec.kept_attributes}
    faces = []
    for image in shown:
        sample, original = originals.get(image["key"], (None, b""))
        true = ({**sample.labels, **sample.attributes} if sample is not None else {})
        released = image.get("released") or {}
        attributes = []
        for name, kind in kinds.items():
            if name not in true and name not in released:
                continue
            changed = name in released and name in true and not _same(true[name], released[name])
            attributes.append({"attribute": name, "kind": kind, "true": true.get(name), "released": released.get(name),
                               "changed": changed, "flagged": changed and kind == "kept"})
        faces.append({"key": image["key"], "original": original, "released_image": store.get(bucket, image["object"]),
                      "attributes": attributes})
    return faces


def _same(a, b) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return abs(float(a) - float(b)) <= 1e-9 * max(1.0, abs(float(a)))
    return str(a) == str(b)


def _rounds(rounds: list, privacy: dict, policy: Policy) -> list[dict]:
    """Each round as the JSON holds it, with its figures judged by the policy's risk and utility limits (ε is
    judged on the release: a round's own ε says nothing of the job's)."""
    limits = dataclasses.replace(policy, max_epsilon=None)
    out = []
    for r in rounds:
        risk = r.preview.get("risk") or {}
        faces = len(r.preview.get("images") or [])
        figures = Figures.of_round(risk, faces, None) if risk else None
        judged = [c.to_dict() for c in judge(limits, figures)] if figures and not policy.empty \
            else []
        charged = privacy["rounds"].get(r.round)
        out.append({"round": r.round, "intensity": r.intensity, "feedback": r.feedback, "flagged": list(r.flagged),
                    "faces": faces, "cost": r.preview.get("cost"),
                    "epsilon_charged": charged.epsilon if charged else None, "risk": risk,
                    "reidentification": (_described(REIDENTIFICATION, "", reid).figure_text()
                                         if figures and (reid := figures.reidentification) else None),
                    "criteria": r.preview.get("criteria") or judged})
    return out


def _metrics(job, privacy: dict, accepted) -> dict[str, float]:
    total, previews = privacy["total"], privacy["previews"]
    metrics = {
        "rounds": 0.0,
        "accepted_intensity": job.outputs.get("accepted_intensity", 0.0),
        "epsilon_total": total.epsilon if total else 0.0,
        "delta_total": total.delta if total else 0.0,
        "epsilon_previews": previews.epsilon if previews else 0.0,
        "preview_epsilon_share": (previews.epsilon / total.epsilon) if previews and total and total.epsilon else 0.0,
    }
    if accepted is not None:
        metrics |= {f"accepted_{k}": v for k, v in accepted.preview.get("risk", {}).items()}
    metrics |= {k: float(v) for k, v in (job.outputs.get("evaluation") or {}).items()}
    distortion, unlearning = job.outputs.get("distortion"), job.outputs.get("unlearning")
    if distortion:
        metrics |= {"distortion_copies": float(distortion["copies"]),
                    "distortion_feature_loss": float(distortion.get("feature_loss", 0.0))}
    if unlearning:
        metrics |= {"unlearning_changed_samples": float(unlearning["changed_samples"]),
                    "unlearning_loss_before": unlearning["loss_before"],
                    "unlearning_loss_after": unlearning["loss_after"]}
        for name, value in (unlearning.get("verification") or {}).items():
            if isinstance(value, (int, float)):
                metrics[f"unlearning_{name}"] = float(value)
    return metrics


def build(store: ObjectStore, bucket: str, job, rounds: list, spec: js.ProtectionJobSpec) -> dict:
    """Writes the report's JSON, HTML and PDF; returns its summary (object keys, headline metrics, composed ε, the
    verdict: `policy_met` and `criteria`). The total composes what the ledger holds for the job's person: every
    preview round, the anonymized dataset, and the generator's training once (when it was trained on this
    dataset). Without a policy, `policy_met` is False and `criteria` empty."""
    privacy = _privacy(job, rounds)
    total = privacy["total"]
    policy = policy_from_proto(spec.policy) if spec.HasField("policy") else Policy()
    evaluation = job.outputs.get("evaluation") or {}
    release = Figures.of_release(evaluation, total.epsilon if total else None)
    criteria = [c.to_dict() for c in judge(policy, release)]
    accepted = next((r for r in rounds if r.feedback == "accept"), None)
    metrics = _metrics(job, privacy, accepted) | {"rounds": float(len(rounds))}
    faces = _faces(store, bucket, spec, accepted)
    report = {
        "schema": SCHEMA,
        "job": f"jobs/{job.id}",
        "finished": job.update_time or None,
        "dataset": {"source": f"{spec.dataset.dataset}/versions/{spec.dataset.version}",
                    "anonymized": f"{spec.dataset.dataset}/versions/{job.outputs.get('anonymized_version', 0)}",
                    "images": job.outputs.get("images", 0), "left_out": job.outputs.get("left_out", 0)},
        "protected_attributes": list(spec.protected_attributes), "kept_attributes": list(spec.kept_attributes),
        "verdict": {"policy": policy.to_dict(), "met": bool(criteria) and all(c["met"] for c in criteria),
                    "criteria": criteria},
        "figures": _figures(release, evaluation),
        "budget": {"epsilon": spec.budget.epsilon, "delta": spec.budget.delta} if spec.HasField("budget") else None,
        "rounds": _rounds(rounds, privacy, policy),
        "faces": [{k: v for k, v in face.items() if k not in ("original", "released_image")} for face in faces],
        "generator": dict(job.outputs.get("generator") or {}, trained_by_job=bool(job.outputs.get("generator_cost")),
                          cost=job.outputs.get("generator_cost")),
        "unlearning": job.outputs.get("unlearning"),
        "distortion": job.outputs.get("distortion"),
        "evaluation_skipped": job.outputs.get("evaluation_skipped") or {},
        "privacy": {name: privacy[name].to_dict() if privacy[name] else None
                    for name in ("previews", "dataset", "generator", "total")},
        "epsilon_so_far": privacy["so_far"],
        "metrics": metrics,
    }
    json_key, html_key = keys.job_object(job.id, "report.json"), keys.job_object(job.id, "report.html")
    pdf_key = keys.job_object(job.id, "report.pdf")
    store.put(bucket, json_key, json.dumps(report, indent=1, sort_keys=True).encode(), content_type="application/json")
    page = report_page.render(report, faces, policy)
    store.put(bucket, html_key, page.encode(), content_type="text/html; charset=utf-8")
    printed = report_page.pdf(page)
    if printed is not None:
        store.put(bucket, pdf_key, printed, content_type="application/pdf")
    return {"json": json_key, "html": html_key, "pdf": pdf_key if printed is not None else "", "metrics": metrics,
            "privacy_total": total.to_dict() if total else None, "policy_met": report["verdict"]["met"],
            "criteria": criteria}
