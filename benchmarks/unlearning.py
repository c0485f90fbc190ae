"""Benchmark: feature unlearning through the unlearning service, against retraining from scratch.

    python -m benchmarks.unlearning [--quick] [--data DIR]

Starts an S3 server and the coordinator, training and unlearning services; uploads the faces through the
coordinator; trains the task model (race; skin_tone on synthetic faces) on the training split through the
training service, twice: with the best non-private recipe (umbra.classifiers.recipes: a ScatterNet, whose fixed
scattering stem is computed once per image, then a small CNN) and with a GroupNorm CNN trained end to end (30
epochs), where retraining costs more. Then, for each, for fractions 0.1 and 0.5 of the training images:

- **Revision.** The chosen images are anonymized (gender protected, the task's attribute kept, the default
  intensity) by the public generator Umbra ships (umbra.anonymization.public_generator: pretrained once on
  public faces, so nothing trains here; in-process, with the anonymizer's own umbra.anonymization.anonymize) and
  uploaded as a new dataset whose samples keep their keys and labels. The protection job's revision is the same
  code with a generator fine-tuned on the tenant's faces with DP-SGD.
- **Unlearning** through the service, first and second order with the automatic τ and LiSSA scale;
  `unlearn_seconds` is the service's own time for the update (model and images loaded from S3, the update,
  the checks).
- **Retraining** from scratch on the revised data, with the same recipe and seed, by the training service: the
  unlearning service's verification (`verify`) does it for the first method of each fraction, and its
  `retrain_seconds` is the training service's run. The benchmark reuses that retrained model for the second
  method and measures every model with the same function the service uses
  (umbra.feature_unlearning.verification): plain test accuracy on the ORIGINAL test split, agreement with the
  retrained model, parameter distance, and a gender probe (logistic regression on penultimate features,
  5-fold cross-validated balanced accuracy on the test images).
- **Label poisoning** in the style of the paper: a copy of the dataset with the labels of 20% of the training
  images changed to another class is uploaded, a model is trained on it, and it is unlearned onto the correct
  labels (the original dataset as the revision; only labels differ). `damage_restored_*` is
  (accuracy unlearned − poisoned) / (clean − poisoned), the clean model being the one trained on true labels.

Writes out/bench/unlearning.json (`runs` over architecture × fraction × method) and unlearning.png. `--quick`
uses the first 700 faces (a smoke run: its test split has about 70 images); the full run uses all of them.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from benchmarks.common import (create_tenant, default_data, running_services, s3_server, service_env, subset_folder,
                               write_result)
from benchmarks.distortion import OTHER_FAMILY
from benchmarks.training import train_through_service
from umbra.classifiers import recipes
from umbra.classifiers.architectures import create
from umbra.classifiers.registry import ModelRegistry
from umbra.client.channel import open_channel
from umbra.client.datasets import DatasetsClient
from umbra.client.errors import OperationFailed
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.feature_unlearning import verification
from umbra.storage.datasets import DatasetReader
from umbra.storage.s3 import S3ObjectStore
from umbra.training.v1 import training_service_pb2_grpc
from umbra.unlearning.v1 import unlearning_service_pb2 as us
from umbra.unlearning.v1 import unlearning_service_pb2_grpc

SERVICES = ["coordinator", "training", "unlearning"]
FRACTIONS = (0.1, 0.5)
METHODS = {"first_order": us.METHOD_FIRST_ORDER, "second_order": us.METHOD_SECOND_ORDER}
PUBLIC = "public-faces-64"  # the shipped public generator that revises the chosen images
POISONED = 0.2
# The best recipe (a ScatterNet: a fixed scattering stem, computed once per image, and a small trained CNN), and a
# network trained end to end (the distortion benchmark's independent classifier), where retraining costs more.
ARCHITECTURES = {"scatternet_cnn": recipes.NONPRIVATE, "groupnorm_cnn": OTHER_FAMILY}


def anonymized(folder: Path, files: list[str], task: str, seed: int) -> dict[str, np.ndarray]:
    """The images `files` of `folder` anonymized by the shipped public generator: gender protected, `task` kept,
    at the default intensity (HWC uint8 at the generator's 64 px)."""
    from umbra.anonymization import anonymize as anon
    from umbra.anonymization import public_generator
    from umbra.anonymization.dataset import sample_rng
    from umbra.anonymization.intensity import DEFAULT_INTENSITY
    from umbra.classifiers.data import decode
    from umbra.diffusion.generator import build

    shipped = public_generator.load(PUBLIC)
    net = build(shipped.config)
    net.load_state_dict(shipped.weights)
    net.eval()
    header, *lines = (folder / "labels.csv").read_text().splitlines()
    columns = header.split(",")
    labels = {line.split(",", 1)[0]: dict(zip(columns, line.split(","), strict=True)) for line in lines}
    request = anon.check(anon.Generator(PUBLIC, 0, shipped.config, shipped.record), dataset_id="revision",
                         label_columns=columns[1:], image_size=shipped.config.image_size, protected=["gender"],
                         kept=[task], intensity=DEFAULT_INTENSITY, steps=0, seed=seed)
    out = {}
    for start in range(0, len(files), 64):
        batch = files[start:start + 64]
        images = torch.from_numpy(np.stack([decode((folder / "images" / f).read_bytes(), shipped.config.image_size)
                                            for f in batch]))
        released, _ = anon.anonymize(net, request, images, [labels[f] for f in batch],
                                     [sample_rng(seed, f) for f in batch],
                                     torch.Generator().manual_seed(seed * 1_000_003 + start))
        out |= {f: image.permute(1, 2, 0).numpy() for f, image in zip(batch, released, strict=True)}
    return out


def revised_folder(folder: Path, files: list[str], out: Path, *, rows: dict[str, str] | None = None,
                   task: str = "race", seed: int = 0) -> Path:
    """A folder with `files` of `folder` and their labels.csv rows: the images anonymized (`anonymized`), or,
    with `rows` (file -> labels.csv row), linked as they are and labelled by those rows."""
    lines = (folder / "labels.csv").read_text().splitlines()
    original = {line.split(",", 1)[0]: line for line in lines[1:]}
    (out / "images").mkdir(parents=True)
    kept = []
    released = anonymized(folder, files, task, seed) if rows is None else {}
    for name in files:
        if rows is None:
            Image.fromarray(released[name]).save(out / "images" / name)
            kept.append(original[name])
        else:
            (out / "images" / name).symlink_to((folder / "images" / name).resolve())
            kept.append(rows[name])
    (out / "labels.csv").write_text("\n".join([lines[0], *kept]) + "\n")
    return out


def run_row(arch: str, fraction: float, method: str, result: us.UnlearningResult, compared: dict,
            retrain_seconds: float) -> dict:
    return {
        "architecture": arch, "fraction": fraction, "method": method, "changed_samples": result.changed_samples,
        **{f"accuracy_{m}": round(compared["accuracy"][m], 4) for m in ("original", "unlearned", "retrained")},
        "agreement_with_retrained": round(compared["agreement"]["unlearned"], 4),
        "agreement_original_with_retrained": round(compared["agreement"]["original"], 4),
        **{f"probe_bacc_{m}": round(compared["probe_balanced_accuracy"][m], 4)
           for m in ("original", "unlearned", "retrained")},
        "parameter_distance_unlearned": round(compared["parameter_distance"]["unlearned"], 4),
        "parameter_distance_original": round(compared["parameter_distance"]["original"], 4),
        "unlearn_seconds": round(result.seconds, 2), "retrain_seconds": round(retrain_seconds, 2),
        "speedup": round(retrain_seconds / result.seconds, 1), "tau": result.tau, "lissa_scale": result.lissa_scale,
        "gradient_evaluations": result.gradient_evaluations, "update_norm": round(result.update_norm, 5),
        "loss_before": round(result.loss_before, 4), "loss_after": round(result.loss_after, 4),
        "service_verification": ({
            "accuracy_unlearned": round(result.verification.accuracy_unlearned, 4),
            "probe_balanced_accuracy": {k: round(x, 4) for k, x in
                                        result.verification.probe_balanced_accuracy.items()}}
            if result.HasField("verification") else None),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the first 700 faces (a smoke run)")
    parser.add_argument("--data", type=Path, help="a folder with images/ and labels.csv (default: the face sample)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    began = time.perf_counter()
    recipe = recipes.NONPRIVATE  # both recipes train at its image size
    with tempfile.TemporaryDirectory(prefix="ub-", dir="/tmp") as scratch, s3_server() as s3:
        scratch = Path(scratch)
        folder, what = default_data(args.data, scratch)
        header = (folder / "labels.csv").read_text().split("\n", 1)[0].split(",")
        task = "race" if "race" in header else "skin_tone"
        protected = "gender"
        if args.quick:
            folder, what = subset_folder(folder, 700, scratch), f"{what}, first 700"
        print(f"data: {what}; task {task}, protected attribute {protected}", flush=True)
        env = service_env(scratch / "home", s3, SERVICES)
        with running_services(env, SERVICES) as t:
            tenant, key = create_tenant(t["coordinator"], env["UMBRA_ADMIN_KEY"])
            bucket = f"umbra-{tenant}"
            datasets = DatasetsClient(open_channel(t["coordinator"], key))
            datasets.upload(folder, "faces", progress=False, drop_invalid=True)
            store = S3ObjectStore(env["UMBRA_S3_ENDPOINT"], env["UMBRA_S3_ACCESS_KEY"], env["UMBRA_S3_SECRET_KEY"])
            registry = ModelRegistry(store)
            reader = DatasetReader(store, bucket, "faces", 1)
            samples = list(reader.samples())
            train_keys = sorted(s.key for s in samples if s.split == "train" and task in s.labels)
            file_of = {Path(line.split(",", 1)[0]).stem: line.split(",", 1)[0]
                       for line in (folder / "labels.csv").read_text().splitlines()[1:]}
            test, probe_labels = verification.probe_set(reader, task=task, attribute=protected,
                                                        image_size=recipe.image_size)
            print(f"{len(train_keys)} training and {len(test)} test images", flush=True)

            training = open_channel(t["training"], env["UMBRA_SERVICE_TOKEN"], tenant=tenant)
            trainer = training_service_pb2_grpc.TrainingServiceStub(training)
            unlearning = open_channel(t["unlearning"], env["UMBRA_SERVICE_TOKEN"], tenant=tenant)
            stub = unlearning_service_pb2_grpc.UnlearningServiceStub(unlearning)
            operations = OperationsClient(unlearning)

            # The revised datasets (blurred fractions) and the label-poisoned copy, uploaded once.
            revisions = {}
            for fraction in FRACTIONS:
                chosen = sorted(random.Random(args.seed).sample(train_keys, round(fraction * len(train_keys))))
                revisions[fraction] = name = f"revised-{round(fraction * 100)}"
                datasets.upload(revised_folder(folder, [file_of[k] for k in chosen], scratch / name, task=task,
                                               seed=args.seed), name, progress=False, drop_invalid=True)
            rng = random.Random(args.seed + 1)
            classes = sorted({s.labels[task] for s in samples if task in s.labels})
            column = header.index(task)
            poisoned_rows = {}
            flipped = set(rng.sample(train_keys, round(POISONED * len(train_keys))))
            for line in (folder / "labels.csv").read_text().splitlines()[1:]:
                cells = line.split(",")
                if Path(cells[0]).stem in flipped:
                    cells[column] = rng.choice([c for c in classes if c != cells[column]])
                poisoned_rows[cells[0]] = ",".join(cells)
            datasets.upload(revised_folder(folder, list(poisoned_rows), scratch / "poisoned", rows=poisoned_rows),
                            "poisoned", progress=False, drop_invalid=True)

            def load(model: str, version: int) -> torch.nn.Module:
                stored = registry.get(bucket, model, version)
                net = create(stored.config)
                net.load_state_dict(registry.weights(bucket, model, version))
                return net

            def unlearn(model: str, original: str, revised: str, method: str, verify: bool, output: str
                        ) -> us.UnlearningResult:
                request = us.UnlearnRequest(
                    model=refs_pb2.ModelRef(model=f"models/{model}", version=1),
                    original=refs_pb2.DatasetRef(dataset=f"datasets/{original}", version=1),
                    revision=us.Revision(revised=refs_pb2.DatasetRef(dataset=f"datasets/{revised}", version=1)),
                    method=METHODS[method], verify=verify, probe_attribute=protected if verify else "",
                    output_model=f"models/{output}")
                op = stub.Unlearn(request, timeout=60).operation
                return operations.result(op.name, us.UnlearningResult, poll_seconds=0.5)

            runs, poisonings, train_seconds = [], {}, {}
            for arch, recipe in ARCHITECTURES.items():
                tag = arch.replace("_", "-")
                _, train_seconds[arch] = train_through_service(
                    trainer, OperationsClient(training), recipe, model=f"models/task-{tag}", dataset="datasets/faces",
                    task=task, train_samples=len(train_keys), epsilon=None, seed=args.seed)
                print(f"{arch}: trained the task model in {train_seconds[arch]:.0f} s", flush=True)
                original_model = load(f"task-{tag}", 1)
                for fraction, name in revisions.items():
                    retrained = None
                    for method in METHODS:
                        try:
                            result = unlearn(f"task-{tag}", "faces", name, method, verify=retrained is None,
                                             output=f"{tag}-{name}-{method.replace('_', '-')}")
                        except OperationFailed as exc:  # refused as diverging: reported, not hidden
                            runs.append({"architecture": arch, "fraction": fraction, "method": method,
                                         "refused": str(exc)})
                            print(runs[-1], flush=True)
                            continue
                        if retrained is None:
                            v = result.verification
                            retrain_seconds = v.retrain_seconds
                            retrained = load(v.retrained.model.removeprefix("models/"), v.retrained.version)
                        unlearned = load(result.unlearned.model.removeprefix("models/"), result.unlearned.version)
                        compared = verification.compare(
                            {"original": original_model, "unlearned": unlearned, "retrained": retrained}, test,
                            probe_labels, reference="retrained", seed=args.seed)
                        runs.append(run_row(arch, fraction, method, result, compared, retrain_seconds))
                        print({k: runs[-1][k] for k in (
                            "architecture", "fraction", "method", "accuracy_original", "accuracy_unlearned",
                            "accuracy_retrained", "probe_bacc_unlearned", "probe_bacc_retrained", "unlearn_seconds",
                            "retrain_seconds", "speedup")}, flush=True)

                # Label poisoning: the model trained on the poisoned copy, unlearned onto the true labels.
                train_through_service(trainer, OperationsClient(training), recipe, model=f"models/poisoned-{tag}",
                                      dataset="datasets/poisoned", task=task, train_samples=len(train_keys),
                                      epsilon=None, seed=args.seed)
                clean = verification.accuracy(original_model, test)[0]
                poisoned = verification.accuracy(load(f"poisoned-{tag}", 1), test)[0]
                poisoning = {"fraction_poisoned": POISONED, "accuracy_clean": round(clean, 4),
                             "accuracy_poisoned": round(poisoned, 4)}
                for method in METHODS:
                    try:
                        result = unlearn(f"poisoned-{tag}", "poisoned", "faces", method, verify=False,
                                         output=f"poisoned-{tag}-{method.replace('_', '-')}")
                    except OperationFailed as exc:
                        poisoning[f"damage_restored_{method}"], poisoning[f"refused_{method}"] = None, str(exc)
                        continue
                    fixed = verification.accuracy(load(result.unlearned.model.removeprefix("models/"), 1), test)[0]
                    poisoning[f"accuracy_{method}"] = round(fixed, 4)
                    poisoning[f"damage_restored_{method}"] = (round((fixed - poisoned) / (clean - poisoned), 4)
                                                              if clean != poisoned else None)
                    poisoning[f"seconds_{method}"] = round(result.seconds, 2)
                    poisoning["changed_samples"] = result.changed_samples
                poisonings[arch] = poisoning
                print(arch, poisoning, flush=True)

        main_arch = next(iter(ARCHITECTURES))
        result = {
            "benchmark": "unlearning", "quick": args.quick, "data": what, "task": task, "protected": protected,
            "revision": f"the chosen training images anonymized by the shipped {PUBLIC} generator (gender protected, "
                        f"{task} kept, the default intensity)",
            "train_images": len(train_keys), "test_images": len(test),
            "recipes": {arch: {"architecture": r.architecture, "width": r.width, "epochs": r.hyper.epochs,
                               "train_seconds": round(train_seconds[arch], 1)} for arch, r in ARCHITECTURES.items()},
            "runs": runs,
            "damage_restored_first_order": poisonings[main_arch]["damage_restored_first_order"],
            "damage_restored_second_order": poisonings[main_arch]["damage_restored_second_order"],
            "label_poisoning": poisonings,
            "targets_at_0.1": {f"{r['architecture']} {r['method']}": {
                "accuracy_within_1_point": abs(r["accuracy_unlearned"] - r["accuracy_retrained"]) <= 0.01,
                "probe_within_2_points": abs(r["probe_bacc_unlearned"] - r["probe_bacc_retrained"]) <= 0.02,
                "speedup_at_least_10x": r["speedup"] >= 10}
                for r in runs if r["fraction"] == 0.1 and "refused" not in r},
            "seconds": round(time.perf_counter() - began, 1),
        }
        path = write_result("unlearning", result)
        plot(result, path.with_suffix(".png"))
        print(f"wrote {path} and {path.with_suffix('.png')} ({result['seconds']:.0f} s)")
    return 0


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [r for r in result["runs"] if "refused" not in r]
    short = {"scatternet_cnn": "ScatterNet", "groupnorm_cnn": "CNN"}
    labels = [f"{short.get(r['architecture'], r['architecture'])}\n{r['fraction']:g}, "
              f"{'1st' if r['method'] == 'first_order' else '2nd'}" for r in runs]
    x = np.arange(len(runs))
    fig, axes = plt.subplots(1, 3, figsize=(18, 4.4))
    for ax, metric, title in ((axes[0], "accuracy", "test accuracy"), (axes[1], "probe_bacc", "gender probe "
                                                                                            "(balanced acc.)")):
        for offset, model in zip((-0.25, 0, 0.25), ("original", "unlearned", "retrained"), strict=True):
            ax.bar(x + offset, [r[f"{metric}_{model}"] for r in runs], width=0.25, label=model)
        ax.set_xticks(x, labels)
        ax.set_title(title)
        low = min(r[f"{metric}_{m}"] for r in runs for m in ("original", "unlearned", "retrained"))
        ax.set_ylim(max(0, low - 0.1), None)
        ax.legend(fontsize=8)
    axes[2].bar(x, [r["speedup"] for r in runs], color="tab:green")
    axes[2].axhline(10, color="grey", linestyle="--", label="10x target")
    axes[2].set_xticks(x, labels)
    axes[2].set_title("speed-up over retraining")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"Feature unlearning vs retraining ({result['data']}; revision: {result['revision']})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
