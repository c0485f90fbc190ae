"""Training: accuracy of plain and DP-SGD classifiers (the recipes in umbra.classifiers.recipes), what the
training service costs over the same loop in-process, and what Triton costs over in-process inference.

    python -m benchmarks.training [--quick] [--data DIR] [--task gender] [--only inference]

Starts what it needs (the S3 server from deploy/s3/rgw.sh, a coordinator and a training service process, and
the inference server, a real Triton) and stops it again. The data is ingested through the coordinator like a
tenant's; in-process runs read the same committed version from S3. Writes out/bench/training.json and
out/bench/training.png (test accuracy against epsilon) with:
  task, data, train/val/test sizes, nonprivate_accuracy, dp (a list of {target_epsilon, epsilon_spent,
  accountant, accuracy, balanced_accuracy, seconds}), dp8_vs_nonprivate_ratio,
  service_vs_inprocess_ratio (training samples/s through the service, end to end: loading from S3, training,
  a checkpoint per epoch, writing the model; over the same loop in-process, training only),
  triton_vs_inprocess_ratio (batch-64 inference: images/s through Triton over gRPC / in-process torch),
  gateway_vs_direct_ratio (batch-64 inference: images/s through the coordinator's ModelService.Predict, which
  checks the tenant's key and forwards to Triton, over tritonclient straight to Triton with the coordinator's access
  token; the same model and processes, alternating rounds, the median of the rounds' ratios).
With `--only inference`, no recipe is trained in-process: the epsilon-8 recipe is trained through the service (the
model to serve; `--epoch-factor` shortens it) and only the inference comparison is run, into
out/bench/training-inference.json (the triton and gateway figures above, no plot).
In-process, each recipe is trained with 3 seeds (1 with --quick) and the accuracies are their means (the
per-seed figures are in the JSON): a test split of ~300 faces has a standard error of about 2.5 points.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.common import (OUT, create_tenant, default_data, free_port, inference_server, running_services,
                               s3_server, service_env, write_result)
from umbra.classifiers import loop, recipes
from umbra.classifiers.architectures import create
from umbra.classifiers.data import LabelledImages, load_split
from umbra.classifiers.model_config import ModelConfig
from umbra.client import inference
from umbra.client.channel import open_channel
from umbra.privacy import dp_sgd
from umbra.client.datasets import DatasetsClient
from umbra.client.operations import OperationsClient
from umbra.common.v1 import refs_pb2
from umbra.coordinator.v1 import model_service_pb2, model_service_pb2_grpc
from umbra.inference import access
from umbra.inference.gateway import Gateway
from umbra.services.training import convert
from umbra.storage.datasets import DatasetReader
from umbra.storage.s3 import S3ObjectStore
from umbra.training.v1 import training_service_pb2 as ts
from umbra.training.v1 import training_service_pb2_grpc

EPSILONS = (1.0, 4.0, 8.0)
DELTA = 1e-5
# The anchor of the issue: a plain Opacus loop, small GroupNorm CNN at 32 px, no tuning, on the face sample.
ANCHOR = {"nonprivate": 0.74, 8.0: 0.68, 4.0: 0.73, 1.0: 0.54}


def balanced_accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    recalls = [float((predicted[labels == c] == c).float().mean()) for c in labels.unique()]
    return sum(recalls) / len(recalls)


def scores(model: torch.nn.Module, data: LabelledImages) -> dict:
    predicted = loop.predict(model, data)
    return {"accuracy": round(float((predicted == data.labels).float().mean()), 4),
            "balanced_accuracy": round(balanced_accuracy(predicted, data.labels), 4)}


def fit(recipe: recipes.Recipe, data: LabelledImages, *, epsilon: float | None,
        seed: int) -> tuple[torch.nn.Module, dp_sgd.TrainResult, float]:
    """(model, result, training seconds) of one in-process run of `recipe`, as the service would run it."""
    dp = (dp_sgd.DPSettings(target_delta=DELTA, target_epsilon=epsilon, max_grad_norm=recipe.max_grad_norm)
          if epsilon else None)
    began = time.perf_counter()
    model, result = recipes.fit(recipe, data, seed=seed, dp=dp)
    return model, result, time.perf_counter() - began


def hyperparameters_proto(recipe: recipes.Recipe) -> ts.Hyperparameters:
    h = recipe.hyper
    return ts.Hyperparameters(epochs=h.epochs, batch_size=h.batch_size, physical_batch_size=h.physical_batch_size,
                              learning_rate=h.learning_rate, optimizer=h.optimizer, momentum=h.momentum,
                              weight_decay=h.weight_decay, image_size=recipe.image_size, width=recipe.width,
                              mirror_average=recipe.mirror_average, schedule=h.schedule)


def train_through_service(stub, operations, recipe: recipes.Recipe, *, model: str, dataset: str, task: str,
                          train_samples: int, epsilon: float | None, seed: int) -> tuple[ts.ModelVersion, float]:
    recipe = recipe.fitted(train_samples)
    request = ts.TrainRequest(model=model, dataset=refs_pb2.DatasetRef(dataset=dataset, version=1, split="train"),
                              task=task, architecture=convert.architecture_to_proto(recipe.architecture), seed=seed,
                              hyperparameters=hyperparameters_proto(recipe))
    if epsilon:
        request.differential_privacy.CopyFrom(ts.DifferentialPrivacy(
            target_epsilon=epsilon, target_delta=DELTA, max_grad_norm=recipe.max_grad_norm))
    began = time.perf_counter()
    name = stub.Train(request, timeout=60).operation.name
    version = operations.result(name, ts.ModelVersion, poll_seconds=0.5)
    return version, time.perf_counter() - began


def images_per_s(call, images: np.ndarray, batch: int, seconds: float) -> float:
    """Throughput of `call` on consecutive batches of `images`, run for about `seconds` after one warm-up."""
    if len(images) < 4 * batch:  # a small test split: cycle through it
        images = np.concatenate([images] * -(-4 * batch // len(images)))
    call(images[:batch])
    done, began = 0, time.perf_counter()
    while time.perf_counter() - began < seconds:
        for start in range(0, len(images) - batch + 1, batch):
            call(images[start:start + batch])
            done += batch
    return done / (time.perf_counter() - began)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one seed per recipe instead of three (about 4 minutes "
                                                              "on 2 cores)")
    parser.add_argument("--data", type=Path, help="a folder with images/ and labels.csv (default: the face sample)")
    parser.add_argument("--task", default="gender", help="the label column to learn (default gender)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed")
    parser.add_argument("--seeds", type=int, default=None,
                        help="seeds per recipe in-process (default 3, or 1 with --quick); accuracies are means")
    parser.add_argument("--epoch-factor", type=float, default=None,
                        help="scale every recipe's epochs by this (default 1)")
    parser.add_argument("--only", choices=["inference"], default=None,
                        help="inference: train only the served model (through the service) and compare inference")
    args = parser.parse_args()
    factor = args.epoch_factor or 1.0
    args.seeds = args.seeds or (1 if args.quick else 3)
    nonprivate = recipes.NONPRIVATE.scaled(factor)
    dp_recipes = {eps: recipes.for_epsilon(eps).scaled(factor) for eps in EPSILONS}
    began = time.perf_counter()
    # A short scratch path: PyTriton's unix sockets live in the inference server's workspace.
    with tempfile.TemporaryDirectory(prefix="ub-", dir="/tmp") as scratch, s3_server() as s3:
        scratch = Path(scratch)
        folder, what = default_data(args.data, scratch)
        print(f"data: {what}; task {args.task}", flush=True)
        env = service_env(scratch / "home", s3, ["coordinator", "training"])
        env["UMBRA_INFERENCE_URL"] = triton_url = f"127.0.0.1:{free_port()}"
        port = int(triton_url.rsplit(":", 1)[1])
        with running_services(env, ["coordinator", "training"]) as t, contextlib.ExitStack() as serving:
            tenant, key = create_tenant(t["coordinator"], env["UMBRA_ADMIN_KEY"])
            # The inference server serves this tenant's publications only: the S3 server keeps every model that
            # earlier runs, tests and demos published, and a server loading them all is not the one-model set-up
            # that the in-process path is compared with (benchmarks.common.inference_server).
            serving.enter_context(inference_server(env, scratch / "ws", port, tenants=[tenant]))
            datasets = DatasetsClient(open_channel(t["coordinator"], key))
            version = datasets.upload(folder, "faces", progress=False, drop_invalid=True)
            print(f"ingested {version.sample_count} images through the coordinator", flush=True)
            store = S3ObjectStore(s3["UMBRA_S3_ENDPOINT"], s3["UMBRA_S3_ACCESS_KEY"], s3["UMBRA_S3_SECRET_KEY"])
            reader = DatasetReader(store, f"umbra-{tenant}", "faces", 1)
            splits: dict[int, dict[str, LabelledImages]] = {}

            def split_data(size: int) -> dict[str, LabelledImages]:
                if size not in splits:
                    train = load_split(reader, task=args.task, split="train", image_size=size)
                    splits[size] = {"train": train} | {
                        s: load_split(reader, task=args.task, split=s, image_size=size, classes=train.classes)
                        for s in ("val", "test")}
                return splits[size]

            seeds = [args.seed + i for i in range(args.seeds)]

            def repeated(recipe: recipes.Recipe, eps: float | None) -> tuple[dict, tuple]:
                """The recipe trained once per seed: mean test scores, the per-seed figures, and the first seed's
                (model, result, seconds) for the service comparison (the service trains with that seed)."""
                data = split_data(recipe.image_size)
                rows, first = [], None
                for seed in seeds:
                    model, result, seconds = fit(recipe, data["train"], epsilon=eps, seed=seed)
                    first = first or (model, result, seconds)
                    rows.append(scores(model, data["test"]) | {"val_accuracy": scores(model, data["val"])["accuracy"],
                                                               "epsilon_spent": result.epsilon, "seconds": seconds})
                    print(f"   {'DP at epsilon ' + format(eps, 'g') if eps else 'non-private'}, seed {seed}: "
                          f"{'spent %.3f (%s), ' % (result.epsilon, result.accountant) if eps else ''}test accuracy "
                          f"{rows[-1]['accuracy']:.4f} ({seconds:.0f} s)", flush=True)
                summary = {key: round(sum(r[key] for r in rows) / len(rows), 4)
                           for key in ("accuracy", "balanced_accuracy", "val_accuracy", "seconds")}
                summary |= {"accuracy_per_seed": [r["accuracy"] for r in rows], "seeds": seeds}
                if eps:
                    summary |= {"epsilon_spent": max(r["epsilon_spent"] for r in rows), "delta": DELTA,
                                "accountant": first[1].accountant, "steps": first[1].steps,
                                "noise_multiplier": round(first[1].noise_multiplier, 4)}
                return summary, first

            plain, dp_rows, runs = None, [], {}
            if args.only != "inference":
                print(f"\n== in-process ({len(seeds)} seed(s) each; accuracy is their mean)", flush=True)
                plain, _ = repeated(nonprivate, None)
            for eps, recipe in dp_recipes.items() if args.only != "inference" else ():
                row, (model, result, seconds) = repeated(recipe, eps)
                runs[eps] = (model, result, seconds, len(split_data(recipe.image_size)["train"]) * recipe.hyper.epochs
                             / seconds)
                dp_rows.append({"target_epsilon": eps} | row)

            print("\n== through the training service (the epsilon-8 recipe)", flush=True)
            channel = open_channel(t["training"], env["UMBRA_SERVICE_TOKEN"], tenant=tenant)
            stub, operations = training_service_pb2_grpc.TrainingServiceStub(channel), OperationsClient(channel)
            recipe = dp_recipes[8.0]
            trained, service_seconds = train_through_service(
                stub, operations, recipe, model="models/gender-dp8", dataset="datasets/faces", task=args.task,
                train_samples=len(split_data(recipe.image_size)["train"]), epsilon=8.0, seed=args.seed)
            n_train = len(split_data(recipe.image_size)["train"])
            service_rate = n_train * recipe.hyper.epochs / service_seconds
            inprocess_rate = runs[8.0][3] if runs else None
            evaluation = operations.result(stub.Evaluate(ts.EvaluateRequest(
                model=refs_pb2.ModelRef(model="models/gender-dp8", version=1),
                dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1, split="test")), timeout=30
            ).operation.name, ts.Evaluation, poll_seconds=0.5)
            against = f" against {inprocess_rate:.0f} in-process" if inprocess_rate else ""
            print(f"   {trained.name}: epsilon {trained.training_record.privacy_cost.epsilon:.3f}, test accuracy "
                  f"{evaluation.accuracy:.4f}; {service_rate:.0f} samples/s through the service{against} "
                  f"({service_seconds:.0f} s end to end)", flush=True)

            print("\n== inference: Triton against in-process torch, batch 64", flush=True)
            exported = stub.ExportModelVersion(ts.ExportModelVersionRequest(
                model=refs_pb2.ModelRef(model="models/gender-dp8", version=1), served_model_name="gender-dp8"),
                timeout=120)
            served = create(ModelConfig.from_json(store.get(f"umbra-{tenant}", "models/gender-dp8/v1/config.json")
                                                  .decode())).eval()
            from safetensors.torch import load

            served.load_state_dict(load(store.get(f"umbra-{tenant}", "models/gender-dp8/v1/weights.safetensors")))
            images = split_data(recipe.image_size)["test"].floats().numpy()
            rounds, seconds = (3, 2.0) if args.quick else (5, 3.0)

            def local(batch: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return served(torch.from_numpy(batch)).numpy()

            # Triton answers only the coordinator's access token (umbra.inference.access): the direct path holds it,
            # over one connection, as the coordinator's gateway does.
            direct = Gateway(triton_url, access.access_token(env["UMBRA_SERVICE_TOKEN"]))
            name = exported.served_model_name

            def remote(batch: np.ndarray) -> np.ndarray:
                return direct.predict(name, batch, what=name)

            publication = f"publications/{name.split('.', 1)[1]}"
            # What a tenant's client does: the SDK's Published, through the coordinator's Predict.
            gateway = inference.Published(open_channel(t["coordinator"], key), publication).predict
            triton_logits = remote(images)
            max_difference = float(np.abs(triton_logits - local(images)).max())
            gateway_difference = float(np.abs(gateway(images) - triton_logits).max())
            # Alternating rounds, so that every path sees the same background load (the S3 server settling after
            # the writes of training, for one); each ratio is the median of the rounds' ratios.
            torch_rates, triton_rates, gateway_rates = [], [], []
            for _ in range(rounds):
                torch_rates.append(images_per_s(local, images, 64, seconds))
                triton_rates.append(images_per_s(remote, images, 64, seconds))
                gateway_rates.append(images_per_s(gateway, images, 64, seconds))
            direct.close()
            # Withdraw it: the S3 server outlives the benchmark, and every inference server started on it later
            # would load this model too (see inference_server in benchmarks.common).
            model_service_pb2_grpc.ModelServiceStub(open_channel(t["coordinator"], key)).DeletePublication(
                model_service_pb2.DeletePublicationRequest(name=publication), timeout=60)
            ratios = sorted(t / c for t, c in zip(triton_rates, torch_rates, strict=True))
            triton_ratio = ratios[len(ratios) // 2]
            gateway_ratios = sorted(g / d for g, d in zip(gateway_rates, triton_rates, strict=True))
            gateway_ratio = gateway_ratios[len(gateway_ratios) // 2]
            torch_rate, triton_rate = float(np.median(torch_rates)), float(np.median(triton_rates))
            gateway_rate = float(np.median(gateway_rates))
            triton_accuracy = float((triton_logits.argmax(1) == split_data(recipe.image_size)["test"].labels.numpy())
                                    .mean())
            print(f"   {exported.served_model_name} at {exported.endpoint}: {triton_rate:.0f} images/s against "
                  f"{torch_rate:.0f} in-process; largest logit difference {max_difference:.2e}", flush=True)
            print(f"   {publication} through the coordinator's Predict: {gateway_rate:.0f} images/s against "
                  f"{triton_rate:.0f} straight to Triton (ratio {gateway_ratio:.3f}); largest logit difference "
                  f"{gateway_difference:.2e}", flush=True)

    inference_result = {
        "triton": {"served_model_name": exported.served_model_name, "images_per_s": round(triton_rate, 1),
                   "inprocess_images_per_s": round(torch_rate, 1), "batch": 64,
                   "round_ratios": [round(r, 4) for r in ratios],
                   "max_logit_difference": max_difference, "test_accuracy": round(triton_accuracy, 4)},
        "triton_vs_inprocess_ratio": round(triton_ratio, 4),
        "gateway": {"publication": publication, "images_per_s": round(gateway_rate, 1),
                    "direct_images_per_s": round(triton_rate, 1), "batch": 64,
                    "round_ratios": [round(r, 4) for r in gateway_ratios],
                    "max_logit_difference": gateway_difference},
        "gateway_vs_direct_ratio": round(gateway_ratio, 4),
    }
    if args.only == "inference":
        result = {"task": args.task, "data": what, "quick": args.quick, "only": args.only,
                  "service": {"model_version": trained.name, "epochs": recipe.hyper.epochs,
                              "test_accuracy": round(evaluation.accuracy, 4)},
                  **inference_result, "seconds": round(time.perf_counter() - began, 1)}
        path = write_result("training-inference", result)
        print(f"\nwrote {path} ({result['seconds']:.0f} s)")
        return 0
    dp8 = next(r for r in dp_rows if r["target_epsilon"] == 8.0)
    sizes = split_data(nonprivate.image_size)
    result = {
        "task": args.task, "data": what, "quick": args.quick, "seeds": args.seeds,
        "train_samples": len(sizes["train"]), "val_samples": len(sizes["val"]), "test_samples": len(sizes["test"]),
        "recipes": {"nonprivate": recipe_summary(nonprivate)} | {f"dp_{e:g}": recipe_summary(r)
                                                                   for e, r in dp_recipes.items()},
        "nonprivate_accuracy": plain["accuracy"], "nonprivate": plain,
        "dp": dp_rows,
        "dp8_vs_nonprivate_ratio": round(dp8["accuracy"] / plain["accuracy"], 4),
        "service": {"model_version": trained.name, "epsilon_spent": trained.training_record.privacy_cost.epsilon,
                    "test_accuracy": round(evaluation.accuracy, 4), "seconds_end_to_end": round(service_seconds, 1),
                    "samples_per_s": round(service_rate, 1), "inprocess_samples_per_s": round(inprocess_rate, 1)},
        "service_vs_inprocess_ratio": round(service_rate / inprocess_rate, 4),
        **inference_result,
        "anchor": {str(k): v for k, v in ANCHOR.items()},
        "seconds": round(time.perf_counter() - began, 1),
    }
    path = write_result("training", result)
    plot(result, OUT / "training.png")
    print(f"\nwrote {path} and {OUT / 'training.png'} ({result['seconds']:.0f} s)")
    return 0


def recipe_summary(recipe: recipes.Recipe) -> dict:
    h = recipe.hyper
    return {"architecture": recipe.architecture, "width": recipe.width, "image_size": recipe.image_size,
            "epochs": h.epochs, "batch_size": h.batch_size, "learning_rate": h.learning_rate, "schedule": h.schedule,
            "optimizer": h.optimizer, "max_grad_norm": recipe.max_grad_norm, "mirror_average": recipe.mirror_average}


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["dp"], key=lambda r: r["target_epsilon"])
    fig, ax = plt.subplots(figsize=(6, 3.8))
    ax.plot([r["epsilon_spent"] for r in rows], [r["accuracy"] for r in rows], "o-",
            label=f"Umbra DP-SGD (test, mean of {len(rows[0]['accuracy_per_seed'])} seeds)")
    for r in rows:
        ax.scatter([r["epsilon_spent"]] * len(r["accuracy_per_seed"]), r["accuracy_per_seed"], s=10, color="#1f77b4",
                   alpha=0.4)
    ax.axhline(result["nonprivate_accuracy"], color="#2ca02c", ls="--",
               label=f"Umbra non-private ({result['nonprivate_accuracy']:.3f})")
    anchor = [(float(k), v) for k, v in result["anchor"].items() if k != "nonprivate"]
    ax.plot(*zip(*sorted(anchor), strict=True), "x:", color="#888", label="anchor: untuned Opacus loop")
    ax.axhline(result["anchor"]["nonprivate"], color="#888", ls=":", lw=0.8)
    ax.set_xscale("log")
    ax.set_xticks([1, 2, 4, 8])
    ax.set_xticklabels(["1", "2", "4", "8"])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"epsilon spent (delta = {DELTA:g})")
    ax.set_ylabel("test accuracy")
    ax.set_title(f"{result['task']}: {result['data']}", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
