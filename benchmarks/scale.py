"""Scale: how time and peak memory grow with the data, at 1x, 3x and 10x, for four stages.

    python -m benchmarks.scale [--quick] [--data DIR] [--out DIR] [--faces N]

Starts what it needs (the S3 server from deploy/s3/rgw.sh, coordinator, anonymizer and training processes) and
stops it again. The faces are --data's (its images, repeated with one pixel changed per repetition when a scale
needs more than it holds: ingest refuses byte-identical duplicates), else the face sample, else synthetic faces
(umbra.dataset.synthetic). At scale s (1, 3, 10) and, to measure the fixed cost explicitly, at a tiny scale
("fixed": 8 faces, one dataset with one version), each stage runs in processes of its own:

- ingest: a fresh coordinator, and a fresh client subprocess that uploads s x BASE faces through the coordinator's
  public API (DatasetsClient.upload: check, shard, upload, CommitDatasetVersion; the commit copies the shards and
  decodes every image). Time: the upload call, measured in the client.
- anonymize: a fresh anonymizer process runs AnonymizeDataset on that version into a version the coordinator
  reserved (the protection job's anonymizing stage, on one replica; a 32 px generator with random weights, as in
  benchmarks.anonymizer_sharding: the weights do not change the work). Time: the call to its operation's result.
- dp_train_epoch: a fresh training service process runs Train with DP-SGD (the epsilon-8 recipe's
  scatternet_linear at 32 px, one epoch, a fixed batch of 64 so that the steps grow with the data) on the version's
  train split. Time: the call to its operation's result (loading the split from S3, the epoch, the model written).
- list_get: a coordinator populated with s x DATASETS datasets of VERSIONS committed versions each (setup, not
  measured) is stopped, and a fresh one on the same home walks them: ListDatasets (all pages), then for each
  dataset GetDataset, ListDatasetVersions (all pages) and GetDatasetVersion of each version. Time: the median of
  PASSES walks.

Peak RSS: the VmHWM line of /proc/<pid>/status (the kernel's high-water mark of the resident set) of the process
doing the stage's work, read just before it is stopped; each stage and scale has a fresh process, so the mark
covers its start-up and that stage's work only. For ingest that is the coordinator (the commit's checks); the
client subprocess's own peak (its VmHWM, read in the child at the end; not getrusage's ru_maxrss, which Linux
carries over from the parent across fork and exec) is reported beside it. Services do
their work in-process (no worker processes), so VmHWM covers all of it. `rss_at_start_mb` is VmHWM once the
service answers SERVING, before any work: what importing torch and the rest costs.

Writes <out>/scale.json with `time_vs_linear_at_10x` (stage -> t(10x) / (10 t(1x)); goal at most 1.2) and
`peak_rss_ratio_at_10x` (stage -> rss(10x) / rss(1x); goal at most 1.3), the raw table (`table`, `runs`), the
fixed cost measured at the tiny scale (`fixed_seconds`) and `time_vs_linear_at_10x_net` ((t(10x) - t0) /
(10 (t(1x) - t0)), t0 the tiny run's time). For dp_train_epoch the tiny run misses most of the fixed cost, the PRV
noise calibration before the first step (its sample rate is 1), so that is timed on its own at each scale's sample
rate and steps: `dp_calibration_seconds` and `dp_train_epoch_time_vs_linear_at_10x_without_calibration`. The plot,
<out>/scale.png, shows time and peak RSS against scale, per stage. `--quick`: BASE 256 faces, 10 datasets of 3
versions, 3 walks (about 4 minutes on 2 cores); the full run: BASE 1024, 25 datasets of 4 versions.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

from benchmarks import common
from benchmarks.common import create_tenant, default_data, s3_server, service_env, write_result
from benchmarks.job_replicas import Served, serve

STAGES = ("ingest", "anonymize", "dp_train_epoch", "list_get")
SCALES = (1, 3, 10)
FIXED = "fixed"  # the tiny run that measures each stage's fixed cost
SETTINGS = {
    "quick": {"faces": 256, "datasets": 10, "versions": 3, "passes": 3},
    "full": {"faces": 1024, "datasets": 25, "versions": 4, "passes": 5},
}
TINY = {"faces": 8, "datasets": 1, "versions": 1}
TARGETS = {"time_vs_linear_at_10x": 1.2, "peak_rss_ratio_at_10x": 1.3}
GENERATOR_SIZE = 32  # as in benchmarks.anonymizer_sharding
BATCH = 64  # DP-SGD's logical and physical batch, the same at every scale
DELTA = 1e-5


# -- pure figures ------------------------------------------------------------------------------------------------

def time_vs_linear(seconds: Mapping[int, float], scale: int = 10, fixed: float = 0.0) -> float:
    """t(scale) / (scale * t(1)); with `fixed` (a measured fixed cost) subtracted from both times."""
    return (seconds[scale] - fixed) / (scale * (seconds[1] - fixed))


def rss_ratio(peaks: Mapping[int, float], scale: int = 10) -> float:
    """rss(scale) / rss(1)."""
    return peaks[scale] / peaks[1]


def verdict(value: float, limit: float) -> dict:
    return {"value": round(value, 3), "target": f"<= {limit}", "met": value <= limit}


# -- the faces ---------------------------------------------------------------------------------------------------

def scaled_folder(source: Path, count: int, dest: Path) -> Path:
    """`count` labelled faces of `source` in a new folder `dest`: its images in order, byte-identical ones once,
    then again with one pixel changed per repetition (different bytes: ingest refuses duplicates)."""
    from PIL import Image

    with open(source / "labels.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    header, rows = rows[0], rows[1:]
    seen, unique = set(), []
    for row in rows:
        digest = hashlib.sha256((source / "images" / row[0]).read_bytes()).hexdigest()
        if digest not in seen:
            seen.add(digest)
            unique.append(row)
    (dest / "images").mkdir(parents=True)
    with open(dest / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(header)
        for index in range(count):
            row, repetition = unique[index % len(unique)], index // len(unique)
            name = row[0] if repetition == 0 else f"r{repetition}-{row[0]}"
            if repetition == 0:
                shutil.copyfile(source / "images" / row[0], dest / "images" / name)
            else:
                image = Image.open(source / "images" / row[0]).convert("RGB")
                r, g, b = image.getpixel((0, 0))
                image.putpixel((0, 0), ((r + repetition) % 256, g, b))
                out = io.BytesIO()
                image.save(out, format="PNG")
                (dest / "images" / Path(name).with_suffix(".png")).write_bytes(out.getvalue())
                name = str(Path(name).with_suffix(".png"))
            writer.writerow([name, *row[1:]])
    return dest


# -- the stages ----------------------------------------------------------------------------------------------------

def _upload_child() -> None:
    """In a fresh subprocess: uploads UMBRA_SCALE_FOLDER as dataset "faces" and prints the time, the version and
    this process's peak RSS as one JSON line."""
    from umbra.client.channel import open_channel
    from umbra.client.datasets import DatasetsClient

    client = DatasetsClient(open_channel(os.environ["UMBRA_SCALE_TARGET"], os.environ["UMBRA_SCALE_KEY"]))
    began = time.perf_counter()
    version = client.upload(Path(os.environ["UMBRA_SCALE_FOLDER"]), "faces", progress=False, drop_invalid=True)
    seconds = time.perf_counter() - began
    print(json.dumps({"seconds": seconds, "samples": version.sample_count, "shards": version.shard_count,
                      "splits": dict(version.split_counts), "client_peak_rss_mb": vm_hwm_mb("self")}))


