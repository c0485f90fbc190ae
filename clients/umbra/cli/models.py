"""`umbra models …`: publish model versions to the inference server through the coordinator's ModelService (tenant
API key), list and withdraw the publications, and classify images with a published model (the images are read,
resized to the size the published model takes, and sent in batches): through the coordinator's
ModelService.Predict with the tenant's key, or with `--endpoint`, straight to an inference server that is not
locked (tritonclient over gRPC).

    umbra models publish models/gender/versions/3 --id gender     # waits until Triton serves acme.gender
    umbra models publications
    umbra models predict --model gender face1.png faces/ --classes male,female
    umbra models withdraw gender
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tritonclient.utils import InferenceServerException

from umbra.cli.text import echo, printable
from umbra.client import inference

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def image_files(paths: list[str]) -> list[Path]:
    """The image files named, and those inside named folders (sorted); SystemExit naming a missing path."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files += sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.is_file():
            files.append(path)
        else:
            raise SystemExit(printable(f"umbra models predict: {path} is neither an image file nor a folder"))
    if not files:
        raise SystemExit(printable("umbra models predict: no image files found in " + ", ".join(paths)))
    return files


def load_images(files: list[Path], size: int) -> np.ndarray:
    """(N, 3, size, size) float32 in [0, 1], resized as the training service does (bilinear)."""
    arrays = []
    for path in files:
        try:
            with Image.open(path) as image:
                image = image.convert("RGB")
                if image.size != (size, size):
                    image = image.resize((size, size), Image.BILINEAR)
                arrays.append(np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0)
        except (OSError, UnidentifiedImageError) as e:
            raise SystemExit(printable(f"umbra models predict: {path} is not a readable image: {e}")) from None
    return np.stack(arrays)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def _logits(args, files: list[Path]) -> np.ndarray:
    """The published model's logits for the images: through the coordinator, or with --endpoint straight from
    Triton (where --model is the served name <tenant>.<id>)."""
    if args.endpoint:
        size = inference.input_size(args.endpoint, args.model)
        return inference.predict(args.endpoint, args.model, load_images(files, size))
    from umbra.client import Client

    with Client() as client:
        name = args.model.split(".", 1)[-1]  # "acme.gender" (the served name) or "gender" or "publications/gender"
        model = inference.Published(client.channel, name, timeout=client.timeout + 30)
        if "." in args.model and model.publication.served_model_name != args.model:
            raise SystemExit(printable(f"umbra models predict: {args.model} is not one of your publications (yours "
                                       f"with id {name} is served as {model.publication.served_model_name})"))
        if not model.image_size:
            raise SystemExit(printable(f"umbra models predict: {model.name}'s model version cannot be read (its "
                                       "image size)"))
        return model.predict(load_images(files, model.image_size))


def predict(args) -> int:
    from umbra.client.errors import UmbraRpcError

    files = image_files(args.images)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        probabilities = softmax(_logits(args, files))
    except InferenceServerException as e:
        echo(f"umbra models predict: the inference server at {args.endpoint} answered: {e.message()}",
             file=sys.stderr)
        return 1
    except UmbraRpcError as exc:
        echo(f"umbra models predict: {exc}", file=sys.stderr)
        return 1
    if classes is not None and len(classes) != probabilities.shape[1]:
        echo(f"umbra models predict: --classes names {len(classes)} classes; {args.model} has "
             f"{probabilities.shape[1]}", file=sys.stderr)
        return 2
    names = classes or [str(i) for i in range(probabilities.shape[1])]
    rows = [{"image": str(path), "class": names[int(p.argmax())], "probability": round(float(p.max()), 4),
             "probabilities": {n: round(float(v), 4) for n, v in zip(names, p, strict=True)}}
            for path, p in zip(files, probabilities, strict=True)]
    if args.json:
        print(json.dumps(rows, indent=2))  # ensure_ascii: control characters come out escaped
    else:
        width = max(len(printable(r["image"])) for r in rows)
        for r in rows:
            echo(f"{printable(r['image']):{width}}  {r['class']}  ({r['probability']:.3f})")
    return 0


