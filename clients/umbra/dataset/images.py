"""Validates and normalizes one image for a dataset: decode it fully, make it RGB at the dataset's size, and
keep nothing but the pixels.

`normalize` keeps the source's encoded pixels when it already is an 8-bit RGB PNG or JPEG at the target size,
minus everything a decoder does not need (`strip`): PNG ancillary chunks (text, EXIF, ICC profile, pHYs, ...),
JPEG APPn and COM segments (EXIF, XMP, JFIF, ICC profile, Adobe, comments) and any bytes after the image's
end. The pixels decode identically (checked: an image whose pixels would change is converted instead) and
stripping is idempotent, so an ingest → shards → export → ingest round trip is byte-identical. Anything else
is converted to RGB (alpha flattened onto white), center-cropped to a square, resized with LANCZOS and encoded
as a PNG holding only its critical chunks, deterministically.

`check_stored` is the server's check of an image it stores: exactly what `normalize` gives, at the version's
size. Every reason to reject an image is an `ImageProblem` with a short `reason`.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
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

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_KEEP = frozenset({b"IHDR", b"PLTE", b"IDAT", b"IEND"})  # the critical chunks: all a decoder needs
# JPEG markers a decoder needs besides SOI, SOS (with its entropy-coded data) and EOI: SOF0-15 (0xC8 is
# reserved), DHT (0xC4), DAC (0xCC), DQT, DNL, DRI. Everything else goes: APP0-15, COM, and the rest.
JPEG_KEEP = frozenset(range(0xC0, 0xD0)) - {0xC8} | {0xDB, 0xDC, 0xDD}
EOI, SOS, COM = 0xD9, 0xDA, 0xFE
JPEG_APPS = {b"JFIF": "JFIF", b"Exif": "EXIF", b"http://ns.adobe.com/xap": "XMP", b"ICC_PROFILE": "ICC profile",
             b"Adobe": "Adobe", b"Photoshop": "Photoshop", b"MPF": "MPF"}
TRAILING = "bytes after the image end"


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


@dataclass(frozen=True)
class Stripped:
    """An encoded image without what a decoder does not need; `removed` says what went, each as a reason
    (empty when nothing did, then `data` is the input)."""

    data: bytes
    removed: tuple[str, ...]


def _said(exc: BaseException) -> str:
    """What PIL said, without the object addresses it puts in some messages."""
    text = re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(exc)).strip()
    return text or type(exc).__name__


def _header(data: bytes, size: int | None = None) -> Image.Image:
    """Opens an image without decoding a pixel: refuses empty files, non-images and decompression bombs
    (and, when `size` is given, any other size than size x size)."""
    if not data:
        raise ImageProblem("empty file (0 bytes)")
    with warnings.catch_warnings():
        # PIL warns above its own pixel limit and raises above twice that; MAX_PIXELS, checked below, is lower.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            probe = Image.open(io.BytesIO(data))
        except UnidentifiedImageError as exc:
            raise ImageProblem(f"not an image (PNG/JPEG/...): {_said(exc)}") from None
        except Image.DecompressionBombError:
            raise ImageProblem(f"image too large (more than {MAX_PIXELS} pixels)") from None
        except Exception as exc:  # PIL raises many types on malformed headers
            raise ImageProblem(f"corrupt image data: {_said(exc)}") from None
    width, height = probe.size
    if size is not None and (width, height) != (size, size):
        raise ImageProblem(f"is {width}x{height}, the version's images are {size}x{size}")
    if width * height > MAX_PIXELS:
        raise ImageProblem(f"image too large: {width}x{height} pixels (limit {MAX_PIXELS})")
    if width <= 0 or height <= 0:
        raise ImageProblem(f"corrupt image data: size {width}x{height}")
    return probe


def _plain_rgb(probe: Image.Image) -> bool:
    """Whether an opened (not yet decoded) image is stored as plain 8-bit RGB (or YCbCr, for JPEG)."""
    return probe.mode == "RGB" and all(tile.args in ("RGB", ("RGB", "")) for tile in probe.tile)


def _open(data: bytes) -> tuple[Image.Image, str | None, bool]:
    """Decodes fully; returns the image, its format and whether it is stored as plain 8-bit RGB."""
    probe = _header(data)
    image_format, plain_rgb = probe.format, _plain_rgb(probe)
    try:
        probe.verify()  # checksums (PNG CRCs); leaves the image unusable
        image = Image.open(io.BytesIO(data))
        image.load()  # decodes every pixel: truncated data fails here
    except Exception as exc:
        raise ImageProblem(f"corrupt image data: {_said(exc)}") from None
    return image, image_format, plain_rgb


# stripping


def _strip_png(data: bytes) -> Stripped:
    """The signature and the critical chunks (IHDR, PLTE, IDAT, IEND), in their order; nothing after IEND."""
    if not data.startswith(PNG_SIGNATURE):
        raise ImageProblem("corrupt image data: no PNG signature")
    kept, removed = [PNG_SIGNATURE], []
    pos, kind = len(PNG_SIGNATURE), b""
    while kind != b"IEND":
        if pos + 12 > len(data):
            raise ImageProblem("corrupt image data: the PNG ends before its IEND chunk")
        length, kind = struct.unpack_from(">I4s", data, pos)
        end = pos + 12 + length  # length, type, body, CRC
        if end > len(data):
            raise ImageProblem("corrupt image data: the PNG ends inside a chunk")
        if kind in PNG_KEEP:
            kept.append(data[pos:end])
        else:
            removed.append(f"carries metadata (PNG {kind.decode('ascii', 'replace')} chunk)")
        pos = end
    if pos < len(data):
        removed.append(TRAILING)
    return Stripped(b"".join(kept) if removed else data, tuple(removed))


def _jpeg_scan_end(data: bytes, pos: int) -> int:
    """Where the entropy-coded data that starts at `pos` ends: at the first marker other than a restart
    marker (0xFF followed by 0x00 is a stuffed data byte)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            raise ImageProblem("corrupt image data: the JPEG ends inside a scan")
        if data[pos + 1] == 0x00 or 0xD0 <= data[pos + 1] <= 0xD7:
            pos += 2
        else:
            return pos


