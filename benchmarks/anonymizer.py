"""Benchmark: attribute-level anonymization with the DP latent generator, against the previous (pixel) generator,
blurring and pixelation.

    python -m benchmarks.anonymizer [--quick] [--data DIR] [--public DIR]

Starts an S3 server, the coordinator and the anonymizer. The tenant's dataset is the faces of --data (default
the face sample) that the shipped public generator (umbra/anonymization/public/public-faces-64, written by
umbra.anonymization.pretrain) never saw: its card lists the SHA-256 of every real face it was pretrained or
evaluated on, and those are left out. It is uploaded (80/10/10 train/val/test at upload) and the generators
are trained through the anonymizer:

1. ours: the DP latent generator on the tenant's training split, started from the shipped public generator
   (`initialize_from_public`): its autoencoder (latent 64 numbers, projected to norm C = 8) is kept and its
   denoiser trained on with DP-SGD (ε_g target TARGET_EPSILON at δ = DELTA);
2. unless --quick, the previous generator (design "pixel": a UNet on 32 px pixels): public pretraining without
   DP on public faces (--public, else the faces of --data the shipped generator saw, else the last PUBLIC_FACES
   faces of --data), then DP-SGD at the same target on the tenant's training split.

It protects gender and keeps race (skin_tone on synthetic faces, which have no race). At the default intensity
the whole tenant dataset goes through the service's AnonymizeDataset (reserved, written and committed):
`images_per_s` is that end-to-end rate at 64 px, `service_vs_inprocess_ratio` compares it with the same
anonymization in-process on 256 images. The rest runs in-process. Each point of each curve (`curve`: ours at
intensities; `previous_generator_curve`; `blur_curve`, Gaussian σ in px at 64 px; `pixelate_curve`, the side the
64 px face is reduced to) releases the training, test and held-out faces and measures (so does
`autoencoder_ceiling`, a reference and not a release: our autoencoder alone, each face encoded, projected to norm
C and decoded with no noise at all, ε ∞; no release of ours keeps more of a face than it does, so its utility
and quality bound ours from above):

- `fixed_classifier_protected_bacc`: a gender classifier trained on the original training faces, tested on the
  released test faces against their TRUE gender; `adversary_protected_bacc`: one retrained on the released
  training faces with their true gender (an attacker who knows some people's gender), tested the same way;
- `kept_utility_ratio`: a race classifier trained on released training faces, tested on ORIGINAL test faces,
  over one trained on originals;
- `quality`: realism, FD(original test, original train) / FD(released test, original train), FD the Fréchet
  distance of scattering features (kymatio, J=2, averaged over space: 243 numbers per image) at 32 px for every
  method. 1 is as close to real faces as held-out real faces are; blur and pixelation score low;
- `diversity_ratio`: the mean pairwise distance of the released held-out faces in the recognizer's embedding
  space over that of their originals (1: as varied as real faces; near 0: the same face every time); its target
  holds at each of DIVERSITY_AT (`diversity_at`);
- `reid_rank1`, `reid_verify_rate`: dlib's face recognizer (umbra.anonymization.reidentification) on released
  held-out faces (faces no generator trained on: the tenant's val and test splits, or test only when a generator
  trained on val), each searched among their originals: the rank-1 identification rate (chance 1/gallery) and
  how often the released face "verifies" as its original (distance < 0.6);
- `epsilon_total` (δ `delta_total`): one training face's guarantee, composed: `epsilon_x` (the image, noised to
  the timestep), `epsilon_a_gender` (randomized response) and `epsilon_g` (the generator saw the face);
  `epsilon_total_held_out` leaves ε_g out, for faces the generator did not train on (the reid faces). These
  are as the service charges them (the image at δ 1e-6). `epsilon_total_at_target_delta`, the target's figure,
  is the same face's guarantee at δ = TARGET_DELTA in all: the generator is trained at δ_g = DELTA (half of it)
  and the image mechanism, μ-GDP and so valid at every δ, is read at the rest (`epsilon_x_at_target_delta`).

Every classifier is the training service's best recipe (umbra.classifiers.recipes.NONPRIVATE), trained on all of
the tenant's training faces, balanced accuracy throughout; the recipe's ScatterNet takes 32 px, so every image is
reduced to 32 px (area) before classification. `classifiers_on_originals` gives each one's balanced accuracy on
original test faces. Calibration (`reid_calibration`): the re-identification of mirrored originals and of blur
σ = 2 and 5 px (the recognizer's own calibration: about 1.0, 0.8 and 0). Memorisation (`memorisation`), for the
released faces at the default intensity: each face's distance to the generator's training faces (pixel RMS at
32 px in [0, 1], mirror images included), for released training faces, released held-out faces and held-out
originals (how close a new real face is): the nearest one, and relative to the mean of the 50 nearest (Carlini et
al. 2023: a copy scores near 0; a blurred average face, close to every face, near 1). `memorisation_ok` says that
released training faces are no closer to the training set, relatively, than held-out originals are (median and
5th percentile; `no_closer_in_absolute_distance` is the same with the nearest distance), and
`training_faces_no_closer_to_own` that released training faces are not closer to their own originals than
released held-out faces are to theirs (one-sided Mann–Whitney, p ≥ 0.01).

Writes out/bench/anonymizer.json (`targets_at_default`: each target's value and whether it is met),
anonymizer-grid.png (test originals, our autoencoder alone, ours at three intensities at 64 px, the previous
generator at the default), anonymizer.png (adversary and re-identification against utility, all four methods and
the autoencoder alone) and the released test faces
at the default intensity, as PNGs named by their original file names, in out/bench/anonymizer-released/
(replaced whole). `--quick` trains our generator for 10 DP epochs (cheap: the frozen public encoder encodes each
face once), leaves the previous generator out, trains the classifiers for 5 of the recipe's 20 epochs (still on
every training face), measures fewer points and re-identifies REID_QUICK faces; its figures are a smoke test,
not results.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import math
import multiprocessing
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageFilter
from scipy.stats import mannwhitneyu
from torch import nn

from benchmarks.common import (OUT, create_tenant, default_data, running_services, s3_server, service_env,
                               write_result)
from benchmarks.distortion import accuracies
from benchmarks.training import fit
from umbra.anonymization import anonymize as anon
from umbra.anonymization import privatize, public_generator, reidentification
from umbra.anonymization.dataset import sample_rng
from umbra.anonymization.intensity import DEFAULT_INTENSITY
from umbra.anonymization.quality import at, frechet, scattering_features
from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
from umbra.classifiers import recipes
from umbra.classifiers.data import LabelledImages, load_split
from umbra.classifiers.registry import ModelRegistry
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.dataset.ingest import sanitize_key
from umbra.diffusion.generator import build
from umbra.privacy import mechanisms
from umbra.storage.datasets import DatasetReader
from umbra.storage.s3 import S3ObjectStore

SERVICES = ["coordinator", "anonymizer"]
SIZE = 64  # the faces, ours and the baselines
PIXEL_SIZE = 32  # the previous generator's
EVAL_SIZE = 32  # classifiers (the recipe's ScatterNet) and quality, for every method
PUBLIC_FACES = 600  # the last faces of --data, when no --public is given
REID_QUICK = 120
TARGET_EPSILON, DELTA = 4.0, 5e-7  # each DP generator's ε_g target: half of TARGET_DELTA, the image the rest
SETTINGS = {
    "full": {"dp_epochs": 100, "batch": 256, "multiplicity": 4,  # ours
             "previous": True, "pixel_public_epochs": 12, "pixel_dp_epochs": 4, "pixel_batch": 256,
             "pixel_split": "train",
             "pixel_train_faces": 0, "pixel_steps": 0,  # the previous generator: 0 = all, the table's steps
             "curve": (0.0, 0.25, 0.5, 0.75, 1.0), "pixel_curve": (0.5, 0.75, 1.0),
             "blurs": (1.0, 2.0, 3.0, 5.0, 8.0), "pixelations": (32, 16, 12, 8, 6),
             "reid_faces": 0, "classifier_epochs": 1.0},  # 0: every held-out face; the recipe's epochs times this
    "quick": {"dp_epochs": 10, "batch": 256, "multiplicity": 2,
              "previous": False, "pixel_public_epochs": 1, "pixel_dp_epochs": 1, "pixel_batch": 64,
              "pixel_split": "val",
              "pixel_train_faces": 192, "pixel_steps": 2,
              "curve": (0.25, 0.75, 1.0), "pixel_curve": (0.75,), "blurs": (2.0, 5.0), "pixelations": (16, 8),
              "reid_faces": REID_QUICK, "classifier_epochs": 0.25},
}
GRID_INTENSITIES = (0.25, DEFAULT_INTENSITY, 1.0)
TARGETS = {  # name: (figure at the default intensity, "at_most" or "at_least", bound)
    "reid_rank1": ("reid_rank1", "at_most", 0.05),
    "adversary_protected_bacc": ("adversary_protected_bacc", "at_most", 0.60),
    "kept_utility_ratio": ("kept_utility_ratio", "at_least", 0.80),
    "epsilon_total": ("epsilon_total_at_target_delta", "at_most", 10.0),
    "quality": ("quality", "at_least", 0.5),
    "images_per_s": ("images_per_s", "at_least", 10.0),
    "diversity_ratio": ("diversity_ratio_lowest", "at_least", 0.8),
}
DIVERSITY_AT = (DEFAULT_INTENSITY, 1.0)  # the diversity target holds at each of these intensities
PUBLIC = "public-faces-64"  # the shipped public generator ours starts from
TARGET_DELTA = 1e-6  # epsilon_total's target holds at δ ≤ this
NEIGHBOURS, COPY_RATIO = 50, 1 / 3  # memorisation: Carlini et al. 2023's relative distance and its threshold
WORKERS = 2  # processes for the classifiers and dlib (single-threaded): one per core


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="short DP training, fewer points, no previous generator (about 10 min on 2 cores; "
                             "the full run about 2 h)")
    parser.add_argument("--data", type=Path, help="a folder with images/ and labels.csv (default: the face sample)")
    parser.add_argument("--public", type=Path, help="public faces for the previous generator's pretraining, same "
                                                    "layout (default: the faces of --data the shipped public "
                                                    f"generator saw, else its last {PUBLIC_FACES})")
    parser.add_argument("--without-previous", action="store_true",
                        help="leave the previous (pixel) generator out of a full run too (it takes about 80 of the "
                             "full run's minutes; issue 17's figures for it are in docs/benchmarks.md)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    began = time.perf_counter()
    plan = SETTINGS["quick" if args.quick else "full"]
    if args.without_previous:
        plan = plan | {"previous": False}
    recipe = recipes.NONPRIVATE.scaled(plan["classifier_epochs"])
    torch.manual_seed(args.seed)
    stages: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="ua-", dir="/tmp") as scratch, s3_server() as s3:
        scratch = Path(scratch)
        folder, what = default_data(args.data, scratch)
        header = (folder / "labels.csv").read_text().split("\n", 1)[0].split(",")
        kept = "race" if "race" in header else "skin_tone"
        shipped = public_generator.read_card(PUBLIC)
        tenant_folder, public_folder, public_what = partition(folder, args.public, scratch,
                                                              public_generator.public_faces(PUBLIC))
        public_header = (public_folder / "labels.csv").read_text().split("\n", 1)[0].split(",")
        public_attributes = ["gender"] + ([kept] if kept in public_header else [])
        names = {sanitize_key(line.split(",", 1)[0]): line.split(",", 1)[0]
                 for line in (tenant_folder / "labels.csv").read_text().splitlines()[1:]}
        print(f"data: {what}; public: {public_what}; protecting gender, keeping {kept}", flush=True)
        env = service_env(scratch / "home", s3, SERVICES)
        with running_services(env, SERVICES) as t:
            # a measurement, not a release: lightly noised pixels cost thousands of ε each, so no budget binds here
            tenant, key = create_tenant(t["coordinator"], env["UMBRA_ADMIN_KEY"], budget=(1e9, 0.5))
            bucket = f"umbra-{tenant}"
            coordinator = open_channel(t["coordinator"], key)
            uploads = DatasetsClient(coordinator)
            uploads.upload(tenant_folder, "faces", progress=False, drop_invalid=True)
            if plan["previous"]:
                uploads.upload(public_folder, "public", progress=False, drop_invalid=True)
            store = S3ObjectStore(env["UMBRA_S3_ENDPOINT"], env["UMBRA_S3_ACCESS_KEY"], env["UMBRA_S3_SECRET_KEY"])
            reader = DatasetReader(store, bucket, "faces", 1)
            public_train = sum(1 for s in DatasetReader(store, bucket, "public", 1).samples()
                               if s.split == "train") if plan["previous"] else 0
            channel = open_channel(t["anonymizer"], env["UMBRA_SERVICE_TOKEN"], tenant=tenant)
            stub, operations = anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel), OperationsClient(channel)
            stages["setup"] = time.perf_counter() - began

            trained = train_generators(stub, operations, plan, public_attributes, kept, args.seed, stages)
            registry = ModelRegistry(store)
            gen, net = load_generator(registry, bucket, "faces-gen", trained["ours"])
            pixel_gen, pixel_net = (load_generator(registry, bucket, "faces-pixel", trained["previous"])
                                    if plan["previous"] else (None, None))

            # The default intensity through the service, end to end.
            service_began = time.perf_counter()
            default_version = anonymize_through_service(coordinator, stub, operations, trained["ours"].generator,
                                                        kept, args.seed)
            service_seconds = stages["anonymize_dataset"] = time.perf_counter() - service_began
            anonymized_default = DatasetReader(store, bucket, "faces", default_version)
            service_images = anonymized_default.header.samples
            served = {s.key: torch.from_numpy(_decode(data)) for s, data in anonymized_default.iter_images()}

            gender = {s: load_split(reader, task="gender", split=s, image_size=SIZE) for s in ("train", "test")}
            kept_sets = {s: load_split(reader, task=kept, split=s, image_size=SIZE) for s in ("train", "test")}
            samples = list(reader.samples())
            labels = {s.key: s.labels for s in samples}
            originals = {s.key: torch.from_numpy(_decode(data)) for s, data in reader.iter_images()}

    # In-process from here: the curves, re-identification and memorisation.
    measure_began = time.perf_counter()
    trained_splits = {"train"} | ({plan["pixel_split"]} if plan["previous"] else set())
    held_out = [s.key for s in sorted(samples, key=lambda s: (s.split, s.key)) if s.split not in trained_splits]
    reid_keys = held_out[:plan["reid_faces"] or len(held_out)]
    train_keys, test_keys = gender["train"].keys, gender["test"].keys
    pixel_train_keys = train_keys[:plan["pixel_train_faces"] or len(train_keys)]

    def anonymize_keys(generator: anon.Generator, network: nn.Module, intensity: float, keys: list[str],
                       steps: int = 0) -> dict[str, torch.Tensor]:
        request = check(generator, kept, intensity, args.seed, steps)
        out = {}
        for start in range(0, len(keys), 64):
            batch = keys[start:start + 64]
            images, _ = anon.anonymize(network, request, stack(originals, batch), [labels[k] for k in batch],
                                       [sample_rng(args.seed, k) for k in batch],
                                       torch.Generator().manual_seed(args.seed * 1_000_003 + start))
            out |= dict(zip(batch, images, strict=True))
        return out

    t0 = time.perf_counter()
    anonymize_keys(gen, net, DEFAULT_INTENSITY, train_keys[:256])
    inprocess_rate = min(256, len(train_keys)) / (time.perf_counter() - t0)

    # From here the two worker processes and this one share the cores: one torch thread each (two-thread teams on
    # a busy machine spend their time waiting for each other).
    torch.set_num_threads(1)
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(WORKERS, mp_context=spawn, initializer=_single_thread) as pool:
        t0 = time.perf_counter()
        reference = Classifiers(pool, recipe, gender, kept_sets, args.seed)
        stages["reference_classifiers"] = time.perf_counter() - t0
        reid = Reidentification(pool, stack(originals, reid_keys))
        reid.submit("mirrored", stack(originals, reid_keys).flip(-1))
        curves: dict[str, list[dict]] = {"curve": [], "previous_generator_curve": [], "blur_curve": [],
                                         "pixelate_curve": [], "autoencoder_ceiling": []}
        pending: list[tuple[dict, Callable[[], dict]]] = []
        grid_rows: dict[str, torch.Tensor] = {}
        everyone = sorted(set(train_keys) | set(test_keys) | set(reid_keys))

        def measure(curve: str, released: dict[str, torch.Tensor], keys: list[str], extra: dict) -> None:
            reid.submit((curve, len(curves[curve])), stack(released, reid_keys))
            curves[curve].append(extra)
            pending.append((extra, reference.measure(released, keys)))
            print(f"{curve}: {json.dumps(extra)} released, measuring", flush=True)

        t0 = time.perf_counter()
        released = reconstruct(net, originals, everyone)
        grid_rows["our autoencoder alone (no noise)"] = stack(released, test_keys[:8])
        measure("autoencoder_ceiling", released, train_keys, {"noise": 0})
        for intensity in plan["curve"]:
            released = served if intensity == DEFAULT_INTENSITY else anonymize_keys(gen, net, intensity, everyone)
            if intensity in GRID_INTENSITIES:
                grid_rows[f"ours, intensity {intensity:g}"] = stack(released, test_keys[:8])
            measure("curve", released, train_keys, {"intensity": intensity} | epsilons(check(gen, kept, intensity,
                                                                                            args.seed)))
        for intensity in plan["pixel_curve"] if plan["previous"] else ():
            keys = sorted(set(pixel_train_keys) | set(test_keys) | set(reid_keys))
            released = anonymize_keys(pixel_gen, pixel_net, intensity, keys, plan["pixel_steps"])
            if intensity == DEFAULT_INTENSITY:
                grid_rows[f"previous, {intensity:g}"] = F.interpolate(stack(released, test_keys[:8]).float(),
                                                                          size=SIZE).to(torch.uint8)
            request = check(pixel_gen, kept, intensity, args.seed, plan["pixel_steps"])
            measure("previous_generator_curve", released, pixel_train_keys,
                    {"intensity": intensity, "steps": request.plan.steps} | epsilons(request))
        for sigma in plan["blurs"]:
            released = transform(originals, everyone, lambda im, r=sigma: im.filter(ImageFilter.GaussianBlur(r)))
            measure("blur_curve", released, train_keys, {"sigma": sigma})
        for side in plan["pixelations"]:
            released = transform(originals, everyone, lambda im, n=side: im.resize((n, n), Image.BOX).resize(
                (SIZE, SIZE), Image.NEAREST))
            measure("pixelate_curve", released, train_keys, {"side": side})
        stages["releases"], t0 = time.perf_counter() - t0, time.perf_counter()
        for point, finish in pending:
            point |= finish()
            print(f"{json.dumps(point)}", flush=True)
        reid_results = reid.results()
        stages["waiting_for_workers"] = time.perf_counter() - t0
    for (curve, i), figures in ((k, v) for k, v in reid_results.items() if isinstance(k, tuple)):
        curves[curve][i] |= figures
    diversity = {p["intensity"]: p["diversity_ratio"] for p in curves["curve"] if p["intensity"] in DIVERSITY_AT}
    stages["measure"] = time.perf_counter() - measure_began

    default = next(p for p in curves["curve"] if p["intensity"] == DEFAULT_INTENSITY)
    service_rate = service_images / service_seconds
    default["images_per_s"] = round(service_rate, 3)
    default["diversity_ratio_lowest"] = min(diversity.values())  # the target: at each of DIVERSITY_AT
    blur = {p["sigma"]: p for p in curves["blur_curve"]}
    out = {
        "benchmark": "anonymizer", "quick": args.quick, "data": what, "public": public_what, "protected": "gender",
        "kept": kept, "image_size": SIZE,
        "faces": {"train": len(train_keys), "test": len(test_keys), "held_out": len(held_out),
                  "reid": len(reid_keys), "reid_splits": sorted({"train", "val", "test"} - trained_splits),
                  "public_train": public_train},
        "evaluation": {"classifier_image_size": EVAL_SIZE, "quality_image_size": EVAL_SIZE,
                       "note": "the recipe's ScatterNet takes 32 px: every image (64 px faces, ours, blur, "
                               "pixelation; the previous generator's are 32 px) is reduced to 32 px with area "
                               "averaging before classification and the quality score",
                       "reid": "dlib's recognizer on the released held-out faces, among their originals; "
                               "held-out faces were not in any generator's training set, so ε_g does not "
                               "apply to them (epsilon_total_held_out)"},
        "generators": generator_summaries(trained, gen, pixel_gen, plan, public_attributes, kept),
        "public_generator": {"name": shipped.name, "sha256": shipped.sha256, "data": shipped.data,
                             "training": shipped.training, "autoencoder_alone": shipped.autoencoder_alone},
        "diversity_at": diversity,
        "recipe": {"architecture": recipe.architecture, "width": recipe.width, "epochs": recipe.hyper.epochs},
        "classifiers_on_originals": reference.on_originals,
        **curves,
        "default_intensity": DEFAULT_INTENSITY,
        "at_default": default,
        "targets_at_default": targets(default),
        "reid_calibration": {"mirrored": reid_results["mirrored"], "blur_2": _reid_of(blur.get(2.0)),
                             "blur_5": _reid_of(blur.get(5.0)),
                             "expected_rank1": {"mirrored": 1.0, "blur_2": 0.75, "blur_5": 0.0}},
        "memorisation": memorisation(originals, served, train_keys, held_out),
        "better_than_baselines": {name: better_at_every_utility(curves["curve"], curves[name])
                                  for name in ("previous_generator_curve", "blur_curve", "pixelate_curve")
                                  if curves[name]},
        "images_per_s": round(service_rate, 3), "inprocess_images_per_s": round(inprocess_rate, 3),
        "service_vs_inprocess_ratio": round(service_rate / inprocess_rate, 3),
        "settings": plan, "stage_seconds": {k: round(v, 1) for k, v in stages.items()},
        "seconds": round(time.perf_counter() - began, 1),
    }
    path = write_result("anonymizer", out)
    grid(stack(originals, test_keys[:8]), grid_rows, path.with_name("anonymizer-grid.png"))
    plot(out, path.with_suffix(".png"))
    released_dir = write_released(served, test_keys, names, OUT / "anonymizer-released")
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict | list)}, indent=1))
    print(json.dumps(out["targets_at_default"], indent=1))
    print(f"wrote {path}, {path.with_suffix('.png')}, {path.with_name('anonymizer-grid.png')} and {released_dir}")
    return 0


def partition(folder: Path, public: Path | None, scratch: Path, seen: set[str]) -> tuple[Path, Path, str]:
    """(the tenant's folder, the public folder for the previous generator, what the public faces are). The
    tenant's faces are never ones the shipped public generator saw (`seen`: their SHA-256). The public faces:
    --public as given; else the faces of --data that the shipped generator saw, when there are PUBLIC_FACES of
    them; else the last PUBLIC_FACES faces of --data."""
    header, *rows = (folder / "labels.csv").read_text().splitlines()
    was_seen = [hashlib.sha256((folder / "images" / r.split(",", 1)[0]).read_bytes()).hexdigest() in seen
                for r in rows]
    unseen = [r for r, s in zip(rows, was_seen, strict=True) if not s]
    if public is not None:
        if not (public / "images").is_dir() or not (public / "labels.csv").is_file():
            raise SystemExit(f"--public {public}: expected images/ and labels.csv inside")
        copy_rows(folder, header, unseen, scratch / "tenant")
        return scratch / "tenant", public, str(public)
    if sum(was_seen) >= PUBLIC_FACES:
        copy_rows(folder, header, unseen, scratch / "tenant")
        copy_rows(folder, header, [r for r, s in zip(rows, was_seen, strict=True) if s], scratch / "public")
        return (scratch / "tenant", scratch / "public",
                f"the {sum(was_seen)} faces of the data that the shipped public generator was pretrained or "
                f"evaluated on (not the tenant's)")
    rows = unseen
    if len(rows) < 3 * PUBLIC_FACES:
        raise SystemExit(f"{folder} has {len(rows)} faces: {PUBLIC_FACES} public ones would leave too few; give "
                         f"--public")
    copy_rows(folder, header, rows[:-PUBLIC_FACES], scratch / "tenant")
    copy_rows(folder, header, rows[-PUBLIC_FACES:], scratch / "public")
    return scratch / "tenant", scratch / "public", f"the last {PUBLIC_FACES} faces of the data (not the tenant's)"


def copy_rows(folder: Path, header: str, rows: list[str], out: Path) -> None:
    """The images of some rows of labels.csv, copied (uploads refuse links that point out of the folder)."""
    (out / "images").mkdir(parents=True)
    (out / "labels.csv").write_text("\n".join([header, *rows]) + "\n")
    for row in rows:
        name = row.split(",", 1)[0]
        shutil.copyfile(folder / "images" / name, out / "images" / name)


def train_generators(stub, operations, plan: dict, public_attributes: list[str], kept: str, seed: int,
                     stages: dict[str, float]) -> dict[str, an.GeneratorResult]:
    """The generators, trained through the service: ours (DP, from the shipped public generator), then, unless
    --quick, the previous one (pixel): public pretraining, then DP."""
    def dataset(name: str, split: str = "train") -> refs_pb2.DatasetRef:
        return refs_pb2.DatasetRef(dataset=f"datasets/{name}", version=1, split=split)

    def private(multiplicity: int) -> an.GeneratorPrivacy:
        return an.GeneratorPrivacy(target_epsilon=TARGET_EPSILON, target_delta=DELTA, max_grad_norm=1.0,
                                   noise_multiplicity=multiplicity)

    out = {}
    requests = {
        "ours": an.TrainGeneratorRequest(
            dataset=dataset("faces"), condition_attributes=["gender", kept], model="models/faces-gen",
            design="latent", image_size=SIZE, epochs=plan["dp_epochs"], batch_size=plan["batch"],
            learning_rate=2e-3, seed=seed, privacy=private(plan["multiplicity"]), initialize_from_public=PUBLIC),
        "public_previous": an.TrainGeneratorRequest(
            dataset=dataset("public"), condition_attributes=public_attributes, model="models/public-pixel",
            design="pixel", image_size=PIXEL_SIZE, epochs=plan["pixel_public_epochs"], batch_size=64,
            learning_rate=1e-3, seed=seed),
        "previous": an.TrainGeneratorRequest(
            dataset=dataset("faces", plan["pixel_split"]), condition_attributes=["gender", kept],
            model="models/faces-pixel", design="pixel", image_size=PIXEL_SIZE, epochs=plan["pixel_dp_epochs"],
            batch_size=plan["pixel_batch"], learning_rate=2e-3, seed=seed, privacy=private(plan["multiplicity"])),
    }
    if not plan["previous"]:
        del requests["public_previous"], requests["previous"]
    starts = {"previous": "public_previous"}
    for name, request in requests.items():
        if name in starts:
            request.initialize_from.CopyFrom(out[starts[name]].generator)
        began = time.perf_counter()
        out[name] = run_training(stub, operations, request)
        stages[f"train_{name}"] = time.perf_counter() - began
        cost = out[name].privacy_cost.epsilon if request.HasField("privacy") else None
        print(f"generator {name}: {request.model} ({request.design}), ε_g = {cost} in {stages[f'train_{name}']:.0f} s",
              flush=True)
    return out


def load_generator(registry: ModelRegistry, bucket: str, model: str,
                   result: an.GeneratorResult) -> tuple[anon.Generator, nn.Module]:
    stored = registry.get(bucket, model, result.generator.version, kind="generator")
    generator = anon.Generator(model, stored.version, stored.config, stored.record)
    net = build(generator.config)
    net.load_state_dict(registry.weights(bucket, model, stored.version))
    return generator, net.eval()


def generator_summaries(trained: dict, gen: anon.Generator, pixel_gen: anon.Generator, plan: dict,
                        public_attributes: list[str], kept: str) -> dict:
    def summary(generator: anon.Generator, result: an.GeneratorResult) -> dict:
        privacy = generator.record.get("privacy") or {}
        return {"model": generator.name, "design": generator.config.design,
                "image_size": generator.config.image_size, "epsilon_g": result.privacy_cost.epsilon,
                "delta_g": result.privacy_cost.delta, "target_epsilon": TARGET_EPSILON, "target_delta": DELTA,
                "noise_multiplier": privacy.get("noise_multiplier"), "trained_on": generator.record.get("dataset"),
                "frozen": generator.record.get("frozen"), "train_seconds": generator.record.get("train_seconds"),
                "hyperparameters": generator.record.get("hyperparameters"),
                "initialized_from": generator.record.get("initialized_from"),
                "config": json.loads(generator.config.to_json())}

    out = {"ours": summary(gen, trained["ours"]) | {"public": PUBLIC}, "condition_attributes": ["gender", kept]}
    if pixel_gen is not None:
        out["previous"] = summary(pixel_gen, trained["previous"]) | {
            "public_epochs": plan["pixel_public_epochs"], "public_condition_attributes": public_attributes,
            "evaluated_on_train_faces": plan["pixel_train_faces"] or "all",
            "denoising_steps": plan["pixel_steps"] or "the intensity table's"}
    return out


def check(gen: anon.Generator, kept: str, intensity: float, seed: int, steps: int = 0) -> anon.Request:
    return anon.check(gen, dataset_id="faces", label_columns=["gender", kept], image_size=SIZE,
                      protected=["gender"], kept=[kept], intensity=intensity, steps=steps, seed=seed)


def epsilons(request: anon.Request) -> dict:
    """One image's guarantee and its parts; ε_g only applies to faces the generator trained on."""
    cost = request.cost
    parts = {"epsilon_total": cost.per_image.epsilon, "delta_total": cost.per_image.delta,
             "epsilon_x": cost.image.epsilon}
    parts |= {f"epsilon_a_{a.name}": c.epsilon for a, c in zip(request.protected, cost.attributes, strict=True)}
    # The image mechanism is μ-GDP: it holds at every δ, with its ε at each. At the target δ the generator's δ_g
    # is spent and the image gets the rest (the attributes' mechanisms are pure, δ = 0).
    rest = TARGET_DELTA - (0.0 if cost.generator is None else cost.generator.delta)
    image_at = dataclasses.replace(cost.image, delta=rest, epsilon=mechanisms.gaussian_epsilon(
        cost.image.parameters["mu"], rest) if rest > 0 else math.inf)
    at_target = privatize.per_image(image_at, list(cost.attributes), cost.generator)
    return parts | {"epsilon_g": None if cost.generator is None else cost.generator.epsilon,
                    "epsilon_total_held_out": cost.charged.epsilon, "delta_total_held_out": cost.charged.delta,
                    "epsilon_total_at_target_delta": at_target.epsilon, "epsilon_x_at_target_delta": image_at.epsilon,
                    "delta_x_at_target_delta": rest}


def run_training(stub, operations, request: an.TrainGeneratorRequest) -> an.GeneratorResult:
    op = stub.TrainGenerator(request, timeout=60).operation
    return operations.result(op.name, an.GeneratorResult, poll_seconds=1, progress=True)


def anonymize_through_service(coordinator, stub, operations, generator: refs_pb2.ModelRef, kept: str,
                              seed: int) -> int:
    datasets = dataset_service_pb2_grpc.DatasetServiceStub(coordinator)
    reserved = datasets.CreateDatasetVersion(cds.CreateDatasetVersionRequest(parent="datasets/faces", shard_count=1),
                                             timeout=30).dataset_version
    number = int(reserved.name.rsplit("/", 1)[1])
    op = stub.AnonymizeDataset(an.AnonymizeDatasetRequest(
        settings=an.AnonymizationSettings(generator=generator, protected_attributes=["gender"],
                                          kept_attributes=[kept], intensity=DEFAULT_INTENSITY, seed=seed),
        dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1), output_dataset="datasets/faces",
        output_version=number), timeout=60).operation
    result = operations.result(op.name, an.AnonymizationResult, poll_seconds=1, progress=True)
    commit = datasets.CommitDatasetVersion(cds.CommitDatasetVersionRequest(name=reserved.name), timeout=30)
    OperationsClient(coordinator).result(commit.operation.name, cds.DatasetVersion, poll_seconds=0.5)
    print(f"service: {result.image_count} images anonymized at {DEFAULT_INTENSITY}, ε per image "
          f"{result.privacy_cost.epsilon:.4g}", flush=True)
    return number