def _model_version(text: str):
    """A ModelRef from 'models/{model}/versions/{n}'; SystemExit otherwise."""
    from umbra.common.v1 import refs_pb2

    parts = text.split("/")
    if len(parts) != 4 or parts[0] != "models" or parts[2] != "versions" or not parts[3].isdigit():
        raise SystemExit(printable(f"umbra models publish: {text!r} is not a model version "
                                   "(models/<model>/versions/<n>)"))
    return refs_pb2.ModelRef(model=f"models/{parts[1]}", version=int(parts[3]))


def _line(p) -> str:
    from umbra.coordinator.v1 import model_service_pb2 as ms

    state = ms.Publication.State.Name(p.state).removeprefix("STATE_").lower()
    return f"{p.name:40} {p.served_model_name:40} {p.model.model}/versions/{p.model.version}  {state}  {p.endpoint}"


def publications(args) -> int:
    """publish, publications and withdraw: the coordinator's ModelService."""
    from umbra.client import Client
    from umbra.client.errors import OperationFailed, UmbraRpcError
    from umbra.client.operations import call
    from umbra.coordinator.v1 import model_service_pb2 as ms

    with Client() as client:
        try:
            if args.action == "publish":
                request = ms.PublishModelRequest(publication_id=args.id, model=_model_version(args.model_version))
                op = call(client.models.PublishModel, request, timeout=client.timeout).operation
                echo(f"{op.name}: publishing {args.model_version} as publications/{args.id}", file=sys.stderr)
                published = client.operations.result(op.name, ms.Publication, timeout=args.timeout, progress=True,
                                                     poll_seconds=1)
                echo(f"{published.name}: {published.served_model_name} served at {published.endpoint}")
            elif args.action == "publications":
                token = ""
                while True:
                    page = call(client.models.ListPublications, ms.ListPublicationsRequest(page_token=token),
                                timeout=client.timeout)
                    for p in page.publications:
                        echo(_line(p))
                    token = page.next_page_token
                    if not token:
                        break
            else:
                name = args.id if args.id.startswith("publications/") else f"publications/{args.id}"
                call(client.models.DeletePublication, ms.DeletePublicationRequest(name=name),
                     timeout=client.timeout + 60)
                echo(f"{name} withdrawn: the inference server no longer serves it")
        except (UmbraRpcError, OperationFailed, TimeoutError) as exc:
            echo(f"umbra models {args.action}: {exc}", file=sys.stderr)
            return 1
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="publish models to the inference server, list and withdraw them, and "
                                      "classify images with them")
    m_sub = m.add_subparsers(dest="action", required=True)
    pub = m_sub.add_parser("publish", help="publish a model version to the inference server (waits until it is "
                                           "served)")
    pub.add_argument("model_version", help="models/<model>/versions/<n>")
    pub.add_argument("--id", required=True, help="the publication's id (3-63 lower-case letters, digits and '-'); "
                                                 "Triton serves it as <tenant>.<id>")
    pub.add_argument("--timeout", type=float, default=None, help="seconds to wait (default: until done)")
    pub.set_defaults(func=publications)
    m_sub.add_parser("publications", help="list your publications and their state").set_defaults(func=publications)
    w = m_sub.add_parser("withdraw", help="withdraw a publication: the inference server stops serving it")
    w.add_argument("id", help="the publication's id (or publications/<id>)")
    w.set_defaults(func=publications)
    p = m_sub.add_parser("predict", help="classify images with a published model (through the coordinator, with "
                                         "your API key)")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--model", required=True, help="the publication: its id, publications/<id>, or the served name "
                                                  "<tenant>.<id> that `umbra models publish` printed")
    p.add_argument("--endpoint", default=None,
                   help="call this inference server (host:port) directly instead of the coordinator, with --model "
                        "the served name <tenant>.<id>; only an inference server started without "
                        "UMBRA_SERVICE_TOKEN answers")
    p.add_argument("--classes", help="class names in output order, comma-separated (as in the model's record)")
    p.add_argument("--json", action="store_true", help="print JSON with every class probability")
    p.set_defaults(func=predict)
