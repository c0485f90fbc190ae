"""Benchmark: MDP and AugMDP through the distortion service, measured against the reference loop.

    python -m benchmarks.distortion [--quick] [--data DIR] [--task race]

Starts an S3 server and the coordinator, training and distortion services, uploads the faces, trains the
feature extractor through the training service (the best non-private recipe of umbra.classifiers.recipes), has
the distortion service release an AugMDP version (T=2) of the training split into a version the coordinator
reserved and then commits, and measures, on the ORIGINAL test images:

- `original_accuracy`: the extractor itself (trained and tested on originals); `mdp_accuracy`: a classifier
  trained on the first copy of the release (exactly the MDP release of the same seed: copy 0 draws the same
  start images, and matching is deterministic); `augmdp_accuracy`: one trained on both copies. Every accuracy
  is balanced accuracy (mean per-class recall; the face sample is half one race); plain accuracies are given
  beside them. Every classifier uses the same best recipe and seed-independent settings.
- `mapping_distortion_rate`: the share of released images that an independent classifier (same recipe, another
  seed, trained on originals) assigns to their start image's class; `label_rate` the share it assigns to their
  label.
- `ssim_to_start_mean` (released vs start image), `ssim_to_original_mean` (released vs original), and
  `inversion_attack_ssim_mean`: an attacker with the released images and the extractor inverts the features
  (umbra.mdp.inversion, the better of two starts per image set); `ssim_random_pair_mean` is what SSIM gives for
  two unrelated faces, the floor to read the others against.
- Speed, on the same batch of training images and the same extractor, in this run: ours (momentum 0.7 on the
  normalized steps of size 0.06, `--steps`, default 35) against the reference loop (the paper's update: steps of
  0.1, 100 of them, gradients for the parameters too). `speed_vs_reference` compares them at equal feature
  loss: it is reported with both mean feature losses, and `equal_feature_loss` says whether ours is at or below
  the reference's.
  `images_per_s` is the service's end-to-end rate (reading, matching, encoding, writing); `timing` also gives
  both released batches' SSIM to their start images (how much each moved away from the start).

Writes out/bench/distortion.json and distortion.png (rows: original, start image, released image, inversion).
`--quick` uploads 700 faces and times a batch of 64 (about 8 minutes on 2 cores); the full run uploads
everything and times a batch of 128.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (create_tenant, default_data, running_services, s3_server, service_env, subset_folder,
                               write_result)
from benchmarks.training import balanced_accuracy, fit, train_through_service
from umbra.classifiers import loop, recipes
from umbra.classifiers.architectures import create
from umbra.classifiers.data import LabelledImages, load_split
from umbra.classifiers.registry import ModelRegistry
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import dataset_service_pb2 as cds
from umbra.coordinator.v1 import dataset_service_pb2_grpc
from umbra.distortion.v1 import distortion_service_pb2 as ds
from umbra.distortion.v1 import distortion_service_pb2_grpc
from umbra.mdp.feature_matching import choose_starts, match_features, reference_match
from umbra.mdp.inversion import invert_features
from umbra.storage.datasets import DatasetReader
from umbra.storage.s3 import S3ObjectStore
from umbra.training.v1 import training_service_pb2_grpc

SERVICES = ["coordinator", "training", "distortion"]
MOMENTUM = 0.7
REFERENCE_STEPS = 100
# A second independent classifier that shares nothing with the extractor (no scattering stem): the best
# end-to-end CNN recipe measured for the training issue.
OTHER_FAMILY = dataclasses.replace(recipes.NONPRIVATE, architecture="groupnorm_cnn",
                                   hyper=dataclasses.replace(recipes.NONPRIVATE.hyper, epochs=30))


def accuracies(model: torch.nn.Module, data: LabelledImages) -> tuple[float, float]:
    """(balanced accuracy, plain accuracy)."""
    predicted = loop.predict(model, data)
    plain = float((predicted == data.labels).float().mean())
    return round(balanced_accuracy(predicted, data.labels), 4), round(plain, 4)


def ssim(a: torch.Tensor, b: torch.Tensor) -> np.ndarray:
    """Per-pair SSIM of float images in [0, 1] (scikit-image's, over the colour channels)."""
    from skimage.metrics import structural_similarity

    return np.array([structural_similarity(x.permute(1, 2, 0).numpy(), y.permute(1, 2, 0).numpy(), channel_axis=2,
                                           data_range=1.0) for x, y in zip(a, b, strict=True)])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="700 faces, a timing batch of 64 (about 8 minutes)")
    parser.add_argument("--data", type=Path, help="a folder with images/ and labels.csv (default: the face sample)")
    parser.add_argument("--task", default=None, help="the label column to protect (default race, or skin_tone on "
                                                     "synthetic faces, which have no race)")
    parser.add_argument("--steps", type=int, default=35, help="our steps, with momentum 0.7 (default 35)")
    parser.add_argument("--step-size", type=float, default=0.06, help="our step size (default 0.06)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    began = time.perf_counter()
    recipe = recipes.NONPRIVATE
    with tempfile.TemporaryDirectory(prefix="ub-", dir="/tmp") as scratch, s3_server() as s3:
        scratch = Path(scratch)
        folder, what = default_data(args.data, scratch)
        header = (folder / "labels.csv").read_text().split("\n", 1)[0].split(",")
        task = args.task or ("race" if "race" in header else "skin_tone")
        if args.quick:
            folder, what = subset_folder(folder, 700, scratch), f"{what}, first 700"
        print(f"data: {what}; protecting the mapping to {task}", flush=True)
        env = service_env(scratch / "home", s3, SERVICES)
        with running_services(env, SERVICES) as t:
            tenant, key = create_tenant(t["coordinator"], env["UMBRA_ADMIN_KEY"])
            bucket = f"umbra-{tenant}"
            coordinator = open_channel(t["coordinator"], key)
            version = DatasetsClient(coordinator).upload(folder, "faces", progress=False, drop_invalid=True)
            print(f"ingested {version.sample_count} images through the coordinator", flush=True)
            store = S3ObjectStore(env["UMBRA_S3_ENDPOINT"], env["UMBRA_S3_ACCESS_KEY"], env["UMBRA_S3_SECRET_KEY"])
            reader = DatasetReader(store, bucket, "faces", 1)
            train = load_split(reader, task=task, split="train", image_size=recipe.image_size)
            test = load_split(reader, task=task, split="test", image_size=recipe.image_size, classes=train.classes)

            # The tenant's model, trained on the originals by the training service: the feature extractor.
            training = open_channel(t["training"], env["UMBRA_SERVICE_TOKEN"], tenant=tenant)
            trained, _ = train_through_service(
                training_service_pb2_grpc.TrainingServiceStub(training), OperationsClient(training), recipe,
                model="models/extractor", dataset="datasets/faces", task=task, train_samples=len(train), epsilon=None,
                seed=args.seed)
            stored = ModelRegistry(store).get(bucket, "extractor", 1)
            extractor = create(stored.config)
            extractor.load_state_dict(ModelRegistry(store).weights(bucket, "extractor", 1))
            original_bacc, original_plain = accuracies(extractor, test)
            print(f"extractor ({trained.name}): balanced accuracy {original_bacc} on originals", flush=True)
            independent, _, _ = fit(recipe, train, epsilon=None, seed=args.seed + 1)
            other_family, _, _ = fit(OTHER_FAMILY, train, epsilon=None, seed=args.seed + 1)

            # The release, through the services: reserve, distort, commit.
            datasets = dataset_service_pb2_grpc.DatasetServiceStub(coordinator)
            reserved = datasets.CreateDatasetVersion(
                cds.CreateDatasetVersionRequest(parent="datasets/faces", shard_count=1), timeout=30).dataset_version
            distortion = open_channel(t["distortion"], env["UMBRA_SERVICE_TOKEN"], tenant=tenant)
            request = ds.DistortDatasetRequest(
                dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1, split="train"), label_column=task,
                feature_extractor=refs_pb2.ModelRef(model="models/extractor", version=1), copies=2,
                steps=args.steps, momentum=MOMENTUM, step_size=args.step_size, batch_size=128, seed=args.seed,
                output_dataset="datasets/faces",
                output_version=int(reserved.name.rsplit("/", 1)[1]))
            start = time.perf_counter()
            op = distortion_service_pb2_grpc.DistortionServiceStub(distortion).DistortDataset(request, timeout=60)
            result = OperationsClient(distortion).result(op.operation.name, ds.DistortionResult, poll_seconds=1,
                                                         progress=True)
            service_seconds = time.perf_counter() - start
            print(f"released {result.image_count} images in {service_seconds:.0f} s "
                  f"(feature loss {result.feature_loss:.4f})", flush=True)
            commit = datasets.CommitDatasetVersion(cds.CommitDatasetVersionRequest(name=reserved.name), timeout=30)
            OperationsClient(coordinator).result(commit.operation.name, cds.DatasetVersion, poll_seconds=0.5)
            record = json.loads(store.get(bucket, result.record.key))
            released = load_split(DatasetReader(store, bucket, "faces", request.output_version), task=task,
                                  split="train", image_size=recipe.image_size, classes=train.classes)

        # Utility: classifiers trained on the release, tested on the ORIGINAL test images.
        mdp_set = released.take([k.endswith("-c0") for k in released.keys])
        mdp_model, _, _ = fit(recipe, mdp_set, epsilon=None, seed=args.seed)
        augmdp_model, _, _ = fit(recipe, released, epsilon=None, seed=args.seed)
        mdp_bacc, mdp_plain = accuracies(mdp_model, test)
        augmdp_bacc, augmdp_plain = accuracies(augmdp_model, test)

        # Privacy: where an independent classifier puts the released images, and how they look.
        rows = {row["key"]: row for row in record["samples"]}
        start_class = torch.tensor([train.classes.index(rows[k]["start_class"]) for k in released.keys])
        predicted = loop.predict(independent, released)
        predicted_other = loop.predict(other_family, released)
        by_key = {k: i for i, k in enumerate(train.keys)}
        sources = torch.tensor([by_key[rows[k]["source"]] for k in released.keys])
        starts = torch.tensor([by_key[rows[k]["start"]] for k in released.keys])
        released_f, originals_f, starts_f = released.floats(), train.floats(sources), train.floats(starts)
        n_attack = 16 if args.quick else 64
        attack_steps = 100 if args.quick else 200
        attacks = {start: invert_features(extractor, released_f[:n_attack], start=start, steps=attack_steps)
                   for start in ("gray", "released")}
        attack_ssim = {start: float(ssim(images, originals_f[:n_attack]).mean()) for start, images in attacks.items()}
        best = max(attack_ssim, key=attack_ssim.get)
        shuffled = torch.roll(torch.arange(len(originals_f)), 1)

        # Speed at equal feature loss, on one batch of training images and their start images.
        batch = 64 if args.quick else 128
        generator = torch.Generator().manual_seed(args.seed)
        batch_starts = choose_starts(train.labels, generator)[:batch]
        originals, start_images = train.floats(slice(0, batch)), train.floats(batch_starts)
        t0 = time.perf_counter()
        ours_released, our_loss = match_features(extractor, originals, start_images, steps=args.steps,
                                                 momentum=MOMENTUM, step_size=args.step_size, batch_size=batch)
        ours = time.perf_counter() - t0
        t0 = time.perf_counter()
        reference_released, reference_loss = reference_match(extractor, originals, start_images, steps=REFERENCE_STEPS,
                                            batch_size=batch)
        reference = time.perf_counter() - t0

    images_per_s = result.image_count / service_seconds
    out = {
        "benchmark": "distortion", "quick": args.quick, "data": what, "task": task, "classes": train.classes,
        "train_images": len(train), "test_images": len(test), "released_images": result.image_count,
        "recipe": {"architecture": recipe.architecture, "width": recipe.width, "epochs": recipe.hyper.epochs,
                   "image_size": recipe.image_size, "mirror_average": recipe.mirror_average},
        "settings": {"copies": 2, "steps": args.steps, "momentum": MOMENTUM, "step_size": args.step_size,
                     "batch_size": 128,
                     "seed": args.seed},
        "original_accuracy": original_bacc, "original_bacc": original_bacc, "original_plain_accuracy": original_plain,
        "mdp_accuracy": mdp_bacc, "mdp_plain_accuracy": mdp_plain,
        "augmdp_accuracy": augmdp_bacc, "augmdp_plain_accuracy": augmdp_plain,
        "accuracy_ratio_mdp": round(mdp_bacc / original_bacc, 4),
        "accuracy_ratio_augmdp": round(augmdp_bacc / original_bacc, 4),
        "majority_class_share": round(float(torch.bincount(test.labels).max() / len(test)), 4),
        "mapping_distortion_rate": round(float((predicted == start_class).float().mean()), 4),
        "label_rate": round(float((predicted == released.labels).float().mean()), 4),
        "mapping_distortion_rate_other_family": round(float((predicted_other == start_class).float().mean()), 4),
        "label_rate_other_family": round(float((predicted_other == released.labels).float().mean()), 4),
        "other_family_classifier_bacc": accuracies(other_family, test)[0],
        "independent_classifier_bacc": accuracies(independent, test)[0],
        "ssim_to_start_mean": round(float(ssim(released_f, starts_f).mean()), 4),
        "ssim_to_original_mean": round(float(ssim(released_f, originals_f).mean()), 4),
        "ssim_random_pair_mean": round(float(ssim(originals_f, originals_f[shuffled]).mean()), 4),
        "inversion_attack_ssim_mean": round(attack_ssim[best], 4),
        "inversion_attack": {"images": n_attack, "steps": attack_steps, "ssim_by_start": attack_ssim, "best": best},
        "feature_loss_service_mean": round(result.feature_loss, 5),
        "images_per_s": round(images_per_s, 3),
        "inprocess_images_per_s": round(batch / ours, 3),
        "reference_images_per_s": round(batch / reference, 3),
        "speed_vs_reference": round(reference / ours, 3),
        "speed_per_step_vs_reference": round((reference / REFERENCE_STEPS) / (ours / args.steps), 3),
        "feature_loss_mean": round(float(our_loss.mean()), 5),
        "reference_feature_loss_mean": round(float(reference_loss.mean()), 5),
        "equal_feature_loss": bool(our_loss.mean() <= reference_loss.mean()),
        "timing": {"batch": batch, "steps": args.steps, "reference_steps": REFERENCE_STEPS,
                   "ssim_to_start": round(float(ssim(ours_released, start_images).mean()), 4),
                   "reference_ssim_to_start": round(float(ssim(reference_released, start_images).mean()), 4),
                   "seconds": round(ours, 2), "reference_seconds": round(reference, 2)},
        "seconds": round(time.perf_counter() - began, 1),
    }
    path = write_result("distortion", out)
    grid(originals_f[:8], starts_f[:8], released_f[:8], attacks[best][:8], path.with_suffix(".png"), out)
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict | list)}, indent=1))
    print(f"wrote {path} and {path.with_suffix('.png')}")
    return 0


def grid(originals, starts, released, inverted, path: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [("original", originals), ("start image", starts), ("released (MDP)", released),
            ("inversion attempt", inverted)]
    fig, axes = plt.subplots(len(rows), len(originals), figsize=(len(originals) * 1.1, len(rows) * 1.2))
    for r, (title, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(title, fontsize=7)
    fig.suptitle(f"{result['task']}: released images keep the original's label; SSIM to start "
                 f"{result['ssim_to_start_mean']:.2f}, inversion {result['inversion_attack_ssim_mean']:.2f}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
