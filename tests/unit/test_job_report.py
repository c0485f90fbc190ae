"""The protection job's report opens with the verdict of the job's release policy and shows every figure in words, in
HTML, PDF and JSON (validated against docs/report.schema.json). It composes ε as the ledger holds it: each round's
per-image cost carries the generator's DP-SGD run (ε_g, when the generator was trained on the dataset), which the
ledger charged once, when it was trained; the report counts it once, not once per round."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import jsonschema

from umbra.anonymization import privatize
from umbra.common.v1 import privacy_pb2, refs_pb2
from umbra.coordinator.v1 import job_service_pb2 as js
from umbra.dataset import manifest as mf
from umbra.dataset import synthetic
from umbra.dataset.shards import ShardWriter
from umbra.privacy import composition
from umbra.privacy.mechanisms import Cost
from umbra.privacy.policy import MEANINGS, NAMES, Figures, Policy, epsilon_text, judge
from umbra.services.coordinator.convert import criterion_to_proto, policy_from_proto
from umbra.services.coordinator.job_records import JobRow, RoundRow
from umbra.services.coordinator.job_privacy import without_generator
from umbra.services.coordinator.job_report import build
from umbra.storage import keys
from umbra.storage.local import LocalObjectStore

DOCS = Path(__file__).resolve().parents[2] / "docs"

GENERATOR = Cost(8.0, 1e-5, "dp_sgd", "generator training",
                 {"noise_multiplier": 0.8, "sample_rate": 0.1, "steps": 50.0, "delta": 1e-5, "epsilon": 8.0,
                  "max_grad_norm": 1.0, "noise_multiplicity": 1.0})
IMAGE = Cost(40.0, 1e-6, "gaussian", "image noised to the timestep", {"mu": 4.0})
ATTRIBUTE = Cost(1.0, 0.0, "randomized_response", "attribute gender", {"k": 2.0})


def test_a_per_image_cost_splits_into_what_was_charged_and_the_generator():
    per_image = privatize.per_image(IMAGE, [ATTRIBUTE], GENERATOR)
    charged, generator = without_generator(per_image)
    assert generator == GENERATOR
    assert charged.epsilon == IMAGE.epsilon + ATTRIBUTE.epsilon and charged.delta == IMAGE.delta
    assert without_generator(privatize.per_image(IMAGE, [ATTRIBUTE], None)) == (
        privatize.per_image(IMAGE, [ATTRIBUTE], None), None)  # a generator trained elsewhere: nothing to split


def test_three_rounds_count_the_generator_once():
    rounds = [privatize.per_image(IMAGE, [ATTRIBUTE], GENERATOR) for _ in range(3)]
    once = composition.tight([without_generator(r)[0] for r in rounds] + [GENERATOR])
    thrice = composition.tight(rounds)
    assert once.epsilon < thrice.epsilon  # counting ε_g three times overstates the spending
    assert once.epsilon > composition.tight([without_generator(r)[0] for r in rounds]).epsilon


# -- the report for a privacy officer: verdict first, figures in words, HTML, PDF and JSON -----------------------

TENANT, JOB, DATASET = "acme", "protect-1", "faces"
BUCKET = keys.bucket(TENANT)
ROUND_COST = Cost(2.5, 1e-6, "gaussian", "image latent noised to the timestep", {"mu": 0.6})
DATASET_COST = Cost(3.0, 1e-6, "gaussian", "each person in the dataset (one image per person)", {"mu": 0.7})
EVALUATION = {"reid_rank1": 0.0, "reid_faces": 60.0, "reid_verify_rate": 0.2,
              "adversary_gender_bacc": 0.52, "adversary_gender_chance": 0.5,
              "kept_skin_tone_utility_ratio": 0.3, "kept_skin_tone_bacc_trained_on_originals": 0.8,
              "kept_skin_tone_bacc_trained_on_released": 0.24}
TRUE = {"a1": {"gender": "f", "skin_tone": "dark"}, "a2": {"gender": "m", "skin_tone": "light"}}
RELEASED = {"a1": {"gender": "m", "skin_tone": "<script>alert(1)</script>"},  # a kept attribute changed
            "a2": {"gender": "m", "skin_tone": "light"}}


def _dataset(store: LocalObjectStore) -> None:
    """Version 1 of DATASET, committed: one shard of two test faces with their attributes."""
    shards: dict[str, bytes] = {}
    writer = ShardWriter(lambda name, data: shards.__setitem__(name, data), max_bytes=1 << 30)
    samples = []
    for i, (key, attributes) in enumerate(TRUE.items()):
        png = next(synthetic.generate(1, size=32, seed=i)).png
        samples.append(writer.add(mf.Sample(key=key, shard="", split="test", sha256=hashlib.sha256(png).hexdigest(),
                                            size=len(png), attributes=attributes), png))
    writer.close()
    for name, data in shards.items():
        store.put(BUCKET, keys.shard(DATASET, 1, name), data)
    header = mf.Header(image_size=32, label_columns=[], attribute_columns=["gender", "skin_tone"],
                       shards=list(shards), samples=len(samples),
                       shard_sha256={n: hashlib.sha256(d).hexdigest() for n, d in shards.items()})
    store.put(BUCKET, keys.manifest(DATASET, 1), mf.dumps(header, samples))


def _round(store: LocalObjectStore, number: int, intensity: float, feedback: str, risk: dict) -> RoundRow:
    images = []
    for i, key in enumerate(TRUE):
        obj = keys.job_object(JOB, f"rounds/{number}/{key}.png")
        store.put(BUCKET, obj, next(synthetic.generate(1, size=32, seed=100 + 10 * number + i)).png)
        images.append({"key": key, "object": obj, "released": RELEASED[key]})
    return RoundRow(TENANT, JOB, number, intensity, "ANSWERED", feedback, ["a2"] if number == 1 else [],
                    {"images": images, "cost": ROUND_COST.to_dict(), "risk": risk})


def _spec(policy: js.ReleasePolicy | None) -> js.ProtectionJobSpec:
    spec = js.ProtectionJobSpec(dataset=refs_pb2.DatasetRef(dataset=f"datasets/{DATASET}", version=1),
                                protected_attributes=["gender"], kept_attributes=["skin_tone"],
                                budget=privacy_pb2.PrivacyBudget(epsilon=30.0, delta=1e-5))
    if policy is not None:
        spec.policy.CopyFrom(policy)
    return spec


POLICY = js.ReleasePolicy(max_reidentification=0.05, max_adversary_advantage={"gender": 0.1},
                          min_kept_utility={"skin_tone": 0.8}, max_epsilon=20.0)


def _report(tmp_path, policy: js.ReleasePolicy | None = POLICY) -> tuple[LocalObjectStore, dict]:
    store = LocalObjectStore(tmp_path)
    store.ensure_bucket(BUCKET)
    _dataset(store)
    rounds = [_round(store, 1, 0.5, "more", {"reid_rank1": 0.5, "reid_gallery": 60.0,
                                             "gender_classifier_agreement": 1.0, "gender_classifier_chance": 0.5,
                                             "skin_tone_kept_utility": 0.9, "skin_tone_kept_original": 1.0}),
              _round(store, 2, 0.75, "accept", {"reid_rank1": 0.0, "reid_gallery": 60.0,
                                                "gender_classifier_agreement": 0.5, "gender_classifier_chance": 0.5,
                                                "skin_tone_kept_utility": 0.5, "skin_tone_kept_original": 1.0})]
    unlearning = {"model": "models/<gender>", "version": 2, "changed_samples": 383, "removed_samples": 0,
                  "method": "second order", "second_order_refused": "", "seconds": 21.5, "loss_before": 0.82,
                  "loss_after": 0.71, "outside_original_privacy_guarantee": True,
                  "verification": {"accuracy_original": 0.68, "accuracy_unlearned": 0.72, "accuracy_retrained": 0.73,
                                   "agreement_with_retrained": 0.72, "retrain_seconds": 10.5, "test_count": 60,
                                   "parameter_distance": 0.29, "probe_attribute": "skin_tone",
                                   "probe_balanced_accuracy": {"original": 0.43}, "retrained": "models/r/versions/1"}}
    job = JobRow(TENANT, JOB, "SUCCEEDED", "done", b"", update_time=1.7e9,
                 outputs={"accepted_intensity": 0.75, "anonymized_version": 2, "images": 2, "left_out": 0,
                          "dataset_cost": DATASET_COST.to_dict(), "evaluation": EVALUATION,
                          "generator": {"model": "models/generator", "version": 1}, "unlearning": unlearning})
    return store, build(store, BUCKET, job, rounds, _spec(policy))


def _page(store: LocalObjectStore, summary: dict) -> str:
    return store.get(BUCKET, summary["html"]).decode()


def test_the_report_opens_with_the_verdict_and_each_criterion_in_words(tmp_path):
    store, summary = _report(tmp_path)
    assert summary["policy_met"] is False
    by_name = {(c["name"], c["attribute"]): c for c in summary["criteria"]}
    assert [c["met"] for c in summary["criteria"]] == [True, True, False, True]
    reid = by_name[("reidentification", "")]
    assert reid["figure"] == "0% (at most 4.9%)" and reid["faces"] == 60 and reid["certain"]
    assert not by_name[("adversary_advantage", "gender")]["certain"]  # 2% over chance, but the interval crosses 10%
    page = _page(store, summary)
    verdict = page.index("Release does not meet the policy: 1 of 4 criteria missed")
    assert verdict < page.index("0% (at most 4.9%)") < page.index("Privacy guarantee")
    assert "uncertain: the 95% interval crosses the limit" in page
    assert MEANINGS["reidentification"] in page and NAMES["kept_utility"] in page
    total = json.loads(store.get(BUCKET, summary["json"]))["privacy"]["total"]["epsilon"]
    assert epsilon_text(total) in page and float(epsilon_text(total)) >= total  # ε rounded up, never down


def test_a_changed_kept_attribute_is_flagged_in_words_and_tenant_text_is_escaped(tmp_path):
    store, summary = _report(tmp_path)
    page = _page(store, summary)
    assert "CHANGED: should have been kept" in page and page.count('class=flag') == 1
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "models/&lt;gender&gt;" in page and "<gender>" not in page
    report = json.loads(store.get(BUCKET, summary["json"]))
    flagged = [(f["key"], a["attribute"]) for f in report["faces"] for a in f["attributes"] if a["flagged"]]
    assert flagged == [("a1", "skin_tone")]  # gender changed too, but it is protected: as intended


def test_the_page_is_self_contained_and_names_no_internal_metric(tmp_path):
    store, summary = _report(tmp_path)
    page = _page(store, summary)
    body = page[page.index("<body>"):]
    metrics = json.loads(store.get(BUCKET, summary["json"]))["metrics"]
    assert not [name for name in metrics if "_" in name and name in body]
    assert "http://" not in page and "https://" not in page and '<html lang="en">' in page
    images = re.findall(r"<img [^>]*>", page)
    assert len(images) == 2 + 2 * 2  # two charts, two faces twice
    assert all(re.search(r'alt="[^"]{10,}"', img) and 'src="data:image/png;base64,' in img for img in images)
    assert "<th scope=" in page and "<th>" not in page
    assert "Retraining took 10 s" in page and "383 training samples changed" in page


def test_the_pdf_is_the_page_printed(tmp_path):
    store, summary = _report(tmp_path)
    assert summary["pdf"] == f"jobs/{JOB}/report.pdf"
    assert store.get(BUCKET, summary["pdf"]).startswith(b"%PDF")


def test_printing_a_pdf_leaves_pillow_strict_about_truncated_images():
    # a fresh process: importing WeasyPrint turns on Pillow's LOAD_TRUNCATED_IMAGES, and the coordinator that
    # writes reports also checks uploaded images (a truncated JPEG must stay corrupt: tests/unit/test_images.py)
    code = ("from PIL import ImageFile\n"
            "from umbra.services.coordinator.report_page import pdf\n"
            "assert pdf('<p>x</p>').startswith(b'%PDF')\n"
            "print(ImageFile.LOAD_TRUNCATED_IMAGES)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def test_the_json_validates_against_its_schema(tmp_path):
    schema = json.loads((DOCS / "report.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    for policy in (POLICY, None):
        store, summary = _report(tmp_path / str(policy is None), policy)
        report = json.loads(store.get(BUCKET, summary["json"]))
        jsonschema.Draft202012Validator(schema).validate(report)
        assert report["schema"] == "umbra.report/v2" and report["verdict"]["criteria"] == summary["criteria"]


def test_without_a_policy_the_reader_judges_the_figures(tmp_path):
    store, summary = _report(tmp_path, None)
    assert summary["policy_met"] is False and summary["criteria"] == []
    page = _page(store, summary)
    assert "No policy was set: judge the figures below" in page and "0% (at most 4.9%)" in page


def test_the_spec_policy_and_a_criterion_convert_to_and_from_proto():
    assert policy_from_proto(js.ReleasePolicy()) == Policy()
    assert policy_from_proto(js.ReleasePolicy(max_reidentification=0.0)).max_reidentification == 0.0  # set to 0
    policy = policy_from_proto(POLICY)
    assert policy.to_dict() == {"max_reidentification": 0.05, "max_adversary_advantage": {"gender": 0.1},
                                "min_kept_utility": {"skin_tone": 0.8}, "max_epsilon": 20.0}
    criteria = judge(policy, Figures.of_release(EVALUATION, 20.001))
    proto = criterion_to_proto(criteria[-1].to_dict())
    assert (proto.name, proto.met, proto.comparison, proto.limit) == ("epsilon", False, "at most", 20.0)
    assert "20.01" in proto.summary  # ε rounded up, never down
    unmeasured = criterion_to_proto(judge(policy, Figures())[0].to_dict())
    assert math.isnan(unmeasured.value) and not unmeasured.met
