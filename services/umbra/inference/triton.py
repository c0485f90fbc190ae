"""Serve trained classifiers from a real Triton Inference Server, started in-process through PyTriton.

    models = [load_served_model("tiny", "models/tiny")]
    with InferenceServer(models, workspace_root="/tmp/umbra-triton") as server:
        logits = predict(server.grpc_url, "tiny", images)  # umbra.client.inference

A served model is a folder holding `config.json` (ModelConfig.to_json) and `weights.safetensors` (a state
dict). Each model takes input "images" (float32, (3, H, W) per sample, values in [0, 1]) and returns output
"logits" (float32, (num_classes,)), with dynamic batching up to 64 samples. The torch models run in this
process; Triton talks to them through PyTriton's proxy (a python-backend stub per model).

Command line: `python -m umbra.inference.triton --model-dir DIR [--grpc-port P]` serves every model folder
under DIR (the folder name is the model name) until SIGTERM or SIGINT. With `--store` instead, it serves the
model versions published in object storage (umbra.inference.publications), loads new ones as they are
published and unloads withdrawn ones, without a restart (Triton's explicit model control, through PyTriton's
bind after start). `--tenant ID` (repeatable) limits it to those tenants' publications, so that tenants can be
spread over several inference servers, and a benchmark's server serves its own model, not every publication an
earlier run left in a shared store.

Access: with UMBRA_SERVICE_TOKEN in its environment, the server restricts every Triton protocol but health
(inference, metadata, model config, the model repository, ...) to the access token derived from it
(umbra.inference.access): only the coordinator, whose ModelService.Predict checks the tenant's key first, gets an
answer; anyone else's call is refused by Triton itself. Without it the server is open to whoever reaches its ports,
and says so in its log (a single-user machine, the demo).

The python-backend stub links against libpython from the loader's default path. When this interpreter is
not the system one (pyenv), the stub would load the system libpython with this interpreter's stdlib and the
models fail to load; `InferenceServer.start()` therefore puts this interpreter's LIBDIR first on
LD_LIBRARY_PATH while PyTriton spawns the server (PyTriton copies os.environ at that moment).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import sys
import sysconfig
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import tritonclient.grpc as grpcclient
from pytriton.client.auth import create_auth_headers
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, Tensor
from pytriton.model_config import ModelConfig as TritonModelConfig
from pytriton.proxy.data import TensorStore
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig
from safetensors.torch import load_file
from torch import nn

from umbra.classifiers.architectures import create
from umbra.classifiers.model_config import ModelConfig
from umbra.classifiers.registry import ModelRegistry
from umbra.client.inference import INPUT_NAME, MAX_BATCH_SIZE, OUTPUT_NAME
from umbra.inference import access
from umbra.storage import keys

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "weights.safetensors"
MAX_QUEUE_DELAY_US = 1000  # how long Triton may hold a request to batch it with others
_MODEL_NAME = re.compile(r"[A-Za-z0-9._-]+")  # what PyTriton accepts
_UNIX_SOCKET_PATH_MAX = 107  # PyTriton puts its sockets in the workspace: "<workspace>/<model>_0_0-server.sock"


@dataclass(frozen=True)
class ServedModel:
    """A model to serve: its Triton name, its config and its weights (a state dict)."""

    name: str
    config: ModelConfig
    weights: dict[str, torch.Tensor]


def load_served_model(name: str, folder: str | Path) -> ServedModel:
    """The model saved in `folder` (config.json and weights.safetensors), to be served as `name`."""
    folder = Path(folder)
    for file_name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / file_name).is_file():
            raise FileNotFoundError(
                f"model {name!r}: {folder / file_name} is missing (a model folder holds {CONFIG_FILE} and "
                f"{WEIGHTS_FILE})")
    try:
        config = ModelConfig.from_json((folder / CONFIG_FILE).read_text())
    except KeyError as e:
        raise ValueError(f"model {name!r}: {folder / CONFIG_FILE} is not a model config: it lacks {e}") from e
    except (ValueError, TypeError) as e:
        raise ValueError(f"model {name!r}: {folder / CONFIG_FILE} is not a model config: {e}") from e
    try:
        weights = load_file(folder / WEIGHTS_FILE)
    except Exception as e:  # safetensors raises its own error types for a corrupt file
        raise ValueError(f"model {name!r}: {folder / WEIGHTS_FILE} cannot be read: {e}") from e
    return ServedModel(name, config, weights)


def load_model_dir(model_dir: str | Path) -> list[ServedModel]:
    """Every model folder under `model_dir`, named after its folder, in name order."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"model directory {model_dir} does not exist")
    folders = sorted(p for p in model_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise FileNotFoundError(f"model directory {model_dir} holds no model folder (one folder per model)")
    return [load_served_model(folder.name, folder) for folder in folders]


def _check_name(name: str) -> None:
    if not _MODEL_NAME.fullmatch(name):
        raise ValueError(f"model name {name!r} may only hold letters, digits, dots, underscores and dashes")


def build_model(served: ServedModel) -> nn.Module:
    """The torch model of `served`, with its weights, in eval mode."""
    try:
        model = create(served.config)
    except ValueError as e:
        raise ValueError(f"model {served.name!r}: {e}") from e
    try:
        model.load_state_dict(served.weights, strict=True)
    except RuntimeError as e:
        raise ValueError(f"model {served.name!r}: the weights do not fit its config: {e}") from e
    return model.eval()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on `host` (another process may still take it before it is used)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Triton binds: TIME_WAIT leftovers are fine
        try:
            s.bind((host, port))
        except OSError:
            return True
        return False


def _infer_function(model: nn.Module) -> Callable[..., dict[str, np.ndarray]]:
    @batch
    def infer(images: np.ndarray) -> dict[str, np.ndarray]:
        # @batch concatenates the requests into a new, writable array: from_numpy shares it without a copy.
        with torch.inference_mode():
            logits = model(torch.from_numpy(images))
        return {OUTPUT_NAME: logits.float().numpy()}

    return infer


@contextlib.contextmanager
def _this_libpython_first() -> Iterator[None]:
    """LD_LIBRARY_PATH starting with this interpreter's LIBDIR, for the processes started inside (see above)."""
    libdir = sysconfig.get_config_var("LIBDIR")
    library = sysconfig.get_config_var("LDLIBRARY") or ""
    if not libdir or not library.endswith(".so") or not (Path(libdir) / library).exists():
        yield  # a statically linked interpreter: nothing to point at
        return
    before = os.environ.get("LD_LIBRARY_PATH")
    os.environ["LD_LIBRARY_PATH"] = f"{libdir}:{before}" if before else libdir
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("LD_LIBRARY_PATH", None)
        else:
            os.environ["LD_LIBRARY_PATH"] = before


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no server log)"