def vm_hwm_mb(pid: int | str) -> float:
    """VmHWM of /proc/<pid>/status in MB. (Not getrusage's ru_maxrss in a child: Linux carries the parent's peak
    across fork and exec into it, so a child of a big parent reports the parent's peak.)"""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


def ingest(env: dict[str, str], coordinator: Served, key: str, folder: Path) -> dict:
    child_env = dict(env, UMBRA_SCALE_TARGET=coordinator.target, UMBRA_SCALE_KEY=key, UMBRA_SCALE_FOLDER=str(folder))
    done = subprocess.run([sys.executable, "-c", "from benchmarks.scale import _upload_child; _upload_child()"],
                          env=child_env, cwd=common.ROOT, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def write_generator(store, bucket: str, kept: str) -> None:
    """A 32 px generator conditioned on gender and `kept`, random weights (setup, not timed)."""
    import torch

    from umbra.classifiers.registry import ModelRegistry
    from umbra.diffusion.attributes import schema_for
    from umbra.diffusion.generator import build
    from umbra.diffusion.generator_config import GeneratorConfig
    from umbra.storage.datasets import DatasetReader

    columns: dict[str, list[str]] = {}
    for sample in DatasetReader(store, bucket, "faces", 1).samples():
        for name, value in sample.labels.items():
            columns.setdefault(name, []).append(value)
    config = GeneratorConfig(image_size=GENERATOR_SIZE, attributes=schema_for(columns, ["gender", kept]))
    torch.manual_seed(0)
    ModelRegistry(store).write(bucket, "gen", config, build(config).state_dict(),
                               {"kind": "generator", "privacy": {"dp": False},
                                "dataset": {"dataset": "datasets/public", "version": 1}})


def anonymize(env: dict[str, str], coordinator: Served, anonymizer: Served, tenant: str, key: str,
              kept: str) -> dict:
    from umbra.anonymization.intensity import DEFAULT_INTENSITY
    from umbra.anonymizer.v1 import anonymizer_service_pb2 as an
    from umbra.anonymizer.v1 import anonymizer_service_pb2_grpc
    from umbra.client.channel import open_channel
    from umbra.client.operations import OperationsClient
    from umbra.common.v1 import refs_pb2
    from umbra.coordinator.v1 import dataset_service_pb2 as cds
    from umbra.coordinator.v1 import dataset_service_pb2_grpc

    datasets = dataset_service_pb2_grpc.DatasetServiceStub(open_channel(coordinator.target, key))
    version = int(datasets.CreateDatasetVersion(cds.CreateDatasetVersionRequest(
        parent="datasets/faces", shard_count=1), timeout=30).dataset_version.name.rsplit("/", 1)[1])
    settings = an.AnonymizationSettings(generator=refs_pb2.ModelRef(model="models/gen", version=1),
                                        protected_attributes=["gender"], kept_attributes=[kept],
                                        intensity=DEFAULT_INTENSITY, seed=3)
    request = an.AnonymizeDatasetRequest(settings=settings, dataset=refs_pb2.DatasetRef(dataset="datasets/faces",
                                                                                         version=1),
                                         output_dataset="datasets/faces", output_version=version)
    channel = open_channel(anonymizer.target, env["UMBRA_SERVICE_TOKEN"], tenant=tenant)
    began = time.perf_counter()
    op = anonymizer_service_pb2_grpc.AnonymizerServiceStub(channel).AnonymizeDataset(request, timeout=60).operation
    result = OperationsClient(channel).result(op.name, an.AnonymizationResult, poll_seconds=0.5, timeout=3600)
    return {"seconds": time.perf_counter() - began, "images": result.image_count}


def dp_train_epoch(env: dict[str, str], training: Served, tenant: str, train_samples: int) -> dict:
    from umbra.classifiers import recipes
    from umbra.client.channel import open_channel
    from umbra.client.operations import OperationsClient
    from umbra.common.v1 import refs_pb2
    from umbra.services.training import convert
    from umbra.training.v1 import training_service_pb2 as ts
    from umbra.training.v1 import training_service_pb2_grpc

    recipe = recipes.for_epsilon(8.0)
    h = recipe.hyper
    request = ts.TrainRequest(
        model="models/scale-dp", dataset=refs_pb2.DatasetRef(dataset="datasets/faces", version=1, split="train"),
        task="gender", architecture=convert.architecture_to_proto(recipe.architecture), seed=0,
        hyperparameters=ts.Hyperparameters(epochs=1, batch_size=min(BATCH, train_samples),
                                           physical_batch_size=min(BATCH, train_samples),
                                           learning_rate=h.learning_rate, optimizer=h.optimizer, momentum=h.momentum,
                                           weight_decay=h.weight_decay, image_size=recipe.image_size,
                                           width=recipe.width, mirror_average=recipe.mirror_average,
                                           schedule=h.schedule),
        differential_privacy=ts.DifferentialPrivacy(target_epsilon=8.0, target_delta=DELTA,
                                                    max_grad_norm=recipe.max_grad_norm))
    channel = open_channel(training.target, env["UMBRA_SERVICE_TOKEN"], tenant=tenant)
    began = time.perf_counter()
    name = training_service_pb2_grpc.TrainingServiceStub(channel).Train(request, timeout=60).operation.name
    trained = OperationsClient(channel).result(name, ts.ModelVersion, poll_seconds=0.5, timeout=3600)
    seconds = time.perf_counter() - began
    return {"seconds": seconds, "epsilon": trained.training_record.privacy_cost.epsilon,
            "calibration_seconds": calibration_seconds(train_samples, min(BATCH, train_samples), recipe.max_grad_norm)}


def calibration_seconds(samples: int, batch: int, max_grad_norm: float) -> float:
    """How long the run's noise calibration takes (dp_sgd.calibrate_noise at the run's sample rate and steps, the
    PRV accountant's search that Train does before its first step), timed again here, in this process, after one
    warm-up call (imports): a fixed cost of the stage that the tiny run does not show (its sample rate is 1)."""
    from umbra.privacy import dp_sgd

    dp = dp_sgd.DPSettings(target_delta=DELTA, target_epsilon=8.0, max_grad_norm=max_grad_norm)
    rate, steps = dp_sgd.poisson_rate(samples, batch), -(-samples // batch)
    with warnings.catch_warnings():  # the accountants' numerical warnings: the service logs them, not the benchmark
        warnings.simplefilter("ignore")
        if not _WARM:
            dp_sgd.calibrate_noise(dp, 0.5, 2)
            _WARM.append(True)
        began = time.perf_counter()
        dp_sgd.calibrate_noise(dp, rate, steps)
        return time.perf_counter() - began


_WARM: list[bool] = []


def populate(coordinator: Served, key: str, datasets: int, versions: int, tiny: list[Path]) -> None:
    """`datasets` datasets of `versions` committed versions each (two faces per version, different per version)."""
    from umbra.client.channel import open_channel
    from umbra.client.datasets import DatasetsClient

    client = DatasetsClient(open_channel(coordinator.target, key))
    for d in range(datasets):
        for v in range(versions):
            client.upload(tiny[v], f"set-{d:05d}", progress=False)


def walk(coordinator: Served, key: str) -> dict:
    """ListDatasets (every page), then GetDataset, ListDatasetVersions (every page) and GetDatasetVersion of each
    version of each dataset: (calls, datasets, versions) and the seconds it took."""
    from umbra.client.channel import open_channel
    from umbra.coordinator.v1 import dataset_service_pb2 as ds
    from umbra.coordinator.v1 import dataset_service_pb2_grpc

    stub = dataset_service_pb2_grpc.DatasetServiceStub(open_channel(coordinator.target, key))
    began, calls, names, versions, token = time.perf_counter(), 0, [], 0, ""
    while True:
        page = stub.ListDatasets(ds.ListDatasetsRequest(page_token=token), timeout=30)
        calls, names, token = calls + 1, names + [d.name for d in page.datasets], page.next_page_token
        if not token:
            break
    for name in names:
        stub.GetDataset(ds.GetDatasetRequest(name=name), timeout=30)
        calls += 1
        while True:
            page = stub.ListDatasetVersions(ds.ListDatasetVersionsRequest(parent=name, page_token=token), timeout=30)
            calls, token = calls + 1, page.next_page_token
            for v in page.dataset_versions:
                stub.GetDatasetVersion(ds.GetDatasetVersionRequest(name=v.name), timeout=30)
                calls, versions = calls + 1, versions + 1
            if not token:
                break
    return {"seconds": time.perf_counter() - began, "calls": calls, "datasets": len(names), "versions": versions}


# -- one scale -------------------------------------------------------------------------------------------------------

def _run(service: str, env: dict[str, str], work: Callable[[Served], dict]) -> dict:
    """`work` against a fresh `service` process; what it returned, with the process's peak RSS before and after."""
    process = serve(service, env, int(env[f"UMBRA_{service.upper()}_PORT"]))
    try:
        at_start = process.read_peak()
        done = work(process)
    finally:
        process.stop()  # reads VmHWM first
    return done | {"peak_rss_mb": process.peak_rss_mb, "rss_at_start_mb": at_start, "pid": process.pid}


def one_scale(label: str, faces: Path, size: dict, s3: dict[str, str], scratch: Path, kept: str,
              tiny: list[Path]) -> dict[str, dict]:
    """Every stage at one scale, each in fresh processes."""
    from umbra.storage import keys

    home = scratch / f"scale-{label}"
    env = service_env(home, s3, ["coordinator", "anonymizer", "training"])
    stages: dict[str, dict] = {}
    # The coordinator that ingests stays up for the two stages after (the ledger, the reserved version), but its
    # VmHWM is read right after the ingest, so that figure covers the ingest alone.
    coordinator = serve("coordinator", dict(env, UMBRA_HOME=str(home / "coordinator")),
                        int(env["UMBRA_COORDINATOR_PORT"]))
    try:
        at_start = coordinator.read_peak()
        tenant, key = create_tenant(coordinator.target, env["UMBRA_ADMIN_KEY"], budget=(1e9, 0.5))
        uploaded = ingest(env, coordinator, key, faces)
        stages["ingest"] = uploaded | {"work": uploaded["samples"], "unit": "images",
                                       "peak_rss_mb": coordinator.read_peak(), "rss_at_start_mb": at_start,
                                       "pid": coordinator.pid}
        _report(label, "ingest", stages)
        from benchmarks.anonymizer_sharding import _store

        write_generator(_store(env), keys.bucket(tenant), kept)
        _attempt(label, "anonymize", stages, lambda: _run(
            "anonymizer", dict(env, UMBRA_HOME=str(home / "anonymizer")),
            lambda p: anonymize(env, coordinator, p, tenant, key, kept)), "images", lambda r: r["images"])
        _attempt(label, "dp_train_epoch", stages, lambda: _run(
            "training", dict(env, UMBRA_HOME=str(home / "training")),
            lambda p: dp_train_epoch(env, p, tenant, uploaded["splits"]["train"])), "train images",
            lambda r: uploaded["splits"]["train"])
    finally:
        coordinator.stop()

    def list_get() -> dict:
        listed = dict(env, UMBRA_HOME=str(home / "listed"))
        with_data = serve("coordinator", listed, int(env["UMBRA_COORDINATOR_PORT"]))
        try:
            _, key = create_tenant(with_data.target, env["UMBRA_ADMIN_KEY"])
            populate(with_data, key, size["datasets"], size["versions"], tiny)
        finally:
            with_data.stop()

        def walks(process: Served) -> dict:
            runs = [walk(process, key) for _ in range(size["passes"])]
            return runs[0] | {"seconds": statistics.median(r["seconds"] for r in runs),
                              "pass_seconds": [round(r["seconds"], 4) for r in runs]}

        return _run("coordinator", listed, walks)

    _attempt(label, "list_get", stages, list_get, "datasets + versions", lambda r: r["datasets"] + r["versions"])
    return stages


def _attempt(label: str, stage: str, stages: dict[str, dict], work: Callable[[], dict], unit: str,
             amount: Callable[[dict], int]) -> None:
    """stages[stage] = work() with its amount of work; a failure is recorded (and printed), and the next stage runs."""
    try:
        row = work()
    except Exception as exc:  # noqa: BLE001 - one stage failing leaves the others' figures
        traceback.print_exc()
        stages[stage] = {"error": f"{type(exc).__name__}: {exc}"}
        print(f"  [{label}] {stage}: FAILED ({stages[stage]['error'][:200]})", flush=True)
        return
    stages[stage] = row | {"work": amount(row), "unit": unit}
    _report(label, stage, stages)


def _report(label: str, stage: str, stages: dict[str, dict]) -> None:
    row = stages[stage]
    extra = f"; client peak {row['client_peak_rss_mb']} MB" if "client_peak_rss_mb" in row else ""
    print(f"  [{label}] {stage}: {_line(row)}{extra}", flush=True)


def _line(row: dict) -> str:
    return f"{row['work']} {row['unit']} in {row['seconds']:.2f} s, peak RSS {row['peak_rss_mb']} MB"


# -- the benchmark ---------------------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="1x = 256 faces, 10 datasets of 3 versions")
    parser.add_argument("--data", type=Path, help="a folder with images/ and labels.csv (default: the face sample)")
    parser.add_argument("--out", type=Path, default=common.OUT, help="where scale.json and scale.png go")
    parser.add_argument("--faces", type=int, help="faces at 1x (default 256 with --quick, else 1024)")
    args = parser.parse_args()
    plan = dict(SETTINGS["quick" if args.quick else "full"])
    if args.faces:
        plan["faces"] = args.faces
    began = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="uscale-", dir="/tmp") as scratch, s3_server() as s3:
        scratch = Path(scratch)
        source, what = default_data(args.data, scratch, count=plan["faces"] * max(SCALES))
        header = (source / "labels.csv").read_text().split("\n", 1)[0].split(",")
        kept = "race" if "race" in header else "skin_tone"
        from umbra.dataset import synthetic

        tiny = [synthetic.write_folder(scratch / f"tiny-{v}", 2, seed=1000 + v) for v in range(plan["versions"])]
        print(f"data: {what}; 1x = {plan['faces']} faces, {plan['datasets']} datasets of {plan['versions']} "
              f"versions", flush=True)
        runs: dict[str, dict[str, dict]] = {}
        for label, scale in ((FIXED, 0), *((str(s), s) for s in SCALES)):
            size = (TINY | {"passes": plan["passes"]} if scale == 0 else
                    {"faces": plan["faces"] * scale, "datasets": plan["datasets"] * scale,
                     "versions": plan["versions"], "passes": plan["passes"]})
            faces = scaled_folder(source, size["faces"], scratch / f"faces-{label}")
            print(f"scale {label}: {size}", flush=True)
            since = time.perf_counter()
            runs[label] = one_scale(label, faces, size, s3, scratch, kept, tiny)
            print(f"scale {label} took {time.perf_counter() - since:.0f} s", flush=True)
            shutil.rmtree(faces)
    result = summarize(runs, plan, what, time.perf_counter() - began, quick=args.quick)
    path = write_result("scale", result) if args.out == common.OUT else _write(args.out / "scale.json", result)
    plot(result, args.out / "scale.png")
    print(json.dumps({k: result[k] for k in ("time_vs_linear_at_10x", "peak_rss_ratio_at_10x",
                                             "time_vs_linear_at_10x_net")}, indent=1))
    print(f"wrote {path} and {args.out / 'scale.png'} ({result['seconds']:.0f} s)")
    return 1 if result["failed_stages"] else 0


def _write(path: Path, result: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(result, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def summarize(runs: dict[str, dict[str, dict]], plan: dict, what: str, seconds: float, *, quick: bool) -> dict:
    labels = (FIXED, *map(str, SCALES))
    table = []
    for stage in STAGES:
        for label in labels:
            row = runs[label].get(stage, {"error": "not run"})
            table.append({"stage": stage, "scale": label} | (
                {"error": row["error"]} if "error" in row else
                {"work": row["work"], "unit": row["unit"], "seconds": round(row["seconds"], 4),
                 "peak_rss_mb": row["peak_rss_mb"], "rss_at_start_mb": row["rss_at_start_mb"]}
                | ({"client_peak_rss_mb": row["client_peak_rss_mb"]} if "client_peak_rss_mb" in row else {})))
    done = [st for st in STAGES if all("error" not in runs[label].get(st, {"error": 1}) for label in labels)]
    times = {st: {s: runs[str(s)][st]["seconds"] for s in SCALES} for st in done}
    peaks = {st: {s: runs[str(s)][st]["peak_rss_mb"] for s in SCALES} for st in done}
    fixed = {st: runs[FIXED][st]["seconds"] for st in done}
    linear = {st: round(time_vs_linear(times[st]), 3) for st in done}
    flat = {st: round(rss_ratio(peaks[st]), 3) for st in done}
    net = {st: round(time_vs_linear(times[st], fixed=fixed[st]), 3) for st in done}
    result = {
        "benchmark": "scale", "quick": quick, "data": what, "cpus": os.cpu_count(), "scales": list(SCALES),
        "one_x": {k: plan[k] for k in ("faces", "datasets", "versions")}, "walk_passes": plan["passes"],
        "fixed_scale": TINY,
        "time_vs_linear_at_10x": linear,
        "peak_rss_ratio_at_10x": flat,
        "fixed_seconds": {st: round(v, 4) for st, v in fixed.items()},
        "time_vs_linear_at_10x_net": net,
        "failed_stages": [st for st in STAGES if st not in done],
        "targets": {f"{st}_time_vs_linear_at_most_1.2": verdict(linear[st], TARGETS["time_vs_linear_at_10x"])
                    for st in done}
        | {f"{st}_peak_rss_ratio_at_most_1.3": verdict(flat[st], TARGETS["peak_rss_ratio_at_10x"]) for st in done},
        "table": table,
        "runs": runs,
        "seconds": round(seconds, 1),
    }
    if "dp_train_epoch" in done:  # the epoch without the noise calibration before it (timed on its own)
        epoch = {s: runs[str(s)]["dp_train_epoch"]["seconds"] - runs[str(s)]["dp_train_epoch"]["calibration_seconds"]
                 for s in SCALES}
        result["dp_calibration_seconds"] = {s: round(runs[str(s)]["dp_train_epoch"]["calibration_seconds"], 3)
                                            for s in SCALES}
        result["dp_train_epoch_time_vs_linear_at_10x_without_calibration"] = round(time_vs_linear(epoch), 3)
    if "ingest" in done:
        result["ingest_client_peak_rss_ratio_at_10x"] = round(rss_ratio(
            {s: runs[str(s)]["ingest"]["client_peak_rss_mb"] for s in SCALES}), 3)
    return result


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    scales = result["scales"]
    for stage in result["time_vs_linear_at_10x"]:
        rows = {r["scale"]: r for r in result["table"] if r["stage"] == stage}
        t1 = rows["1"]["seconds"]
        left.plot(scales, [rows[str(s)]["seconds"] / t1 for s in scales], "o-",
                  label=f"{stage} ({t1:.2f} s at 1x; {result['time_vs_linear_at_10x'][stage]:.2f}x linear)")
        right.plot(scales, [rows[str(s)]["peak_rss_mb"] for s in scales], "o-",
                   label=f"{stage} ({result['peak_rss_ratio_at_10x'][stage]:.2f}x at 10x)")
    left.plot(scales, scales, "k:", lw=1, label="linear")
    left.plot(scales, [1.2 * s for s in scales], color="red", ls="--", lw=0.8, label="goal: within 1.2x of linear")
    left.set(xlabel="scale (x the 1x data)", ylabel="time / time at 1x", title="Wall time", xticks=scales)
    right.set(xlabel="scale (x the 1x data)", ylabel="peak RSS (VmHWM), MB", title="Peak RSS of the working process",
              xticks=scales, ylim=(0, None))
    left.legend(fontsize=7)
    right.legend(fontsize=7)
    one = result["one_x"]
    fig.suptitle(f"1x = {one['faces']} faces ({result['data']}); list/get: {one['datasets']} datasets x "
                 f"{one['versions']} versions", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
