"""`umbra models predict`: classify images with a model published on the inference server (Triton, over gRPC
with tritonclient). The images are read, resized to the size the served model takes, and sent in batches.

    umbra models predict --model acme.gender face1.png faces/ --classes male,female
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tritonclient.utils import InferenceServerException

from umbra.client import inference

DEFAULT_ENDPOINT = "127.0.0.1:8001"
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
            raise SystemExit(f"umbra models predict: {path} is neither an image file nor a folder")
    if not files:
        raise SystemExit("umbra models predict: no image files found in " + ", ".join(paths))
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
            raise SystemExit(f"umbra models predict: {path} is not a readable image: {e}") from None
    return np.stack(arrays)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


def predict(args) -> int:
    files = image_files(args.images)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    try:
        size = inference.input_size(args.endpoint, args.model)
        images = load_images(files, size)
        probabilities = softmax(inference.predict(args.endpoint, args.model, images))
    except InferenceServerException as e:
        print(f"umbra models predict: the inference server at {args.endpoint} answered: {e.message()}",
              file=sys.stderr)
        return 1
    if classes is not None and len(classes) != probabilities.shape[1]:
        print(f"umbra models predict: --classes names {len(classes)} classes; {args.model} has "
              f"{probabilities.shape[1]}", file=sys.stderr)
        return 2
    names = classes or [str(i) for i in range(probabilities.shape[1])]
    rows = [{"image": str(path), "class": names[int(p.argmax())], "probability": round(float(p.max()), 4),
             "probabilities": {n: round(float(v), 4) for n, v in zip(names, p, strict=True)}}
            for path, p in zip(files, probabilities, strict=True)]
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max(len(r["image"]) for r in rows)
        for r in rows:
            print(f"{r['image']:{width}}  {r['class']}  ({r['probability']:.3f})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("models", help="use models published on the inference server")
    m_sub = m.add_subparsers(dest="action", required=True)
    p = m_sub.add_parser("predict", help="classify images with a published model (Triton, gRPC)")
    p.add_argument("images", nargs="+", help="image files or folders of images")
    p.add_argument("--model", required=True, help="the served model name, as ExportModelVersion returned it "
                                                  "(<tenant>.<name>)")
    p.add_argument("--endpoint", default=os.environ.get("UMBRA_INFERENCE_URL") or DEFAULT_ENDPOINT,
                   help=f"the inference server's gRPC address (default: $UMBRA_INFERENCE_URL or {DEFAULT_ENDPOINT})")
    p.add_argument("--classes", help="class names in output order, comma-separated (as in the model's record)")
    p.add_argument("--json", action="store_true", help="print JSON with every class probability")
    p.set_defaults(func=predict)