def stack(images: dict[str, torch.Tensor], keys: list[str]) -> torch.Tensor:
    return torch.stack([images[k] for k in keys])


class Classifiers:
    """The fixed gender classifier and the race classifier trained on originals (at EVAL_SIZE), and the
    measurements of one released (anonymized, blurred or pixelated) version of the training and test faces. All
    of them train in the worker processes, one thread each (two single-threaded fits at once ran 1.4
    times faster than one after the other with two threads each), while the next release is made."""

    def __init__(self, pool: ProcessPoolExecutor, recipe, gender: dict, kept: dict, seed: int):
        def small(d: LabelledImages) -> LabelledImages:
            return LabelledImages(at(d.images, EVAL_SIZE), d.labels, d.classes, d.keys)

        self.pool, self.recipe, self.seed = pool, recipe, seed
        self.gender, self.kept = {s: small(d) for s, d in gender.items()}, {s: small(d) for s, d in kept.items()}
        fixed = pool.submit(_fit_weights, recipe, self.gender["train"], seed)
        kept_model = pool.submit(_fit_weights, recipe, self.kept["train"], seed)
        self.reference_features = scattering_features(self.gender["train"].images)
        self.floor = frechet(scattering_features(self.gender["test"].images), self.reference_features)
        self.fixed = _rebuild(recipe, self.gender["train"], fixed.result())
        self.kept_model = _rebuild(recipe, self.kept["train"], kept_model.result())
        self.kept_bacc = accuracies(self.kept_model, self.kept["test"])[0]
        # each adversary's own accuracy on originals is in its curve point (adversary_bacc_on_originals)
        self.on_originals = {"fixed_gender": accuracies(self.fixed, self.gender["test"])[0], "kept": self.kept_bacc}

    def measure(self, released: dict[str, torch.Tensor], train_keys: list[str]) -> Callable[[], dict]:
        """Starts the classifiers retrained on the released faces of `train_keys` (all the training faces, or a
        subset); the function returned waits for them and gives the point's figures."""
        g, k = self.gender, self.kept

        def labelled(split: LabelledImages, keys: list[str]) -> LabelledImages:
            index = {key: i for i, key in enumerate(split.keys)}
            keys = [key for key in keys if key in index]
            rows = torch.tensor([index[key] for key in keys], dtype=torch.int64)
            return LabelledImages(at(stack(released, keys), EVAL_SIZE), split.labels[rows], split.classes, keys)

        test = labelled(g["test"], g["test"].keys)
        adversary = self.pool.submit(_fit_scores, self.recipe, labelled(g["train"], train_keys), [test, g["test"]],
                                     self.seed)
        utility = self.pool.submit(_fit_scores, self.recipe, labelled(k["train"], train_keys), [k["test"]], self.seed)
        fixed = accuracies(self.fixed, test)[0]
        quality = round(self.floor / frechet(scattering_features(test.images), self.reference_features), 4)

        def finish() -> dict:
            (protected, on_originals), (utility_bacc,) = adversary.result(), utility.result()
            return {"fixed_classifier_protected_bacc": fixed, "adversary_protected_bacc": protected,
                    "adversary_bacc_on_originals": on_originals, "kept_bacc_trained_on_released": utility_bacc,
                    "kept_utility_ratio": round(utility_bacc / self.kept_bacc, 4), "quality": quality,
                    "classifier_train_faces": len(train_keys)}

        return finish


