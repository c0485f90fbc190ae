"""A protection job's report: JSON for machines and one self-contained HTML page (images embedded) for the
privacy officer who must defend the result.

What it holds: the job's spec, every feedback round (its intensity, the answer, its ε and, when measured, its
risk figures), the ε of each round and of the anonymized dataset, and their composition as the ledger composes
them (umbra.privacy.composition.tight) for the person who is in every preview and in the dataset: the worst
case. The accepted round's originals and released images sit side by side.

    summary = build(store, bucket, job_row, rounds, spec)   # writes jobs/<job>/report.json and report.html
"""

from __future__ import annotations

import base64
import html
import json

from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.privacy import composition
from umbra.privacy.mechanisms import Cost
from umbra.storage import keys
from umbra.storage.base import ObjectStore
from umbra.storage.datasets import DatasetReader


def _composed(costs: list[Cost], description: str) -> Cost | None:
    return composition.tight(costs, description) if costs else None


def _without_generator(cost: Cost) -> tuple[Cost, Cost | None]:
    """(what the anonymizer charged for an image, the generator's ε_g) of a per-image cost: the anonymizer's
    per-image cost includes the generator's DP-SGD run when it was trained on this dataset, which the ledger
    charged once, when it was trained."""
    generator = [c for c in cost.components if c.mechanism == "dp_sgd"]
    if not generator:
        return cost, None
    return composition.basic([c for c in cost.components if c.mechanism != "dp_sgd"], cost.description), generator[0]


def build(store: ObjectStore, bucket: str, job, rounds: list, spec: js.ProtectionJobSpec) -> dict:
    """Writes the report's JSON and HTML; returns its summary (object keys, headline metrics, composed ε).
    The total composes what the ledger holds for the job's person: every preview round, the anonymized dataset,
    and the generator's training once (when it was trained on this dataset)."""
    split = [_without_generator(Cost.from_dict(r.preview["cost"])) for r in rounds if r.preview.get("cost")]
    round_costs = [charged for charged, _ in split]
    generators = [g for _, g in split if g is not None]
    dataset_cost = None
    if job.outputs.get("dataset_cost"):
        dataset_cost, generator = _without_generator(Cost.from_dict(job.outputs["dataset_cost"]))
        generators += [generator] if generator is not None else []
    generator_cost = generators[0] if generators else None
    previews = _composed(round_costs, "every preview round")
    total = _composed(round_costs + [c for c in (dataset_cost, generator_cost) if c is not None],
                      "every preview round, the anonymized dataset and the generator's training (a person in all "
                      "of them)")
    accepted = next((r for r in rounds if r.feedback == "accept"), None)
    metrics = {
        "rounds": float(len(rounds)),
        "accepted_intensity": job.outputs.get("accepted_intensity", 0.0),
        "epsilon_total": total.epsilon if total else 0.0,
        "delta_total": total.delta if total else 0.0,
        "epsilon_previews": previews.epsilon if previews else 0.0,
        "preview_epsilon_share": (previews.epsilon / total.epsilon) if previews and total and total.epsilon else 0.0,
    }
    if accepted is not None:
        metrics |= {f"accepted_{k}": v for k, v in accepted.preview.get("risk", {}).items()}
    metrics |= {k: float(v) for k, v in (job.outputs.get("evaluation") or {}).items()}
    distortion = job.outputs.get("distortion")
    if distortion:
        metrics |= {"distortion_copies": float(distortion["copies"]),
                    "distortion_feature_loss": float(distortion.get("feature_loss", 0.0))}
    unlearning = job.outputs.get("unlearning")
    if unlearning:
        metrics |= {"unlearning_changed_samples": float(unlearning["changed_samples"]),
                    "unlearning_loss_before": unlearning["loss_before"],
                    "unlearning_loss_after": unlearning["loss_after"]}
        for name, value in (unlearning.get("verification") or {}).items():
            if isinstance(value, (int, float)):
                metrics[f"unlearning_{name}"] = float(value)
    report = {
        "job": f"jobs/{job.id}",
        "dataset": {"source": f"{spec.dataset.dataset}/versions/{spec.dataset.version}",
                    "anonymized": f"{spec.dataset.dataset}/versions/{job.outputs.get('anonymized_version', 0)}",
                    "images": job.outputs.get("images", 0), "left_out": job.outputs.get("left_out", 0)},
        "protected_attributes": list(spec.protected_attributes), "kept_attributes": list(spec.kept_attributes),
        "rounds": [{"round": r.round, "intensity": r.intensity, "feedback": r.feedback, "flagged": r.flagged,
                    "cost": r.preview.get("cost"), "risk": r.preview.get("risk", {})} for r in rounds],
        "generator": dict(job.outputs.get("generator") or {}, trained_by_job=bool(job.outputs.get("generator_cost")),
                          cost=job.outputs.get("generator_cost")),
        "unlearning": unlearning,
        "distortion": distortion,
        "evaluation_skipped": job.outputs.get("evaluation_skipped") or {},
        "privacy": {"previews": previews.to_dict() if previews else None,
                    "dataset": dataset_cost.to_dict() if dataset_cost else None,
                    "generator": generator_cost.to_dict() if generator_cost else None,
                    "total": total.to_dict() if total else None},
        "metrics": metrics,
    }
    json_key, html_key = keys.job_object(job.id, "report.json"), keys.job_object(job.id, "report.html")
    store.put(bucket, json_key, json.dumps(report, indent=1, sort_keys=True).encode(), content_type="application/json")
    page = _html(report, _pairs(store, bucket, spec, accepted))
    store.put(bucket, html_key, page.encode(), content_type="text/html; charset=utf-8")
    return {"json": json_key, "html": html_key, "metrics": metrics,
            "privacy_total": total.to_dict() if total else None}


