"""What released images still give away, measured for the coordinator's protection job (issue 26: the coordinator
orchestrates and never computes). AnonymizerService's MeasureRisk and EvaluateRelease check their requests with
`plan_risk` / `plan_evaluation` (InvalidInput naming the field, before any work) and run `measure_risk` /
`evaluate` as long-running operations.

    job = plan_risk(reader, sample_keys=keys, gallery_keys=keys + others, released=[png, ...],
                    protected=["gender"], seed=7)
    measure_risk(job, cache)    # {"reid_rank1": 0.25, "reid_verify_rate": 0.5, "reid_gallery": 103.0,
                                #  "gender_classifier_agreement": 0.75, "gender_classifier_chance": 0.5,
                                #  "skin_tone_kept_agreement": 0.5, "skin_tone_kept_original": 1.0,
                                #  "skin_tone_kept_utility": 0.5}
    job = plan_evaluation(reader, released_reader, sample_keys=keys, protected=["gender"], kept=["age"], seed=7)
    evaluate(job)               # {"metrics": {"reid_rank1": ..., "adversary_gender_bacc": ...}, "skipped": {...}}

A preview's risk: how often a pretrained face recognizer (dlib's ResNet, umbra.anonymization.reidentification)
finds each released face's own original first among a gallery of originals (the preview's own, then other test
faces: rank 1), and how often it calls them the same person (distance < 0.6); and, per protected category
attribute, how often a classifier trained on the original training images still finds its true value, beside
chance (umbra.anonymization.attacks.AttributeJudge); per kept category attribute, how often such a classifier
finds its true value on the released faces and on their originals, and the ratio of the two (the utility the
round keeps, which an automatic review weighs against the job's policy). A release's evaluation: the same
re-identification of its test faces among their originals, an adversary retrained per protected attribute and the
utility kept per kept one (umbra.anonymization.attacks.measure).

`Cache` keeps, per replica, the embedded galleries and the trained judges of recent requests (a small LRU of each,
under a lock), so a job's feedback rounds embed its gallery and train its judges once. A miss only costs time:
another replica, or this one after a restart, recomputes the same figures from the same inputs and seed.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

import numpy as np

from umbra.anonymization import attacks, reidentification
from umbra.dataset.images import decode_rgb
from umbra.runtime import bounds
from umbra.runtime.errors import Cancelled, InvalidInput
from umbra.storage.datasets import DatasetReader

MAX_PREVIEW = 16  # released images per MeasureRisk (the anonymizer's preview limit)
MAX_GALLERY = 1000  # originals a preview is searched among
MAX_EVALUATION_FACES = 1000  # released test faces an evaluation re-identifies
CACHE_SIZE = 8  # galleries, and judge sets, kept per replica

Progress = Callable[[str], None]


class Cache:
    """A small LRU of computed values under a lock; `get(key, compute)` computes outside the lock, so two callers
    that miss together may both compute (the same value)."""

    def __init__(self, size: int = CACHE_SIZE):
        self.size = size
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], object]):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = compute()
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return value


@dataclass
class AuditCache:
    """What MeasureRisk keeps between the rounds of a job: galleries embedded and judges trained."""

    galleries: Cache
    judges: Cache

    @classmethod
    def create(cls, size: int = CACHE_SIZE) -> "AuditCache":
        return cls(Cache(size), Cache(size))


@dataclass(frozen=True)
class RiskJob:
    reader: DatasetReader
    sample_keys: tuple[str, ...]
    gallery_keys: tuple[str, ...]
    released: tuple[np.ndarray, ...]  # decoded, one per sample key
    released_png: tuple[bytes, ...]
    protected: tuple[str, ...]
    seed: int
    kept: tuple[str, ...] = ()


@dataclass(frozen=True)
class EvaluationJob:
    original: DatasetReader
    released: DatasetReader
    sample_keys: tuple[str, ...]  # those the released version holds, in the request's order
    protected: tuple[str, ...]
    kept: tuple[str, ...]
    seed: int


def _keys(values: list[str], field: str, low: int, high: int) -> tuple[str, ...]:
    if not low <= len(values) <= high:
        raise InvalidInput(field, f"names {len(values)} samples: must name {low} to {high}")
    if len(set(values)) != len(values):
        raise InvalidInput(field, "names a sample twice")
    return tuple(values)


def _test_keys(reader: DatasetReader) -> set[str]:
    return {s.key for s in reader.samples() if s.split == "test"}


def _unknown(keys: tuple[str, ...], known: set[str], field: str, reader: DatasetReader) -> None:
    missing = [k for k in keys if k not in known]
    if missing:
        raise InvalidInput(field, f"{missing[0]!r} is not a test sample of datasets/{reader.dataset}/versions/"
                                  f"{reader.version}" + (f" ({len(missing)} are not)" if len(missing) > 1 else ""))


def _attributes(values: list[str], field: str, reader: DatasetReader) -> tuple[str, ...]:
    if len(set(values)) != len(values):
        raise InvalidInput(field, "names an attribute twice")
    columns = set(reader.header.label_columns)
    for value in values:
        if value not in columns:
            raise InvalidInput(field, f"{value!r} is not a label of datasets/{reader.dataset} (it has "
                                      f"{', '.join(sorted(columns)) or 'none'})")
    return tuple(values)


def plan_risk(reader: DatasetReader, *, sample_keys: list[str], gallery_keys: list[str], released: list[bytes],
              protected: list[str], seed: int, released_keys: list[str] | None = None,
              kept: list[str] = ()) -> RiskJob:
    """Checks a MeasureRisk request by field. `released_keys`: the sample key each released image says it shows
    ("" when it does not say), which must be its sample key."""
    samples = _keys(sample_keys, "sample_keys", 1, MAX_PREVIEW)
    gallery = _keys(gallery_keys, "gallery_sample_keys", len(samples), MAX_GALLERY)
    if gallery[:len(samples)] != samples:
        raise InvalidInput("gallery_sample_keys", "must start with sample_keys, in the same order (released image "
                                                  "i's own original is gallery face i)")
    if len(released) != len(samples):
        raise InvalidInput("released_images", f"has {len(released)} images for {len(samples)} sample keys: one per "
                                              "key, in order")
    for i, key in enumerate(released_keys or ()):
        if key and key != samples[i]:
            raise InvalidInput(f"released_images[{i}].sample_key", f"is {key!r}, not sample_keys[{i}] "
                                                                   f"({samples[i]!r})")
    decoded = []
    for i, data in enumerate(released):
        try:
            decoded.append(decode_rgb(data))
        except Exception as exc:  # noqa: BLE001 - any undecodable image is the caller's input error
            raise InvalidInput(f"released_images[{i}].data", f"is not a readable image ({exc})") from None
        if decoded[-1].shape != decoded[0].shape:
            raise InvalidInput(f"released_images[{i}].data", f"is {decoded[-1].shape[1]}x{decoded[-1].shape[0]} "
                                                             f"px, the first {decoded[0].shape[1]}x"
                                                             f"{decoded[0].shape[0]}: all must be one size")
    attributes = _attributes(protected, "protected_attributes", reader)
    kept_attributes = _attributes(list(kept), "kept_attributes", reader)
    if set(attributes) & set(kept_attributes):
        raise InvalidInput("kept_attributes", "overlaps the protected attributes")
    bounds.seed(seed)
    _unknown(gallery, _test_keys(reader), "gallery_sample_keys", reader)
    return RiskJob(reader, samples, gallery, tuple(decoded), tuple(released), attributes, seed, kept_attributes)


def _faces(reader: DatasetReader, keys: tuple[str, ...]) -> dict[str, np.ndarray]:
    wanted = set(keys)
    return {s.key: decode_rgb(data) for s, data in reader.iter_images(split="test", only=wanted)}


def _digest(keys: tuple[str, ...]) -> str:
    return hashlib.sha256("\0".join(keys).encode()).hexdigest()


def measure_risk(job: RiskJob, cache: AuditCache, *, progress: Progress = lambda stage: None,
                 cancelled: Callable[[], bool] = lambda: False) -> dict[str, float]:
    """The preview's figures (see the module's docstring); the keys are those the coordinator's rounds show."""
    reader = job.reader
    where = (reader.bucket, reader.dataset, reader.version)

    def embed_gallery() -> np.ndarray:
        progress(f"embedding a gallery of {len(job.gallery_keys)} original faces")
        faces = _faces(reader, job.gallery_keys)
        return reidentification.recognizer().embed(np.stack([faces[k] for k in job.gallery_keys]))

    gallery = cache.galleries.get((*where, _digest(job.gallery_keys)), embed_gallery)
    _check(cancelled)
    progress(f"re-identifying {len(job.released)} released faces")
    result = reidentification.reidentify(reidentification.recognizer().embed(np.stack(job.released)), gallery)
    risk = {"reid_rank1": result.rank1, "reid_verify_rate": result.verify_rate, "reid_gallery": float(len(gallery))}

    def judges_of(attributes: tuple[str, ...]) -> list[attacks.AttributeJudge]:
        def train() -> list[attacks.AttributeJudge]:
            progress(f"training classifiers of {', '.join(attributes)} on the original images")
            trained = [attacks.AttributeJudge.train(reader, a, seed=job.seed) for a in attributes]
            return [j for j in trained if j is not None]

        return cache.judges.get((*where, attributes, job.seed), train) if attributes else []

    judges = judges_of(job.protected)
    _check(cancelled)
    labels = {s.key: s.labels for s in reader.samples() if s.key in set(job.sample_keys)}
    for judge in judges:
        risk[f"{judge.attribute}_classifier_agreement"] = judge.agreement(
            list(job.released_png), [labels[k].get(judge.attribute, "") for k in job.sample_keys])
        risk[f"{judge.attribute}_classifier_chance"] = judge.chance
    kept_judges = judges_of(job.kept)
    _check(cancelled)
    if kept_judges:
        originals = {s.key: data for s, data in reader.iter_images(split="test", only=set(job.sample_keys))}
        for judge in kept_judges:
            truth = [labels[k].get(judge.attribute, "") for k in job.sample_keys]
            released = judge.agreement(list(job.released_png), truth)
            original = judge.agreement([originals[k] for k in job.sample_keys], truth)
            risk[f"{judge.attribute}_kept_agreement"] = released
            risk[f"{judge.attribute}_kept_original"] = original
            risk[f"{judge.attribute}_kept_utility"] = released / original if original > 0 else 0.0
    return risk