def _single_thread() -> None:
    """The worker processes': one torch thread each."""
    torch.set_num_threads(1)


def _fit_scores(recipe, data: LabelledImages, tests: list[LabelledImages], seed: int) -> list[float]:
    """The balanced accuracy on each test set of the recipe fitted on `data`."""
    model, _, _ = fit(recipe, data, epsilon=None, seed=seed)
    return [accuracies(model, test)[0] for test in tests]


def _fit_weights(recipe, data: LabelledImages, seed: int) -> dict[str, torch.Tensor]:
    """The weights of the recipe fitted on `data` (kymatio's modules do not pickle: the model is rebuilt)."""
    return fit(recipe, data, epsilon=None, seed=seed)[0].state_dict()


def _rebuild(recipe, data: LabelledImages, weights: dict[str, torch.Tensor]) -> nn.Module:
    """The model `_fit_weights` trained."""
    model = recipes.untrained(recipe, data)
    model.load_state_dict(weights)
    return model.eval()


def _embed(images: np.ndarray) -> np.ndarray:
    return reidentification.recognizer().embed(images)


def _nhwc(images: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())


class Reidentification:
    """dlib re-identification of released held-out faces among their originals, embedded in the worker processes
    (dlib's network runs on one core and holds the GIL)."""

    def __init__(self, pool: ProcessPoolExecutor, originals: torch.Tensor):
        self.pool, self.pending = pool, {}
        self.gallery = self._submit(originals)

    def _submit(self, images: torch.Tensor) -> list[Future]:
        chunks = np.array_split(_nhwc(images), max(1, len(images) // 50))
        return [self.pool.submit(_embed, chunk) for chunk in chunks]

    def submit(self, name, images: torch.Tensor) -> None:
        self.pending[name] = self._submit(images)

    def results(self) -> dict:
        gallery = np.concatenate([f.result() for f in self.gallery])
        out = {}
        for name, futures in self.pending.items():
            released = np.concatenate([f.result() for f in futures])
            result = reidentification.reidentify(released, gallery)
            out[name] = {"diversity_ratio": round(reidentification.diversity(released, gallery), 4),
                         "reid_rank1": round(result.rank1, 4), "reid_verify_rate": round(result.verify_rate, 4),
                         "reid_median_distance": round(float(np.median(result.distances)), 4),
                         "reid_faces": len(result.distances), "reid_gallery": result.gallery}
        return out


def _reid_of(point: dict | None) -> dict | None:
    return None if point is None else {k: v for k, v in point.items() if k.startswith("reid_")}


def memorisation(originals: dict, released: dict, train_keys: list[str], held_out: list[str]) -> dict:
    """Each face's distances to the generator's training faces (and their mirror images: training flips), pixel
    RMS at 32 px in [0, 1], for released training faces, released held-out faces and held-out originals: the
    nearest one, and the nearest over the mean of the NEIGHBOURS nearest (Carlini et al. 2023's relative
    distance: a copy of a training face scores near 0, a blurred average face near 1, as it is equally close to
    many). The absolute distance alone flags blurred average faces, which are close to every face."""
    def flat(images: dict, keys: list[str]) -> torch.Tensor:
        return at(stack(images, keys), EVAL_SIZE).float().div(255.0).flatten(1)

    train = at(stack(originals, train_keys), EVAL_SIZE)
    reference = torch.cat([train, train.flip(-1)]).float().div(255.0).flatten(1)

    def neighbours(images: dict, keys: list[str]) -> tuple[np.ndarray, np.ndarray]:
        near = torch.cat([torch.cdist(q, reference).topk(NEIGHBOURS, largest=False).values
                          for q in flat(images, keys).split(256)]) / reference.shape[1] ** 0.5
        return near[:, 0].numpy(), (near[:, 0] / near.mean(1)).numpy()

    def summary(d: np.ndarray) -> dict:
        return {"median": round(float(np.median(d)), 4), "p5": round(float(np.percentile(d, 5)), 4)}

    def own(keys: list[str]) -> np.ndarray:
        return (flat(released, keys) - flat(originals, keys)).pow(2).mean(1).sqrt().numpy()

    groups = {"released_training_faces": neighbours(released, train_keys),
              "released_held_out_faces": neighbours(released, held_out),
              "held_out_originals": neighbours(originals, held_out)}
    out = {name: {"nearest": summary(d), "relative": summary(r), "copies": round(float(np.mean(r < COPY_RATIO)), 4),
                  "count": len(d)} for name, (d, r) in groups.items()}

    def no_closer(measure: str) -> bool:
        ours, new = out["released_training_faces"][measure], out["held_out_originals"][measure]
        return ours["median"] >= new["median"] and ours["p5"] >= new["p5"]

    # membership: a generator that memorised its training faces re-draws them closer to their own originals than
    # it re-draws faces it never saw
    trained, unseen = own(train_keys), own(held_out)
    closer = mannwhitneyu(trained, unseen, alternative="less").pvalue  # one-sided: are training faces closer?
    return out | {"space": "pixels at 32 px, RMS over [0, 1]; training faces and their mirror images",
                  "neighbours": NEIGHBOURS, "copy_ratio": round(COPY_RATIO, 4),
                  "memorisation_ok": no_closer("relative"), "no_closer_in_absolute_distance": no_closer("nearest"),
                  "distance_to_own_original": {"released_training_faces": summary(trained),
                                               "released_held_out_faces": summary(unseen)},
                  "training_faces_closer_to_own_p": round(float(closer), 4),
                  "training_faces_no_closer_to_own": bool(closer >= 0.01)}


def targets(default: dict) -> dict:
    out = {}
    for name, (figure, kind, bound) in TARGETS.items():
        value = default[figure]
        met = value <= bound if kind == "at_most" else value >= bound
        entry = {"value": value, kind: bound, "met": bool(met)}
        if name == "epsilon_total":  # a training face's, at δ = TARGET_DELTA; a held-out face has no ε_g
            entry |= {"delta": TARGET_DELTA, "delta_at_most": TARGET_DELTA,
                      "as_charged": default["epsilon_total"], "as_charged_delta": default["delta_total"],
                      "held_out_value": default["epsilon_total_held_out"],
                      "held_out_delta": default["delta_total_held_out"]}
        out[name] = entry
    return out


@torch.inference_mode()
def reconstruct(network: nn.Module, images: dict[str, torch.Tensor], keys: list[str]) -> dict[str, torch.Tensor]:
    """The latent generator's autoencoder alone: each face encoded, projected to norm C and decoded."""
    network.eval()
    out = {}
    for start in range(0, len(keys), 256):
        batch = keys[start:start + 256]
        out |= dict(zip(batch, network.decode(network.encode(stack(images, batch))), strict=True))
    return out


def transform(images: dict[str, torch.Tensor], keys: list[str], fn) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.asarray(fn(Image.fromarray(images[k].permute(1, 2, 0).numpy()))).transpose(
        2, 0, 1).copy()) for k in keys}


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy()