def _jpeg_segment_name(marker: int, body: bytes) -> str:
    if marker == COM:
        return "JPEG comment"
    if 0xE0 <= marker <= 0xEF:
        what = next((name for prefix, name in JPEG_APPS.items() if body.startswith(prefix)), None)
        return f"JPEG APP{marker - 0xE0} segment" + (f", {what}" if what else "")
    return f"JPEG marker 0x{marker:02X}"


def _strip_jpeg(data: bytes) -> Stripped:
    """SOI, the segments decoding needs (JPEG_KEEP), each SOS with its entropy-coded data, and EOI; no APPn,
    no COM, no fill bytes between segments, nothing after EOI."""
    if not data.startswith(b"\xff\xd8"):
        raise ImageProblem("corrupt image data: no JPEG start marker")
    kept, removed = [b"\xff\xd8"], []
    pos = 2
    while True:
        if pos + 1 >= len(data) or data[pos] != 0xFF:
            raise ImageProblem(f"corrupt image data: no JPEG marker at byte {pos}")
        if data[pos + 1] == 0xFF:  # fill bytes before a marker
            while pos + 1 < len(data) and data[pos + 1] == 0xFF:
                pos += 1
            removed.append("padding between JPEG segments")
            continue
        marker = data[pos + 1]
        if marker == EOI:
            kept.append(b"\xff\xd9")
            pos += 2
            break
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM and restart markers have no length
            removed.append(f"stray JPEG marker 0x{marker:02X}")
            pos += 2
            continue
        if pos + 4 > len(data):
            raise ImageProblem("corrupt image data: the JPEG ends inside a segment")
        end = pos + 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if end > len(data) or end < pos + 4:
            raise ImageProblem("corrupt image data: a JPEG segment runs past the end")
        if marker in JPEG_KEEP or marker == SOS:
            kept.append(data[pos:end])
        else:
            removed.append(f"carries metadata ({_jpeg_segment_name(marker, data[pos + 4 : end])})")
        pos = end
        if marker == SOS:
            scan_end = _jpeg_scan_end(data, pos)
            kept.append(data[pos:scan_end])
            pos = scan_end
    if pos < len(data):
        removed.append(TRAILING)
    return Stripped(b"".join(kept) if removed else data, tuple(removed))


