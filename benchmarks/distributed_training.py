"""Distributed training: what two processes (torch.distributed over gloo, Opacus's distributed DP-SGD) gain over
one on this machine, for DP classifier training on 64x64 faces, and what two machines would give on paper.

    python -m benchmarks.distributed_training [--quick] [--data DIR] [--task gender]

In-process, no services: the faces (2,000 synthetic 64x64 ones; --data a folder of images/ and labels.csv) are
trained for two epochs with DP-SGD (a given noise multiplier, so no calibration) by umbra.classifiers.loop.train,
on one process with all of the machine's torch threads, then on two processes with half of them each (1 and 1 on
2 cores), for each network: the GroupNorm CNN at 64 px (compute in every layer), and the DP recipe's ScatterNet +
linear head at 32 px (its fixed scattering features computed once in the worker, before the processes start, and
timed apart). Writes out/bench/distributed_training.json with, per network and process count: the seconds of the
second epoch (`epoch_seconds`: the steady state), of the whole run from the call (`total_seconds`: the ScatterNet's
stem, spawning, imports and the rendezvous included), the optimizer steps, epsilon (equal for both counts) and test
accuracy; the speed-up of two processes over one; and `two_machines` (the epoch on two machines, on paper, from the
measured per-step compute and a ring all-reduce of the gradients per step at 1 and 10 Gbit/s).
--quick: 500 faces, the CNN only.
"""

from __future__ import annotations

import argparse
import csv
import platform
import tempfile
import time
from pathlib import Path

import torch

from benchmarks.common import write_result
from umbra.classifiers import distributed, loop
from umbra.classifiers.architectures import create
from umbra.classifiers.data import LabelledImages, decode
from umbra.classifiers.model_config import ModelConfig
from umbra.privacy.dp_sgd import DPSettings

SIGMA, DELTA, CLIP = 1.0, 1e-5, 1.0
NETWORKS = {  # name: (architecture, image size, width, hyperparameters)
    "groupnorm_cnn_64px": ("groupnorm_cnn", 64, 16, loop.Hyperparameters(
        epochs=2, batch_size=256, physical_batch_size=64, learning_rate=2e-3)),
    "scatternet_linear_32px": ("scatternet_linear", 32, 32, loop.Hyperparameters(
        epochs=2, batch_size=512, physical_batch_size=512, learning_rate=4.0, optimizer="sgd", momentum=0.9)),
}
LATENCY_S = 50e-6  # one message between two machines in a data centre


def load_folder(folder: Path, task: str, size: int) -> LabelledImages:
    with open(folder / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get(task, "") != ""]
    classes = sorted({r[task] for r in rows})
    images = torch.from_numpy(__import__("numpy").stack(
        [decode((folder / "images" / r["file"]).read_bytes(), size) for r in rows]))
    labels = torch.tensor([classes.index(r[task]) for r in rows])
    return LabelledImages(images, labels, classes, [r["file"] for r in rows])


def split(data: LabelledImages) -> tuple[LabelledImages, LabelledImages]:
    test = [i % 5 == 0 for i in range(len(data))]
    return data.take([not t for t in test]), data.take(test)


def resized(data: LabelledImages, size: int) -> LabelledImages:
    if data.images.shape[-1] == size:
        return data
    images = torch.nn.functional.interpolate(data.images.float(), size=(size, size), mode="bilinear",
                                             antialias=True).round().clamp(0, 255).to(torch.uint8)
    return LabelledImages(images, data.labels, data.classes, data.keys)