def write_released(released: dict[str, torch.Tensor], keys: list[str], names: dict[str, str], path: Path) -> Path:
    """The released faces of `keys` as PNGs named by their original files, replacing `path` whole (written to a
    temporary folder beside it, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
    for key in keys:
        name = Path(names.get(key, f"{key}.png")).with_suffix(".png").name
        Image.fromarray(released[key].permute(1, 2, 0).numpy()).save(tmp / name)
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def better_at_every_utility(ours: list[dict], baseline: list[dict]) -> dict:
    """For each of our points whose utility the baseline's curve spans: the baseline's adversary accuracy at that
    utility (linear between its points) against ours; lower is better."""
    points = sorted((p["kept_utility_ratio"], p["adversary_protected_bacc"]) for p in baseline)
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    compared = []
    for p in ours:
        u = p["kept_utility_ratio"]
        if xs[0] <= u <= xs[-1]:
            compared.append({"intensity": p["intensity"], "utility": u, "ours": p["adversary_protected_bacc"],
                             "baseline": round(float(np.interp(u, xs, ys)), 4)})
    return {"compared": compared, "better_everywhere": all(c["ours"] < c["baseline"] for c in compared)
            if compared else None}


def grid(originals: torch.Tensor, rows: dict[str, torch.Tensor], path: Path) -> None:
    """Originals on top, then one row per named release (64 px), each image scaled up 2x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    named = [("original", originals), *rows.items()]
    fig, axes = plt.subplots(len(named), 1, figsize=(9, 1.3 * len(named)))
    for ax, (name, images) in zip(axes, named, strict=True):
        ax.imshow(torch.cat(list(images), dim=2).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("released test faces, 64 px: gender protected, race kept", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    methods = (("curve", "latent DP generator (ours)", "o-", "intensity"),
               ("previous_generator_curve", "previous generator (pixel)", "D-", "intensity"),
               ("blur_curve", "Gaussian blur", "s--", "sigma"), ("pixelate_curve", "pixelation", "^--", "side"),
               ("autoencoder_ceiling", "our autoencoder alone (no noise: a ceiling, not a release)", "x", None))
    for ax, figure, label, bound in ((axes[0], "adversary_protected_bacc", "adversary's gender balanced accuracy "
                                      "(retrained)", 0.60),
                                     (axes[1], "reid_rank1", "re-identification rank-1 (dlib, held-out faces)", 0.05)):
        for name, legend, style, key in methods:
            points = sorted(result[name], key=lambda p: p["kept_utility_ratio"])
            ax.plot([p["kept_utility_ratio"] for p in points], [p[figure] for p in points], style, label=legend)
            for p in (points if key else []):
                ax.annotate(f"{p[key]:g}", (p["kept_utility_ratio"], p[figure]), fontsize=6,
                            textcoords="offset points", xytext=(4, 4))
        ax.axhline(bound, color="grey", lw=0.8, ls=":")
        ax.axvline(0.80, color="grey", lw=0.8, ls=":")
        ax.set_xlabel(f"kept-attribute utility ratio ({result['kept']}, trained on released, tested on originals)",
                      fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.legend(fontsize=7)
    eps = result["generators"]["ours"]["epsilon_g"]
    fig.suptitle(f"privacy–utility ({'quick' if result['quick'] else 'full'}; ours ε_g = {eps:.2f}; labels: "
                 f"intensity, σ px, side px)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
