"""Benchmark: attribute-level anonymization with the DP diffusion generator, against blurring and pixelation.

    python -m benchmarks.anonymizer [--quick] [--data DIR]

Starts an S3 server, the coordinator and the anonymizer, uploads the faces and public synthetic faces, and
trains through the anonymizer: a generator on the synthetic faces without DP (public pretraining, gender only),
then the DP generator on the faces' training split (gender and race; DP-SGD with noise multiplicity), started
from it. It protects gender and keeps race (skin_tone on synthetic faces, which have no race). At each
intensity of CURVE it anonymizes the training and test images and measures, on the test split:

- `fixed_classifier_protected_bacc`: a gender classifier trained on the originals, tested on anonymized images
  against their TRUE gender; `adversary_protected_bacc`: one retrained on anonymized training images with
  their true gender (an attacker who knows some people's gender), tested the same way;
- `kept_utility_ratio`: a race classifier trained on anonymized training images, tested on ORIGINAL test images,
  over one trained on originals;
- `quality`: realism as the ratio FD(original test, original train) / FD(anonymized test, original train),
  FD the Fréchet distance of the images' scattering features (kymatio, J=2, averaged over space: 243 numbers
  per image). 1 means as close to real faces as held-out real faces; blur and pixelation score low. (FID
  needs an Inception network, a download; the scattering transform is fixed and needs none.)
- `epsilon_total`: one image's guarantee (image + attribute mechanisms + the generator's ε_g, composed).

Every classifier is the training service's best recipe (umbra.classifiers.recipes.NONPRIVATE), balanced
accuracy throughout; `classifiers_on_originals` gives each one's balanced accuracy on original test images.
The same curve is measured for Gaussian blur (`blur_curve`, σ in BLURS) and pixelation (`pixelate_curve`, to
the sides in PIXELATIONS). At the default intensity the whole dataset goes through the service's
AnonymizeDataset (reserved, written and committed): `images_per_s` is that end-to-end rate and
`service_vs_inprocess_ratio` compares it with the same anonymization in-process on 256 images.

Writes out/bench/anonymizer.json, anonymizer-grid.png (originals beside three intensities) and
anonymizer.png (the privacy–utility curves). `--quick` uses the first 450 faces and short training (about 8
minutes on 2 cores); its figures are a smoke test, not results.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter

from benchmarks.common import (create_tenant, default_data, running_services, s3_server, service_env, subset_folder,
                               write_result)
from benchmarks.distortion import accuracies
from benchmarks.training import fit
from umbra.anonymization import anonymize as anon
from umbra.anonymization.dataset import sample_rng
from umbra.anonymization.intensity import DEFAULT_INTENSITY
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
from umbra.dataset import synthetic
from umbra.diffusion.generator import ConditionalUNet
from umbra.storage.datasets import DatasetReader
from umbra.storage.s3 import S3ObjectStore

SERVICES = ["coordinator", "anonymizer"]
CURVE = (0.0, 0.25, 0.5, 0.75, 1.0)
BLURS = (0.5, 1.0, 1.5, 2.5, 5.0)  # Gaussian σ in pixels at 32 px
PIXELATIONS = (16, 10, 8, 6, 4)  # sides the 32 px image is reduced to
SIZE = 32
SETTINGS = {  # (public synthetic faces, pretraining epochs, DP epochs, batch, noise multiplicity)
    "full": {"public": 3000, "pretrain_epochs": 12, "dp_epochs": 4, "batch": 256, "multiplicity": 2},
    "quick": {"public": 800, "pretrain_epochs": 1, "dp_epochs": 1, "batch": 64, "multiplicity": 1},
}
TARGET_EPSILON, DELTA = 10.0, 1e-5


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="450 faces, short training (under 10 minutes)")
    parser.add_argument("--data", type=Path, help="a folder with images/ and labels.csv (default: the face sample)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    began = time.perf_counter()
    plan = SETTINGS["quick" if args.quick else "full"]
    recipe = recipes.NONPRIVATE
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="ua-", dir="/tmp") as scratch, s3_server() as s3:
        scratch = Path(scratch)
        folder, what = default_data(args.data, scratch)
        header = (folder / "labels.csv").read_text().split("\n", 1)[0].split(",")
        kept = "race" if "race" in header else "skin_tone"
        if args.quick:
            folder, what = subset_folder(folder, 450, scratch), f"{what}, first 450"
        public = synthetic.write_folder(scratch / "public", plan["public"], size=SIZE, seed=101)
        print(f"data: {what}; protecting gender, keeping {kept}", flush=True)
        env = service_env(scratch / "home", s3, SERVICES)
        with running_services(env, SERVICES) as t:
            # a measurement, not a release: lightly noised images cost thousands of ε each, so no budget binds here
            tenant, key = create_tenant(t["coordinator"], env["UMBRA_ADMIN_KEY"], budget=(1e9, 0.5))
            bucket = f"umbra-{tenant}"
            coordinator = open_channel(t["coordinator"], key)
            uploads = DatasetsClient(coordinator)
            uploads.upload(folder, "faces", progress=False, drop_invalid=True)
            uploads.upload(public, "public", progress=False)
            store = S3ObjectStore(env["UMBRA_S3_ENDPOINT"], env["UMBRA_S3_ACCESS_KEY"], env["UMBRA_S3_SECRET_KEY"])
            reader = DatasetReader(store, bucket, "faces", 1)
            channel = open_channel(t["anonymizer"], env["UMBRA_SERVICE_TOKEN"], tenant=tenant)
            stub, operations = anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel), OperationsClient(channel)

            # The generator: public pretraining without DP, then DP-SGD on the tenant's faces.
            train_began = time.perf_counter()
            pretrained = run_training(stub, operations, an.TrainGeneratorRequest(
                dataset=refs_pb2.DatasetRef(dataset="datasets/public", version=1, split="train"),
                condition_attributes=["gender"], model="models/public-gen", image_size=SIZE,
                epochs=plan["pretrain_epochs"], batch_size=64, learning_rate=1e-3, seed=args.seed))
            generator = run_training(stub, operations, an.TrainGeneratorRequest(
                dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1, split="train"),
                condition_attributes=["gender", kept], model="models/faces-gen", image_size=SIZE,
                epochs=plan["dp_epochs"], batch_size=plan["batch"], learning_rate=2e-3, seed=args.seed,
                initialize_from=pretrained.generator,
                privacy=an.GeneratorPrivacy(target_epsilon=TARGET_EPSILON, target_delta=DELTA, max_grad_norm=1.0,
                                            noise_multiplicity=plan["multiplicity"])))
            train_seconds = time.perf_counter() - train_began
            print(f"generator: ε_g = {generator.privacy_cost.epsilon:.3f} in {train_seconds:.0f} s", flush=True)
            registry = ModelRegistry(store)
            stored = registry.get(bucket, "faces-gen", generator.generator.version, kind="generator")
            gen = anon.Generator("faces-gen", stored.version, stored.config, stored.record)
            net = ConditionalUNet(gen.config)
            net.load_state_dict(registry.weights(bucket, "faces-gen", stored.version))
            net.eval()

            gender = {s: load_split(reader, task="gender", split=s, image_size=SIZE) for s in ("train", "test")}
            kept_sets = {s: load_split(reader, task=kept, split=s, image_size=SIZE) for s in ("train", "test")}
            labels = {s.key: s.labels for s in reader.samples()}

            # The default intensity through the service, end to end.
            service_began = time.perf_counter()
            default_version = anonymize_through_service(coordinator, stub, operations, generator.generator, kept,
                                                        args.seed)
            service_seconds = time.perf_counter() - service_began
            anonymized_default = DatasetReader(store, bucket, "faces", default_version)
            service_images = anonymized_default.header.samples

        # In-process: the rest of the curve, and the same work as the service's on 256 images for the ratio.
        def anonymize_split(data: LabelledImages, intensity: float) -> torch.Tensor:
            request = check(gen, kept, intensity, args.seed)
            out = []
            for start in range(0, len(data), 64):
                keys = data.keys[start:start + 64]
                images, _ = anon.anonymize(net, request, data.images[start:start + 64], [labels[k] for k in keys],
                                           [sample_rng(args.seed, k) for k in keys],
                                           torch.Generator().manual_seed(args.seed * 1_000_003 + start))
                out.append(images)
            return torch.cat(out)

        timed = LabelledImages(gender["train"].images[:256], gender["train"].labels[:256], gender["train"].classes,
                               gender["train"].keys[:256])
        t0 = time.perf_counter()
        anonymize_split(timed, DEFAULT_INTENSITY)
        inprocess_rate = len(timed) / (time.perf_counter() - t0)

        reference = Classifiers(recipe, gender, kept_sets, args.seed)
        curves: dict[str, list[dict]] = {"curve": [], "blur_curve": [], "pixelate_curve": []}
        grid_rows: dict[float, torch.Tensor] = {}
        for intensity in CURVE:
            if intensity == DEFAULT_INTENSITY:
                by_key = {s.key: torch.from_numpy(_decode(data)) for s, data in anonymized_default.iter_images()}
                images = {s: torch.stack([by_key[k] for k in gender[s].keys]) for s in ("train", "test")}
            else:
                images = {s: anonymize_split(gender[s], intensity) for s in ("train", "test")}
            grid_rows[intensity] = images["test"][:8]
            point = reference.measure(images, kept_sets)
            point |= {"intensity": intensity,
                      "epsilon_total": check(gen, kept, intensity, args.seed).cost.per_image.epsilon}
            curves["curve"].append(point)
            print(f"intensity {intensity}: {json.dumps(point)}", flush=True)
        for sigma in BLURS:
            images = {s: transform(gender[s].images, lambda im, r=sigma: im.filter(ImageFilter.GaussianBlur(r)))
                      for s in ("train", "test")}
            curves["blur_curve"].append(reference.measure(images, kept_sets) | {"sigma": sigma})
            print(f"blur σ={sigma}: {json.dumps(curves['blur_curve'][-1])}", flush=True)
        for side in PIXELATIONS:
            images = {s: transform(gender[s].images, lambda im, n=side: im.resize((n, n), Image.BOX).resize(
                (SIZE, SIZE), Image.NEAREST)) for s in ("train", "test")}
            curves["pixelate_curve"].append(reference.measure(images, kept_sets) | {"side": side})
            print(f"pixelate {side}: {json.dumps(curves['pixelate_curve'][-1])}", flush=True)

    default = next(p for p in curves["curve"] if p["intensity"] == DEFAULT_INTENSITY)
    service_rate = service_images / service_seconds
    out = {
        "benchmark": "anonymizer", "quick": args.quick, "data": what, "protected": "gender", "kept": kept,
        "train_images": len(gender["train"]), "test_images": len(gender["test"]),
        "generator_epsilon": generator.privacy_cost.epsilon, "generator_delta": generator.privacy_cost.delta,
        "generator": {"target_epsilon": TARGET_EPSILON, "delta": DELTA, "train_seconds": round(train_seconds, 1),
                      "public_pretraining_images": plan["public"], **{k: v for k, v in plan.items() if k != "public"},
                      "config": json.loads(gen.config.to_json()),
                      "noise_multiplier": generator.privacy_cost.parameters["noise_multiplier"]},
        "recipe": {"architecture": recipe.architecture, "width": recipe.width, "epochs": recipe.hyper.epochs},
        "classifiers_on_originals": reference.on_originals,
        **curves,
        "default_intensity": DEFAULT_INTENSITY,
        "at_default": default,
        "targets_at_default": {"adversary_protected_bacc_at_most_0.60": default["adversary_protected_bacc"] <= 0.60,
                               "kept_utility_ratio_at_least_0.80": default["kept_utility_ratio"] >= 0.80},
        "better_than_baselines": {name: better_at_every_utility(curves["curve"], curves[name])
                                  for name in ("blur_curve", "pixelate_curve")},
        "images_per_s": round(service_rate, 3), "inprocess_images_per_s": round(inprocess_rate, 3),
        "service_vs_inprocess_ratio": round(service_rate / inprocess_rate, 3),
        "seconds": round(time.perf_counter() - began, 1),
    }
    path = write_result("anonymizer", out)
    grid(gender["test"].images[:8], {i: grid_rows[i] for i in (0.25, DEFAULT_INTENSITY, 1.0)},
         path.with_name("anonymizer-grid.png"))
    plot(out, path.with_suffix(".png"))
    print(json.dumps({k: v for k, v in out.items() if not isinstance(v, dict | list)}, indent=1))
    print(f"wrote {path}, {path.with_suffix('.png')} and {path.with_name('anonymizer-grid.png')}")
    return 0


def check(gen: anon.Generator, kept: str, intensity: float, seed: int) -> anon.Request:
    return anon.check(gen, dataset_id="faces", label_columns=["gender", kept], image_size=SIZE,
                      protected=["gender"], kept=[kept], intensity=intensity, steps=0, seed=seed)


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


class Classifiers:
    """The fixed gender classifier and the race classifier trained on originals, and the measurements of one
    anonymized (or blurred, or pixelated) version of the train and test images."""

    def __init__(self, recipe, gender: dict, kept: dict, seed: int):
        self.recipe, self.gender, self.seed = recipe, gender, seed
        self.fixed, _, _ = fit(recipe, gender["train"], epsilon=None, seed=seed)
        self.kept_model, _, _ = fit(recipe, kept["train"], epsilon=None, seed=seed)
        self.kept_bacc = accuracies(self.kept_model, kept["test"])[0]
        self.reference_features = scattering_features(gender["train"].images)
        self.floor = frechet(scattering_features(gender["test"].images), self.reference_features)
        # each adversary's own accuracy on originals is in its curve point (adversary_bacc_on_originals)
        self.on_originals = {"fixed_gender": accuracies(self.fixed, gender["test"])[0], "kept": self.kept_bacc}

    def measure(self, images: dict[str, torch.Tensor], kept: dict) -> dict:
        g, k = self.gender, kept
        anonymized = {s: LabelledImages(images[s], g[s].labels, g[s].classes, g[s].keys) for s in images}
        adversary, _, _ = fit(self.recipe, anonymized["train"], epsilon=None, seed=self.seed)
        # the kept attribute's split: its own labels, the anonymized images of the same keys
        index = {key: i for i, key in enumerate(g["train"].keys)}
        both = [i for i, key in enumerate(k["train"].keys) if key in index]
        utility_set = LabelledImages(images["train"][[index[k["train"].keys[i]] for i in both]],
                                     k["train"].labels[both], k["train"].classes, [k["train"].keys[i] for i in both])
        utility, _, _ = fit(self.recipe, utility_set, epsilon=None, seed=self.seed)
        utility_bacc = accuracies(utility, k["test"])[0]
        return {
            "fixed_classifier_protected_bacc": accuracies(self.fixed, anonymized["test"])[0],
            "adversary_protected_bacc": accuracies(adversary, anonymized["test"])[0],
            "adversary_bacc_on_originals": accuracies(adversary, g["test"])[0],
            "kept_bacc_trained_on_anonymized": utility_bacc,
            "kept_utility_ratio": round(utility_bacc / self.kept_bacc, 4),
            "quality": round(self.floor / frechet(scattering_features(images["test"]), self.reference_features), 4),
        }


def transform(images: torch.Tensor, fn) -> torch.Tensor:
    out = [np.asarray(fn(Image.fromarray(x.permute(1, 2, 0).numpy()))).transpose(2, 0, 1) for x in images]
    return torch.from_numpy(np.stack(out).copy())


def _decode(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"), dtype=np.uint8).transpose(2, 0, 1).copy()


_SCATTERING = None


def scattering_features(images: torch.Tensor) -> np.ndarray:
    """(N, 243): each colour channel's 81 scattering coefficients (J=2, L=8), averaged over space."""
    global _SCATTERING
    from kymatio.torch import Scattering2D

    if _SCATTERING is None:
        _SCATTERING = Scattering2D(J=2, shape=(SIZE, SIZE), L=8)
    out = []
    with torch.no_grad():
        for start in range(0, len(images), 256):
            x = images[start:start + 256].float().div(255.0).contiguous()
            out.append(_SCATTERING(x).mean(dim=(-1, -2)).flatten(1).numpy())
    return np.concatenate(out).astype(np.float64)