class InferenceServer:
    """A Triton Inference Server serving `models` on 127.0.0.1 (or `host`) until stop().

    Ports left at 0 are picked free when the server is created. PyTriton's working copy (server binaries, model
    store, sockets) goes to a fresh folder under `workspace_root`, removed on stop; the Triton log goes beside
    it (`log_path`). Torch runs with `torch_threads` threads (default: the CPUs this process may use). With
    `access_token`, every protocol but health answers only calls carrying it (access.RESTRICTED); without, only
    PyTriton's defaults are restricted (to a token of its own).
    """

    def __init__(
        self,
        models: Sequence[ServedModel],
        workspace_root: str | Path,
        *,
        host: str = "127.0.0.1",
        grpc_port: int = 0,
        http_port: int = 0,
        metrics_port: int = 0,
        max_queue_delay_us: int = MAX_QUEUE_DELAY_US,
        torch_threads: int | None = None,
        access_token: str | None = None,
    ):
        names = [m.name for m in models]
        for name in names:
            _check_name(name)
        if len(set(names)) != len(names):
            raise ValueError(f"model names must be unique, got {names}")
        self.configs = {m.name: m.config for m in models}
        self.models = {m.name: build_model(m) for m in models}  # fails here, before any server starts
        self.host = host
        self.grpc_port = grpc_port or free_port(host)
        self.http_port = http_port or free_port(host)
        self.metrics_port = metrics_port or free_port(host)
        self.max_queue_delay_us = max_queue_delay_us
        self.torch_threads = torch_threads or len(os.sched_getaffinity(0))
        self._security = (TritonSecurityConfig(access_token=access_token, restricted_endpoints=list(access.RESTRICTED))
                          if access_token else None)
        root = Path(workspace_root).resolve()
        self.workspace = root / f"triton-{os.getpid()}-{secrets.token_hex(3)}"
        self.log_path = root / f"{self.workspace.name}.log"
        for name in names:
            self._check_socket_path(name)
        self._triton: Triton | None = None
        self._lock = threading.Lock()

    def _check_socket_path(self, name: str) -> None:
        if len(str(self.workspace)) + len(name) + len("/_0_0-server.sock") > _UNIX_SOCKET_PATH_MAX:
            raise ValueError(
                f"workspace root {self.workspace.parent} is too long for model {name!r}: PyTriton's sockets in it "
                f"would pass the {_UNIX_SOCKET_PATH_MAX}-character limit of a unix socket path; use a shorter folder")

    @property
    def grpc_url(self) -> str:
        """Where clients connect: "127.0.0.1:<port>" (the loopback address also when bound to 0.0.0.0)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"{host}:{self.grpc_port}"

    @property
    def running(self) -> bool:
        return self._triton is not None and self._triton.is_alive()

    def start(self) -> None:
        """Start Triton and load every model; returns once they all are ready (RuntimeError if not)."""
        if self._triton is not None:
            raise RuntimeError("the inference server is already started")
        started = time.monotonic()
        ports = {"grpc": self.grpc_port, "http": self.http_port, "metrics": self.metrics_port}
        busy = [f"{kind} port {port}" for kind, port in ports.items() if _port_in_use(self.host, port)]
        if busy:  # Triton would log the bind error and PyTriton would wait two minutes for it to be ready
            raise RuntimeError(f"cannot start Triton on {self.host}: {', '.join(busy)} already in use")
        torch.set_num_threads(self.torch_threads)
        self.workspace.parent.mkdir(parents=True, exist_ok=True)
        config = TritonConfig(
            grpc_address=self.host, grpc_port=self.grpc_port,
            http_address=self.host, http_port=self.http_port,
            metrics_address=self.host, metrics_port=self.metrics_port,
            log_file=self.log_path, exit_timeout_secs=5)
        triton = Triton(config=config, workspace=self.workspace, security_config=self._security)
        for name, model in self.models.items():
            self._bind(triton, name, model, self.configs[name])
        self._triton = triton
        try:
            with _this_libpython_first():
                triton.run()
        except Exception as e:
            self.stop()
            raise RuntimeError(f"Triton did not start: {e}\nlast lines of {self.log_path}:\n{_tail(self.log_path)}") \
                from e
        logger.info("Triton serving %s at %s (ready in %.1f s)", ", ".join(self.models), self.grpc_url,
                    time.monotonic() - started)

    def _bind(self, triton: Triton, name: str, model: nn.Module, config: ModelConfig) -> None:
        size = config.image_size
        triton.bind(
            model_name=name,
            infer_func=_infer_function(model),
            inputs=[Tensor(name=INPUT_NAME, dtype=np.float32, shape=(3, size, size))],
            outputs=[Tensor(name=OUTPUT_NAME, dtype=np.float32, shape=(config.num_classes,))],
            config=TritonModelConfig(
                max_batch_size=MAX_BATCH_SIZE,
                batcher=DynamicBatcher(max_queue_delay_microseconds=self.max_queue_delay_us)),
            strict=True)

    def add(self, served: ServedModel) -> None:
        """Load one more model into the running server; returns once Triton reports it ready."""
        _check_name(served.name)
        self._check_socket_path(served.name)
        with self._lock:
            if self._triton is None:
                raise RuntimeError("the inference server is not started")
            if served.name in self.models:
                raise ValueError(f"model {served.name!r} is already served")
            model = build_model(served)
            with _this_libpython_first():
                self._bind(self._triton, served.name, model, served.config)
            self.models[served.name] = model
            self.configs[served.name] = served.config
        logger.info("now serving %s", served.name)

    def remove(self, name: str) -> None:
        """Stop serving one model: Triton unloads it and its proxy stops. PyTriton 0.7 has no public way to
        unbind a model, so this does what its ModelManager.clean does for every model, for one: the proxy's
        observers and handlers first (else the stub's exit would read as the runtime dying and stop the server),
        then Triton's unload (model control takes PyTriton's access token), then the model leaves the manager's
        registry (whose models must all be alive for the server to count as running). The same name can be
        added again afterwards."""
        with self._lock:
            if self._triton is None:
                raise RuntimeError("the inference server is not started")
            if name not in self.models:
                raise ValueError(f"model {name!r} is not served")
            manager = self._triton._model_manager
            key, bound = next((k, m) for k, m in manager._models.items() if m.model_name == name)
            tensor_store = getattr(bound._serializer_deserializer, "_tensor_store", None)
            try:
                bound.clean()
                # PyTriton keeps one TensorStore per data socket (<workspace>/<model>-data.sock) for the process's
                # life; a model loaded again under this name gets a new socket server with a new key, so the
                # closed one must not be handed out again.
                for address, instance in list(TensorStore._instances.items()):
                    if instance is tensor_store:
                        del TensorStore._instances[address]
                client = grpcclient.InferenceServerClient(self.grpc_url)
                try:
                    client.unload_model(name, headers=create_auth_headers(self._triton.get_access_token(), "grpc"),
                                        client_timeout=60.0)
                finally:
                    client.close()
            finally:  # its proxy is gone either way: a model left in the registry would read as a dead server
                del manager._models[key]
                del self.models[name], self.configs[name]
        logger.info("no longer serving %s", name)

    def stop(self) -> None:
        """Stop Triton (in-flight requests get a few seconds) and remove the workspace; safe to call twice."""
        triton, self._triton = self._triton, None
        if triton is not None:
            triton.stop()
            logger.info("Triton at %s stopped", self.grpc_url)

    def __enter__(self) -> InferenceServer:
        self.start()
        return self

    def __exit__(self, *_) -> None:
        self.stop()


def published_weights(store, publication) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(config, state dict) of a publication's model version, read from its tenant's registry."""
    registry = ModelRegistry(store)
    bucket = keys.bucket(publication.tenant)
    stored = registry.get(bucket, publication.model, publication.version)
    return stored.config, registry.weights(bucket, publication.model, publication.version)