def run(name: str, train: LabelledImages, test: LabelledImages, processes: int, cores: int) -> dict:
    architecture, size, width, hyper = NETWORKS[name]
    train, test = resized(train, size), resized(test, size)
    torch.set_num_threads(cores)  # the worker's: the one process's, the stem's; each of N ranks gets cores // N
    threads = cores if processes == 1 else distributed.threads_per_process(processes)
    torch.manual_seed(0)
    model = create(ModelConfig(architecture, len(train.classes), size, classes=train.classes, width=width))
    dp = DPSettings(target_delta=DELTA, noise_multiplier=SIGMA, max_grad_norm=CLIP, accountant="rdp")
    marks: list[float] = []
    stem = getattr(model, "fixed_stem", None)
    started = time.perf_counter()
    if stem is not None:
        loop.stem_outputs(stem, train.images[:256], mirrored=False)  # warm up, then time the stem alone
        t = time.perf_counter()
        loop.stem_outputs(stem, train.images, mirrored=False)
        loop.stem_outputs(stem, train.images, mirrored=True)
        stem_seconds = time.perf_counter() - t
        started = time.perf_counter()
    result = loop.train(model=model, data=train, hyper=hyper, dp=dp, seed=0, processes=processes,
                        on_epoch=lambda report, checkpoint: marks.append(time.perf_counter()))
    total = time.perf_counter() - started
    model = model._module if hasattr(model, "_module") else model
    accuracy = float((loop.predict(model, test) == test.labels).float().mean())
    out = {"network": name, "processes": processes, "threads_per_process": threads,
           "epoch_seconds": round(marks[1] - marks[0], 3), "first_epoch_seconds": round(marks[0] - started, 3),
           "total_seconds": round(total, 3), "steps": result.steps, "epsilon": result.epsilon,
           "test_accuracy": round(accuracy, 4), "train_samples": len(train),
           "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad),
           "parameter_tensors": sum(1 for p in model.parameters() if p.requires_grad)}
    if stem is not None:
        out["stem_seconds_once"] = round(stem_seconds, 3)
    print(f"{name}: {processes} process(es) x {threads} thread(s): epoch {out['epoch_seconds']:.2f} s, "
          f"whole run {total:.2f} s, epsilon {result.epsilon:.4f}, accuracy {accuracy:.3f}", flush=True)
    return out


def two_machines(one: dict, steps_per_epoch: int) -> dict:
    """The epoch on two machines of this one's cores, on paper: half the per-sample compute each, plus a ring
    all-reduce of the fp32 gradients per step (each machine sends and receives 2(W-1)/W of them, in one all-reduce
    a step, umbra.privacy.dp_sgd: 2(W-1) latencies)."""
    size = 4 * one["parameters"]
    per_step = {}
    for gbit in (1, 10):
        transfer = 2 * (2 - 1) / 2 * size / (gbit * 1e9 / 8)
        latency = 2 * (2 - 1) * LATENCY_S
        per_step[f"{gbit}gbit"] = transfer + latency
    return {"gradient_bytes": size, **{
        f"allreduce_seconds_per_step_{k}": round(v, 6) for k, v in per_step.items()}, **{
        f"epoch_seconds_{k}": round(one["epoch_seconds"] / 2 + steps_per_epoch * v, 3) for k, v in per_step.items()},
        **{f"speedup_{k}": round(one["epoch_seconds"] / (one["epoch_seconds"] / 2 + steps_per_epoch * v), 2)
           for k, v in per_step.items()}}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 faces, the CNN only")
    parser.add_argument("--data", type=Path, help="a folder with images/ and labels.csv (default: synthetic faces)")
    parser.add_argument("--task", default="gender")
    args = parser.parse_args(argv)
    count = 500 if args.quick else 2000
    cores = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as scratch:
        if args.data is None:
            from umbra.dataset import synthetic

            folder, described = synthetic.write_folder(Path(scratch) / "faces", count, size=64, seed=0), \
                f"{count} synthetic 64x64 faces"
        else:
            folder, described = args.data, str(args.data)
        data = load_folder(folder, args.task, 64)
    train, test = split(data)
    results, summary = [], {}
    for name in (["groupnorm_cnn_64px"] if args.quick else list(NETWORKS)):
        one = run(name, train, test, 1, cores)
        two = run(name, train, test, 2, cores)
        results += [one, two]
        steps_per_epoch = one["steps"] // NETWORKS[name][3].epochs
        summary[name] = {"epoch_speedup_two_processes": round(one["epoch_seconds"] / two["epoch_seconds"], 3),
                         "total_speedup_two_processes": round(one["total_seconds"] / two["total_seconds"], 3),
                         "same_epsilon": one["epsilon"] == two["epsilon"],
                         "two_machines": two_machines(one, steps_per_epoch)}
        print(f"{name}: two processes {summary[name]['epoch_speedup_two_processes']:.2f}x an epoch, "
              f"{summary[name]['total_speedup_two_processes']:.2f}x the whole run", flush=True)
    path = write_result("distributed_training", {
        "data": described, "task": args.task, "quick": args.quick, "cores": cores, "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(), "noise_multiplier": SIGMA, "delta": DELTA,
        "runs": results, "summary": summary})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