def strip(data: bytes) -> Stripped:
    """A PNG or JPEG without metadata or trailing bytes; the pixels are untouched (see the module docstring).
    Idempotent: strip(strip(x).data).data == strip(x).data. ImageProblem when the file cannot be taken apart."""
    if data.startswith(PNG_SIGNATURE):
        return _strip_png(data)
    if data.startswith(b"\xff\xd8"):
        return _strip_jpeg(data)
    raise ImageProblem("not a PNG or JPEG file")


def _stripped_same_pixels(data: bytes, image: Image.Image) -> bytes | None:
    """`data` stripped, if it still decodes to exactly `image`'s pixels; None otherwise (for example a JPEG
    whose Adobe segment said its components are RGB, not YCbCr) or when it cannot be taken apart."""
    try:
        stripped = strip(data).data
    except ImageProblem:
        return None
    if stripped is data:
        return data
    try:
        again = Image.open(io.BytesIO(stripped))
        again.load()
    except Exception:
        return None
    return stripped if again.mode == image.mode and again.tobytes() == image.tobytes() else None


# converting


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
    """Checks and normalizes one encoded image; raises ImageProblem with the reason when it is unusable.
    The result never carries metadata or trailing bytes (`check_stored` accepts it)."""
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
        kept = _stripped_same_pixels(data, image)
        if kept is not None:
            return NormalizedImage(kept, PASSTHROUGH[image_format], size, size, hashlib.sha256(kept).hexdigest())
    if orientation != 1:
        image = ImageOps.exif_transpose(image)
    image = _fit(_to_rgb(image), policy)
    # A fresh image with the pixels only: PIL's PNG encoder writes what image.info holds (an ICC profile as
    # iCCP, a transparency as tRNS), and this one holds nothing, so only IHDR, IDAT and IEND are written.
    pixels = Image.frombytes("RGB", image.size, image.tobytes())
    buffer = io.BytesIO()
    pixels.save(buffer, format="PNG", optimize=False, compress_level=6)
    out = buffer.getvalue()
    return NormalizedImage(out, "image/png", size, size, hashlib.sha256(out).hexdigest())


def check_stored(data: bytes, *, size: int, media_type: str) -> None:
    """The server's check of one image it stores: raises ImageProblem(reason) unless `data` is a single-frame,
    8-bit RGB image of exactly size x size, of the declared media_type ("image/png" or "image/jpeg"), that
    decodes fully and carries no metadata or trailing bytes (stripping it would change nothing).

    The header is checked first (the decompression-bomb guard, the format, the size): an image of another
    size is refused before any pixel is decoded."""
    if media_type not in PASSTHROUGH.values():
        raise ImageProblem(f"media type {media_type!r}: use {' or '.join(PASSTHROUGH.values())}")
    probe = _header(data, size)
    if PASSTHROUGH.get(probe.format) != media_type:
        raise ImageProblem(f"declared {media_type} but is {probe.format or 'an unknown format'}")
    if not _plain_rgb(probe):
        args = probe.tile[0].args if probe.tile else probe.mode  # the raw mode: "RGB;16B", ("CMYK;I", "")
        raise ImageProblem(f"not 8-bit RGB (stored as {args if isinstance(args, str) else args[0]})")
    if getattr(probe, "n_frames", 1) != 1:
        raise ImageProblem(f"has {probe.n_frames} frames, not 1")
    if "transparency" in probe.info:
        raise ImageProblem("has a transparent colour")
    _open(data)  # decodes every pixel
    stripped = strip(data)
    if stripped.removed:
        raise ImageProblem(stripped.removed[0])


def decode_rgb(data: bytes) -> np.ndarray:
    """Decodes an image into an H x W x 3 uint8 array (alpha flattened onto white); ImageProblem if unusable."""
    image, _, _ = _open(data)
    if _orientation(image) != 1:
        image = ImageOps.exif_transpose(image)
    return np.asarray(_to_rgb(image), dtype=np.uint8).copy()