def _pairs(store: ObjectStore, bucket: str, spec: js.ProtectionJobSpec, accepted) -> list[tuple[str, bytes, bytes]]:
    """(key, original, released) of the accepted round's images."""
    if accepted is None:
        return []
    wanted = {image["key"]: image["object"] for image in accepted.preview.get("images", [])}
    reader = DatasetReader(store, bucket, spec.dataset.dataset.removeprefix("datasets/"), spec.dataset.version)
    originals = {sample.key: data for sample, data in reader.iter_images(split="test") if sample.key in wanted}
    return [(key, originals.get(key, b""), store.get(bucket, obj)) for key, obj in wanted.items()]


def _img(data: bytes) -> str:
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}" width="96" height="96">'


def _html(report: dict, pairs: list[tuple[str, bytes, bytes]]) -> str:
    e = html.escape
    metrics = "".join(f"<tr><th>{e(k)}</th><td>{v:.4g}</td></tr>" for k, v in report["metrics"].items())
    rounds = "".join(
        f"<tr><td>{r['round']}</td><td>{r['intensity']:.4f}</td><td>{e(r['feedback'] or 'awaiting')}</td>"
        f"<td>{(r['cost'] or {}).get('epsilon', 0):.4g}</td><td>{e(', '.join(r['flagged']))}</td>"
        f"<td>{e(json.dumps(r['risk']))}</td></tr>" for r in report["rounds"])
    privacy = "".join(f"<tr><th>{e(name)}</th><td>{cost['epsilon']:.4g}</td><td>{cost['delta']:.3g}</td>"
                      f"<td>{e(cost.get('description', ''))}</td></tr>"
                      for name, cost in report["privacy"].items() if cost)
    images = "".join(f"<figure>{_img(o)}{_img(r)}<figcaption>{e(k)}</figcaption></figure>" for k, o, r in pairs)
    generator = report["generator"]
    made = ("trained by this job" if generator.get("trained_by_job") else "named by the job or reused (its ε_g "
            "charged when it was trained)")
    about_generator = (f"<p>Generator {e(str(generator.get('model', '')))}/versions/{generator.get('version', '')}: "
                       f"{made}. Each round's ε in the table of rounds is the anonymizer's per-image figure, which "
                       "includes the generator's ε_g when it was trained on this dataset; the privacy table counts "
                       "ε_g once, as the ledger does.</p>")
    unlearning = report.get("unlearning")
    about_model = ""
    if unlearning:
        rows = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in unlearning.items()
                       if k != "verification")
        rows += "".join(f"<tr><th>verification: {e(k)}</th><td>{e(str(v))}</td></tr>"
                        for k, v in (unlearning.get("verification") or {}).items())
        about_model = ("<h2>The model, updated to the released images by feature unlearning</h2>"
                       f"<table>{rows}</table>")
    distortion = report.get("distortion")
    if distortion:
        kind = "AugMDP" if distortion["copies"] > 1 else "MDP"
        dataset = report["dataset"]["source"].split("/versions/")[0]
        about_model += (f"<h2>{kind} of the released training split</h2><p>{e(dataset)}/versions/"
                        f"{distortion['version']}: {distortion['copies']} released image(s) per training image, "
                        f"label {e(distortion['label'])} kept while its mapping to the images is "
                        f"hidden; mean feature-matching loss {distortion.get('feature_loss', 0):.4g}.</p>")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Umbra report: {e(report['job'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:60em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .6em;text-align:left}}figure{{display:inline-block;margin:.4em}}</style>
</head><body>
<h1>Protection report: {e(report['job'])}</h1>
<p>Dataset {e(report['dataset']['source'])} → {e(report['dataset']['anonymized'])}
({report['dataset']['images']} images, {report['dataset']['left_out']} left out). Protected:
{e(', '.join(report['protected_attributes']))}; kept: {e(', '.join(report['kept_attributes']) or 'none')}.</p>
<h2>Headline</h2><table>{metrics}</table>
{about_generator}
<h2>Privacy (ε, δ)</h2><table><tr><th></th><th>ε</th><th>δ</th><th>what</th></tr>{privacy}</table>
<h2>Feedback rounds</h2>
<table><tr><th>round</th><th>intensity</th><th>answer</th><th>ε</th><th>flagged</th><th>risk</th></tr>{rounds}</table>
{about_model}
<h2>Accepted round: originals (left) beside released images (right)</h2>{images}
</body></html>
"""