def sync_publications(server: InferenceServer, store, tried: dict[str, str],
                      tenants: Collection[str] | None = None) -> None:
    """Makes `server` serve what is published in `store` (only `tenants`' publications when given): loads every
    publication it does not serve yet and unloads those withdrawn (or replaced by another entry under the same
    name). `tried` maps a Triton name to the entry (etag) last tried, so an entry that failed to load is logged and
    recorded once, not on every poll."""
    from umbra.inference import publications

    current = {p.triton_name: (p, etag) for p, etag in publications.list_all(store)  # all read before any change
               if tenants is None or p.tenant in tenants}
    for name in [n for n in tried if current.get(n, (None, None))[1] != tried[n]]:
        del tried[name]
        if name in server.models:
            try:
                server.remove(name)
            except Exception as e:  # noqa: BLE001 - keep serving the others
                logger.error("cannot stop serving %s: %s", name, e)
    for name, (publication, etag) in current.items():
        if name in server.models or tried.get(name) == etag:
            continue
        tried[name] = etag
        try:
            config, weights = published_weights(store, publication)
            server.add(ServedModel(name, config, weights))
        except Exception as e:  # noqa: BLE001 - one bad publication must not stop the others being served
            logger.error("cannot serve %s (tenant %s, models/%s/versions/%d): %s", name, publication.tenant,
                         publication.model, publication.version, e)
            try:
                publications.record_failure(store, publication, str(e))
            except Exception as write_error:  # noqa: BLE001 - the log above says it all the same
                logger.warning("cannot record that %s failed to load: %s", name, write_error)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m umbra.inference.triton", description=__doc__.split("\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model-dir", type=Path, help="one folder per model, named as served")
    source.add_argument("--store", action="store_true",
                        help="serve the models published in object storage (UMBRA_STORE, UMBRA_S3_* as for the "
                             "services), picking up new publications as they appear")
    parser.add_argument("--tenant", action="append", dest="tenants", metavar="ID",
                        help="with --store: serve only this tenant's publications (repeatable; default: every "
                             "tenant's)")
    parser.add_argument("--poll-seconds", type=float, default=1.0, help="with --store: how often to look for new "
                                                                        "publications (default 1)")
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--http-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--metrics-port", type=int, default=0, help="default: a free port")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 in a container)")
    parser.add_argument("--workspace", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "umbra-triton",
                        help="PyTriton's working copy goes to a new folder in here")
    args = parser.parse_args(argv)
    if args.tenants and not args.store:
        parser.error("--tenant needs --store")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service_token = os.environ.get("UMBRA_SERVICE_TOKEN", "")
    if service_token:
        logger.info("Triton's protocols but health answer only the coordinator (the access token derived from "
                    "UMBRA_SERVICE_TOKEN)")
    else:
        logger.warning("UMBRA_SERVICE_TOKEN is not set: Triton answers anyone who reaches its ports, with any "
                       "tenant's model; set it (the coordinator's) so that only the coordinator's Predict does")
    store = None
    try:
        if args.store:
            from umbra.client import layout
            from umbra.runtime.config import StoreConfig
            from umbra.storage.factory import open_store

            store = open_store(StoreConfig.from_env(os.environ, layout.home()))
        models = load_model_dir(args.model_dir) if args.model_dir else []
        server = InferenceServer(models, args.workspace, host=args.host,
                                 grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
                                 access_token=access.access_token(service_token) if service_token else None)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    try:
        server.start()
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        what = ", ".join(server.models) if store is None else "the publications in object storage" + (
            f" of {', '.join(args.tenants)}" if args.tenants else "")
        print(f"serving {what} at {server.grpc_url}", flush=True)
        tried: dict[str, str] = {}
        while True:
            if store is not None:
                try:
                    sync_publications(server, store, tried, set(args.tenants) if args.tenants else None)
                except Exception as e:  # noqa: BLE001 - storage down: keep serving what is loaded, retry
                    logger.warning("cannot read the publications: %s", e)
            if stopping.wait(args.poll_seconds if store is not None else 1.0):
                break
            if not server.running:
                print("error: Triton stopped on its own; see " + str(server.log_path), file=sys.stderr)
                return 1
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
