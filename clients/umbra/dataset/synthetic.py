"""Deterministic synthetic faces with known attributes, for tests and demos that need labelled faces
without downloads.

Each face is drawn with PIL at 4x its size and downsampled (anti-aliasing). The attributes are sampled
independently per face from `numpy.random.default_rng([seed, index])`, so the same (count, size, seed)
gives byte-identical PNGs and a longer run starts with the faces of a shorter one. Visual cues:

- `gender` "0" (male, as in UTKFace) / "1" (female): jaw width, hair length (flipped for 10% of faces),
  eyebrow thickness, lip colour;
- `skin_tone` "1" (lightest) .. "5" (darkest);
- `glasses` "0"/"1": dark frames around the eyes;
- `smile` "0"/"1": open smile with teeth, or closed lips;
- `hair_color` "black", "brown", "blonde", "red" (greyed with age);
- `age` 1..90 (a float in `attributes`): children have rounder faces and larger eyes; from about 35 on,
  a growing share of grey hair and more wrinkle lines.

Nuisances vary too: position, scale, roll and yaw, lighting direction and strength, background colour,
eye and clothes colour, pixel noise.

`write_folder` lays faces out like the utkface64-dev folder (`images/<key>.png` plus `labels.csv` with
`file` first), so the same "csv" ingest path reads both. There is no `race` column: a synthetic face has a
skin tone, not a race, and deriving one from the other would bake a stereotype into the test data.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

MIN_SIZE, MAX_SIZE = 16, 256
SUPERSAMPLE = 4
COLUMNS = ("age", "gender", "skin_tone", "glasses", "smile", "hair_color")
SKIN_TONES = {
    "1": (244, 213, 190),
    "2": (226, 180, 146),
    "3": (196, 140, 100),
    "4": (144, 96, 64),
    "5": (92, 60, 42),
}
HAIR_COLORS = {
    "black": (28, 24, 22),
    "brown": (98, 62, 36),
    "blonde": (224, 190, 120),
    "red": (170, 70, 34),
}
EYE_COLORS = ((70, 45, 25), (40, 90, 140), (70, 110, 60), (110, 80, 40))
GREY = (205, 205, 205)


@dataclass(frozen=True)
class SyntheticFace:
    key: str
    png: bytes
    attributes: dict[str, str | float]


def _mix(a: tuple[int, ...], b: tuple[int, ...], t: float) -> tuple[int, int, int]:
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b, strict=False))[:3]


def _shade(color: tuple[int, ...], factor: float) -> tuple[int, int, int]:
    return tuple(int(max(0, min(255, round(c * factor)))) for c in color[:3])


def _sample(rng: np.random.Generator) -> dict[str, str | float]:
    return {
        "age": float(rng.integers(1, 91)),
        "gender": str(int(rng.integers(2))),
        "skin_tone": str(int(rng.integers(1, 6))),
        "glasses": str(int(rng.integers(2))),
        "smile": str(int(rng.integers(2))),
        "hair_color": list(HAIR_COLORS)[int(rng.integers(len(HAIR_COLORS)))],
    }


def _draw(attributes: dict[str, str | float], rng: np.random.Generator, size: int) -> bytes:
    side = size * SUPERSAMPLE
    age = float(attributes["age"])
    male = attributes["gender"] == "0"
    child = float(np.clip((16.0 - age) / 14.0, 0.0, 1.0))
    old = float(np.clip((age - 35.0) / 45.0, 0.0, 1.0))
    skin = SKIN_TONES[str(attributes["skin_tone"])]
    grey = min(0.92, old**1.1 * 0.95 + rng.uniform(-0.05, 0.05)) if age > 30 else 0.0
    hair = _mix(HAIR_COLORS[str(attributes["hair_color"])], GREY, max(0.0, grey))
    long_hair = (not male) != (rng.random() < 0.1)

    # nuisances
    cx, cy = 0.5 + rng.uniform(-0.04, 0.04), 0.5 + rng.uniform(-0.03, 0.05)
    scale = rng.uniform(0.9, 1.06)
    roll = float(np.clip(rng.normal(0.0, 6.0), -14.0, 14.0))
    yaw = rng.uniform(-0.12, 0.12)
    fw = 0.245 * scale * (1.0 + 0.07 * child) * (1.04 if male else 0.97)
    fh = 0.31 * scale * (1.0 - 0.07 * child)

    def box(x0: float, y0: float, x1: float, y1: float) -> tuple[float, float, float, float]:
        return (x0 * side, y0 * side, x1 * side, y1 * side)

    def px(value: float) -> int:
        return max(1, int(round(value * side)))

    layer = Image.new("RGBA", (side, side), (*hair, 0))
    draw = ImageDraw.Draw(layer)
    clothes = tuple(int(c) for c in rng.integers(30, 220, size=3))
    draw.ellipse(box(cx - 0.45, cy + fh * 1.05, cx + 0.45, cy + fh * 1.05 + 0.6), fill=clothes)
    draw.rectangle(box(cx - fw * 0.42, cy + fh * 0.4, cx + fw * 0.42, cy + fh * 1.2), fill=_shade(skin, 0.86))
    if long_hair:
        draw.rounded_rectangle(box(cx - fw * 1.24, cy - fh * 1.13, cx + fw * 1.24, cy + fh * 1.3), radius=px(fw),
                               fill=hair)
    else:
        draw.ellipse(box(cx - fw * 1.07, cy - fh * 1.13, cx + fw * 1.07, cy + fh * 0.3), fill=hair)
        for s in (-1, 1):
            ex = cx + s * fw * 0.98
            draw.ellipse(box(ex - fw * 0.12, cy - fh * 0.2, ex + fw * 0.12, cy + fh * 0.12), fill=_shade(skin, 0.93))

    draw.ellipse(box(cx - fw, cy - fh, cx + fw, cy + fh), fill=skin)
    if male:  # a wide, square jaw
        draw.rounded_rectangle(box(cx - fw * 0.94, cy - fh * 0.1, cx + fw * 0.94, cy + fh * 0.95),
                               radius=px(fw * 0.4), fill=skin)
    recede = 0.16 * old if male and age > 50 else 0.0
    draw.chord(box(cx - fw * 1.05, cy - fh * 1.1, cx + fw * 1.05, cy + fh * (0.02 - recede)), 180, 360, fill=hair)
    if long_hair:  # a side fringe
        draw.pieslice(box(cx - fw * 1.1, cy - fh * 1.1, cx + fw * 0.6, cy - fh * 0.05), 180, 300, fill=hair)

    shift = yaw * fw
    eye_y = cy - fh * 0.05 + child * fh * 0.08
    eye_w = fw * 0.17 * (1.0 + 0.35 * child)
    brow = _shade(hair, 0.8) if sum(hair) < 450 else _shade(hair, 0.6)
    brow_width = px(0.035 if male else 0.013) * scale
    iris = EYE_COLORS[int(rng.integers(len(EYE_COLORS)))]
    wrinkle = _mix(skin, (40, 25, 20), 0.25 + 0.25 * old)
    for s in (-1, 1):
        ex = cx + s * fw * 0.4 + shift
        by = eye_y - fh * 0.2
        draw.arc(box(ex - eye_w * 1.5, by - fh * 0.03, ex + eye_w * 1.5, by + fh * 0.2), 200, 340, fill=brow,
                 width=int(brow_width))
        draw.ellipse(box(ex - eye_w, eye_y - eye_w * 0.55, ex + eye_w, eye_y + eye_w * 0.55), fill=(245, 245, 240))
        look = shift * 0.3
        r = eye_w * 0.5
        draw.ellipse(box(ex + look - r, eye_y - r, ex + look + r, eye_y + r), fill=iris)
        r = eye_w * 0.24
        draw.ellipse(box(ex + look - r, eye_y - r, ex + look + r, eye_y + r), fill=(10, 10, 10))
        if age > 45:  # crow's feet
            corner = ex + s * eye_w * 1.15
            for dy in (-0.35, 0.0, 0.35)[: 1 + int(old * 2.9)]:
                draw.line(box(corner, eye_y + dy * eye_w * 0.5, corner + s * eye_w * 0.5, eye_y + dy * eye_w),
                          fill=wrinkle, width=px(0.006))
    if age > 35:  # forehead lines
        for i in range(1 + int(old * 2.9)):
            y = cy - fh * (0.3 + 0.075 * i)
            draw.arc(box(cx - fw * 0.45 + shift, y, cx + fw * 0.45 + shift, y + fh * 0.12), 200, 340, fill=wrinkle,
                     width=px(0.007))

    nose_x, nose_y = cx + shift * 1.3, cy + fh * 0.28
    draw.arc(box(nose_x - fw * 0.14, nose_y - fh * 0.06, nose_x + fw * 0.14, nose_y + fh * 0.06), 20, 160,
             fill=_shade(skin, 0.68), width=px(0.008))
    mouth_x, mouth_y, mouth_w = cx + shift * 1.1, cy + fh * 0.56, fw * 0.36
    lips = (175, 60, 70) if not male else _mix(skin, (120, 50, 50), 0.45)
    if age > 50:  # smile lines, "( )" around the mouth
        fold = box(mouth_x - mouth_w * 1.35, nose_y, mouth_x + mouth_w * 1.35, mouth_y + fh * 0.16)
        draw.arc(fold, 150, 210, fill=wrinkle, width=px(0.006))
        draw.arc(fold, -30, 30, fill=wrinkle, width=px(0.006))
    if attributes["smile"] == "1":
        draw.chord(box(mouth_x - mouth_w, mouth_y - mouth_w * 0.5, mouth_x + mouth_w, mouth_y + mouth_w * 0.6), 0, 180,
                   fill=(95, 25, 35), outline=lips, width=px(0.01))
        teeth = box(mouth_x - mouth_w * 0.8, mouth_y - mouth_w * 0.35, mouth_x + mouth_w * 0.8, mouth_y + mouth_w * 0.3)
        draw.chord(teeth, 0, 180, fill=(248, 248, 240))
    else:
        draw.ellipse(box(mouth_x - mouth_w * 0.8, mouth_y - mouth_w * 0.13, mouth_x + mouth_w * 0.8,
                         mouth_y + mouth_w * 0.15), fill=lips)
        draw.line(box(mouth_x - mouth_w * 0.8, mouth_y, mouth_x + mouth_w * 0.8, mouth_y), fill=_shade(lips, 0.55),
                  width=px(0.005))

    if attributes["glasses"] == "1":
        frame = ((20, 20, 20), (60, 35, 20), (120, 120, 130))[int(rng.integers(3))]
        thick = px(0.012)
        for s in (-1, 1):
            ex = cx + s * fw * 0.4 + shift
            draw.rounded_rectangle(box(ex - eye_w * 1.65, eye_y - eye_w * 1.15, ex + eye_w * 1.65, eye_y + eye_w * 1.1),
                                   radius=px(eye_w * 0.6), outline=frame, width=thick)
            draw.line(box(ex + s * eye_w * 1.65, eye_y - eye_w * 0.6, cx + s * fw * 0.98, eye_y - eye_w * 0.3),
                      fill=frame, width=thick)
        draw.line(box(cx - fw * 0.4 + shift + eye_w * 1.65, eye_y - eye_w * 0.4, cx + fw * 0.4 + shift - eye_w * 1.65,
                      eye_y - eye_w * 0.4), fill=frame, width=thick)

    # NEAREST is 40x faster than BICUBIC here, and the 4x downsampling below smooths its jaggies
    layer = layer.rotate(roll, resample=Image.Resampling.NEAREST, center=(cx * side, cy * side))

    background = np.empty((side, side, 3), dtype=np.float32)
    base = rng.uniform(70, 230, size=3)
    ramp = np.linspace(-1.0, 1.0, side, dtype=np.float32)[:, None, None] * rng.uniform(-25, 25, size=3)
    background[:] = np.clip(base + ramp, 0, 255)
    canvas = Image.fromarray(background.astype(np.uint8), "RGB").convert("RGBA")
    canvas.alpha_composite(layer)
    small = canvas.convert("RGB").reduce(SUPERSAMPLE)

    pixels = np.asarray(small, dtype=np.float32)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    grid = np.linspace(-1.0, 1.0, size, dtype=np.float32)
    light = 1.0 + rng.uniform(0.0, 0.22) * (grid[None, :] * math.cos(angle) + grid[:, None] * math.sin(angle))
    pixels = pixels * (light[:, :, None] * rng.uniform(0.85, 1.1)) + rng.normal(0.0, 2.5, size=pixels.shape)
    out = Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    out.save(buffer, format="PNG", optimize=False, compress_level=6)
    return buffer.getvalue()


def generate(count: int, *, size: int = 64, seed: int = 0) -> Iterator[SyntheticFace]:
    """Yields `count` faces `synth-000000`, `synth-000001`, ...; the same arguments give the same bytes."""
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise ValueError(f"count {count!r}: use a non-negative integer")
    if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"size {size!r}: use an integer from {MIN_SIZE} to {MAX_SIZE}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed {seed!r}: use a non-negative integer")
    for index in range(count):
        rng = np.random.default_rng([seed, index])
        attributes = _sample(rng)
        yield SyntheticFace(f"synth-{index:06d}", _draw(attributes, rng, size), attributes)


def csv_value(value: str | float) -> str:
    """How an attribute is written in labels.csv: whole numbers without a trailing '.0'."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def write_folder(dest: Path, count: int, *, size: int = 64, seed: int = 0) -> Path:
    """Writes `images/<key>.png` and `labels.csv` (`file,age,gender,skin_tone,glasses,smile,hair_color`)
    into `dest`, which must be missing or empty; returns `dest`."""
    dest = Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise FileExistsError(f"{dest}: not an empty folder; synthetic faces go into a new or empty folder")
    images = dest / "images"
    images.mkdir(parents=True, exist_ok=True)
    with open(dest / "labels.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["file", *COLUMNS])
        for face in generate(count, size=size, seed=seed):
            name = f"{face.key}.png"
            (images / name).write_bytes(face.png)
            writer.writerow([name, *(csv_value(face.attributes[c]) for c in COLUMNS)])
    return dest