def plan_evaluation(original: DatasetReader, released: DatasetReader, *, sample_keys: list[str],
                    protected: list[str], kept: list[str], seed: int) -> EvaluationJob:
    """Checks an EvaluateRelease request by field; the sample keys kept are those the released version holds."""
    keys = _keys(sample_keys, "sample_keys", 1, MAX_EVALUATION_FACES)
    attributes = _attributes(protected, "protected_attributes", original)
    kept_attributes = _attributes(kept, "kept_attributes", original)
    if set(attributes) & set(kept_attributes):
        raise InvalidInput("kept_attributes", "overlaps the protected attributes")
    bounds.seed(seed)
    _unknown(keys, _test_keys(original), "sample_keys", original)
    in_release = _test_keys(released)
    shared = tuple(k for k in keys if k in in_release)  # a sample the anonymizer left out is absent
    if not shared:
        raise InvalidInput("sample_keys", f"none is a test sample of datasets/{released.dataset}/versions/"
                                          f"{released.version} (the released version)")
    return EvaluationJob(original, released, shared, attributes, kept_attributes, seed)


def evaluate(job: EvaluationJob, *, progress: Progress = lambda stage: None,
             cancelled: Callable[[], bool] = lambda: False) -> dict:
    """The release's figures: {"metrics": {name: value}, "skipped": {attribute: why}}."""
    progress(f"measuring re-identification of {len(job.sample_keys)} released test faces")
    originals, released = _faces(job.original, job.sample_keys), _faces(job.released, job.sample_keys)
    recognizer = reidentification.recognizer()
    result = reidentification.reidentify(recognizer.embed(np.stack([released[k] for k in job.sample_keys])),
                                         recognizer.embed(np.stack([originals[k] for k in job.sample_keys])))
    _check(cancelled)
    attributes = attacks.measure(job.original, job.released, protected=list(job.protected), kept=list(job.kept),
                                 seed=job.seed, progress=progress, cancelled=cancelled)
    _check(cancelled)
    metrics = {"reid_rank1": result.rank1, "reid_verify_rate": result.verify_rate,
               "reid_faces": float(len(job.sample_keys)), **attributes["metrics"]}
    return {"metrics": metrics, "skipped": attributes["skipped"]}


def _check(cancelled: Callable[[], bool]) -> None:
    if cancelled():
        raise Cancelled("cancelled by request")