def frechet(a: np.ndarray, b: np.ndarray) -> float:
    """The Fréchet distance between Gaussians fitted to two feature sets (as FID computes it)."""
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * np.real(root)))


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


def grid(originals: torch.Tensor, rows: dict[float, torch.Tensor], path: Path) -> None:
    """Originals on top, then one row per intensity, each image scaled up 3x."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    named = [("original", originals)] + [(f"intensity {i:g}", r) for i, r in rows.items()]
    fig, axes = plt.subplots(len(named), 1, figsize=(8, 1.25 * len(named)))
    for ax, (name, images) in zip(axes, named, strict=True):
        ax.imshow(torch.cat(list(images), dim=2).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_ylabel(name, rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("anonymized test faces: gender protected, race kept", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, label, style in (("curve", "Diffusion-DP (ours)", "o-"), ("blur_curve", "Gaussian blur", "s--"),
                               ("pixelate_curve", "pixelation", "^--")):
        points = sorted(result[name], key=lambda p: p["kept_utility_ratio"])
        ax.plot([p["kept_utility_ratio"] for p in points], [p["adversary_protected_bacc"] for p in points], style,
                label=label)
    for p in result["curve"]:
        ax.annotate(f"{p['intensity']:g}", (p["kept_utility_ratio"], p["adversary_protected_bacc"]), fontsize=7,
                    textcoords="offset points", xytext=(4, 4))
    ax.axhline(0.60, color="grey", lw=0.8, ls=":")
    ax.axvline(0.80, color="grey", lw=0.8, ls=":")
    ax.set_xlabel(f"kept-attribute utility ratio ({result['kept']}, trained on released, tested on originals)")
    ax.set_ylabel("adversary's gender balanced accuracy (retrained)")
    ax.set_title(f"privacy–utility ({'quick' if result['quick'] else 'full'}; ε_g = {result['generator_epsilon']:.2f})",
                 fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
