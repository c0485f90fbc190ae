"""Validates and normalizes one image for a dataset: decode it fully, make it RGB at the dataset's size.

`normalize` returns the source bytes unchanged when they already are an 8-bit RGB PNG or JPEG at the
target size (so an ingest → shards → export round trip is byte-identical); anything else is converted to
RGB (alpha flattened onto white), center-cropped to a square, resized with LANCZOS and encoded as PNG,
deterministically. Every reason to reject an image is an `ImageProblem` with a short `reason`.
"""

from __future__ import annotations

import hashlib
import io
import re
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

MIN_SIZE, MAX_SIZE = 8, 1024
MODES = ("resize", "require")
# Decompression-bomb guard: refuse to decode images with more pixels than this (checked on the header,
# before any pixel is decoded); it is below PIL's own Image.MAX_IMAGE_PIXELS.
MAX_PIXELS = 64_000_000
PASSTHROUGH = {"PNG": "image/png", "JPEG": "image/jpeg"}
WHITE = (255, 255, 255)


@dataclass(frozen=True)
class SizePolicy:
    """`resize`: center-crop to a square, then resize to size x size; `require`: reject any other size."""

    size: int = 64
    mode: str = "resize"

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not MIN_SIZE <= self.size <= MAX_SIZE:
            raise ValueError(f"image size {self.size!r}: use an integer from {MIN_SIZE} to {MAX_SIZE}")
        if self.mode not in MODES:
            raise ValueError(f"size mode {self.mode!r}: use one of {', '.join(MODES)}")


class ImageProblem(ValueError):
    """An image that cannot be used; `reason` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class NormalizedImage:
    data: bytes
    media_type: str
    width: int
    height: int
    sha256: str


def _said(exc: BaseException) -> str:
    """What PIL said, without the object addresses it puts in some messages."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    return text or type(exc).__name__


def _open(data: bytes) -> tuple[Image.Image, str | None, bool]:
    """Decodes fully; returns the image, its format and whether it is stored as plain 8-bit RGB."""
    if not data:
        raise ImageProblem("empty file (0 bytes)")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            probe = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise ImageProblem(f"not an image (PNG/JPEG/...): {_said(exc)}") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageProblem(f"image too large (more than {MAX_PIXELS} pixels)") from None
        except Exception as exc:  # PIL raises many types on malformed headers
            raise ImageProblem(f"corrupt image data: {_said(exc)}") from None
        width, height = probe.size
        if width * height > MAX_PIXELS:
            raise ImageProblem(f"image too large: {width}x{height} pixels (limit {MAX_PIXELS})")
        if width <= 0 or height <= 0:
            raise ImageProblem(f"corrupt image data: size {width}x{height}")
        image_format = probe.format
        plain_rgb = probe.mode == "RGB" and all(tile.args in ("RGB", ("RGB", "")) for tile in probe.tile)
        try:
            probe.verify()  # checksums (PNG CRCs); leaves the image unusable
            image = Image.open(io.BytesIO(data))
            image.load()  # decodes every pixel: truncated data fails here
        except Exception as exc:
            raise ImageProblem(f"corrupt image data: {_said(exc)}") from None
    return image, image_format, plain_rgb


def _to_rgb(image: Image.Image) -> Image.Image:
    """RGB, with alpha (or a transparent palette/colour key) flattened onto white and 16-bit scaled to 8."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        values = np.asarray(image).astype(np.float64)
        if mode == "F" and values.size and np.nanmax(values) <= 1.0:
            values = values * 255.0
        elif mode != "F" and (mode.startswith("I;16") or (values.size and values.max() > 255)):
            values = values / 257.0
        gray = np.clip(np.nan_to_num(np.rint(values)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, "L").convert("RGB")
    if "A" in mode or "a" in mode or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*WHITE, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "RGB":
        return image
    try:
        return image.convert("RGB")
    except (ValueError, OSError) as exc:
        raise ImageProblem(f"unsupported colour mode {mode}: {_said(exc)}") from None


def _fit(image: Image.Image, policy: SizePolicy) -> Image.Image:
    size = policy.size
    width, height = image.size
    if policy.mode == "require":
        if (width, height) != (size, size):
            raise ImageProblem(f"wrong size {width}x{height} (need {size}x{size})")
        return image
    side = min(width, height)
    if (width, height) != (side, side):
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if side != size:
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    return image


def _orientation(image: Image.Image) -> int:
    try:
        return int(image.getexif().get(0x0112, 1) or 1)
    except Exception:  # a broken EXIF block is not a reason to reject the pixels
        return 1


def normalize(data: bytes, policy: SizePolicy = SizePolicy()) -> NormalizedImage:
    """Checks and normalizes one encoded image; raises ImageProblem with the reason when it is unusable."""
    image, image_format, plain_rgb = _open(data)
    size = policy.size
    orientation = _orientation(image)
    if (
        image_format in PASSTHROUGH
        and plain_rgb
        and image.size == (size, size)
        and orientation == 1
        and getattr(image, "n_frames", 1) == 1
        and "transparency" not in image.info
    ):
        return NormalizedImage(data, PASSTHROUGH[image_format], size, size, hashlib.sha256(data).hexdigest())
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    image = _fit(_to_rgb(image), policy)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False, compress_level=6)
    out = buffer.getvalue()
    return NormalizedImage(out, "image/png", size, size, hashlib.sha256(out).hexdigest())


def decode_rgb(data: bytes) -> np.ndarray:
    """Decodes an image into an H x W x 3 uint8 array (alpha flattened onto white); ImageProblem if unusable."""
    image, _, _ = _open(data)
    if _orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    return np.asarray(_to_rgb(image), dtype=np.uint8).copy()
