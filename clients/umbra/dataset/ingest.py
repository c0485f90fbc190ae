"""Reads the folder layouts people have into planned samples, writes them into shards, exports them back.

Layouts (`scan(layout=...)`):

- "csv": a labels CSV (default `labels.csv`) next to an `images/` folder, or next to the images themselves.
  The column named `file`, `filename` or `image` (else the first column) names the image, relative to
  `images/` (or to the folder); every other column is a label.
- "imagefolder": one sub-folder per class (`cats/001.png`); one label column, `class`.
- "celeba": `img_align_celeba/` plus `list_attr_celeba.txt` (line 1 the count, line 2 the 40 attribute
  names, then `000001.jpg  1 -1 ...`); -1/1 become "0"/"1".
- "utkface": labels in the file names, `[age]_[gender]_[race]_[date&time].jpg` (for example
  `25_0_3_20170119171155123.jpg.chip.jpg`); columns age, gender, race.
- "auto": the first that applies, by these clues: a `list_attr_celeba.txt` (celeba), a labels CSV (csv),
  image files named like UTKFace's (utkface), sub-folders holding images (imagefolder). When none applies,
  the error lists the clues it looked for.

Labels and attributes (first version): every column goes into `labels` as a string; a column whose
non-empty values all look like numbers (age, but also 0/1 codes) goes into `attributes` as floats too.

Names and keys: a sample's name is its path relative to the images folder (as the labels file writes it);
problems with a labels row are named `<labels file> line N`. Keys come from that path without its
extension: '/' becomes '__', anything but letters, digits, '_' and '-' becomes '-' (dots too: WebDataset
splits member names at the first dot), at most 95 characters (`<key>.json` must fit the 100-byte name of
the USTAR headers shards.py writes); collisions, ignoring case, get `-2`, `-3`, ... in name order.

Problems (unreadable, corrupt, unlabelled, duplicate images, bad labels rows) are collected in
`IngestPlan.problems`, never raised; only a folder that cannot be read as a whole raises `IngestError`.
The split is a hash of (seed, key), so the same folder and seed always give the same split.

Nothing outside the folder is read: a symbolic link whose target lies outside it is not followed (an image
behind one is a problem, "symbolic link points outside the folder"; a labels file or images folder behind one
is an `IngestError`), and no folder walk follows a link out of it. Every check is linear in the size of
the input; a labels CSV may have at most MAX_LABEL_COLUMNS label columns and cells of at most MAX_CELL
characters.

A labels.csv written by `export` protects spreadsheets from formula injection: a cell that starts with =, +,
-, @, a tab or a carriage return (and is not a plain number such as -3 or -0.5) gets a single quote in front,
and so does a cell that starts with quotes followed by such a cell. The csv layout removes exactly that quote
when it reads a labels file, so export → ingest keeps every label.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import re
import secrets
import shutil
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from umbra.dataset.images import ImageProblem, SizePolicy, normalize
from umbra.dataset.manifest import SPLITS, ManifestError, Sample, validate_key
from umbra.dataset.shards import ShardWriter

LAYOUTS = ("auto", "csv", "imagefolder", "celeba", "utkface")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
LABELS_FILE = "labels.csv"
FILE_COLUMNS = ("file", "filename", "image")
CELEBA_ATTRIBUTES = "list_attr_celeba.txt"
CELEBA_IMAGES = "img_align_celeba"
UTKFACE_NAME = re.compile(r"^(\d{1,3})_(\d+)_(\d+)_\d+")
UTKFACE_EXAMPLE = "25_0_3_20170119171155123.jpg.chip.jpg"
MAX_KEY = 95
MAX_FILE_BYTES = 256 * 1024 * 1024
NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?$")
MAX_LABEL_COLUMNS = 1000
MAX_CELL = 1000  # characters in one cell of a labels file
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # what makes a spreadsheet read a cell as a formula
OUTSIDE = "symbolic link points outside the folder"
_NOT_KEY = re.compile(r"[^A-Za-z0-9_-]")
DEFAULT_POLICY = SizePolicy()

Progress = Callable[[int, int], None]


class IngestError(ValueError):
    """The folder as a whole cannot be ingested (or exported); the message names the file and the reason."""


@dataclass(frozen=True)
class Problem:
    name: str
    reason: str

    def __str__(self) -> str:
        return f"{self.name}: {self.reason}"


@dataclass(frozen=True)
class PlannedSample:
    name: str
    path: Path
    key: str
    labels: dict[str, str]
    attributes: dict[str, str | float]
    split: str
    sha256: str
    size: int
    media_type: str = "image/png"


@dataclass
class IngestPlan:
    layout: str
    entries: list[PlannedSample]
    problems: list[Problem]
    label_columns: list[str]
    attribute_columns: list[str]
    image_size: int
    policy: SizePolicy = field(default_factory=SizePolicy)
    seed: int = 0
    folder: Path | None = None  # the scanned folder, symbolic links resolved: images are read from inside it


@dataclass(frozen=True)
class _Candidate:
    name: str  # relative to the images folder, as the labels name it
    path: Path
    labels: dict[str, str]


@dataclass
class _Found:
    candidates: list[_Candidate]
    problems: list[Problem]
    columns: list[str]


# keys and splits


def sanitize_key(relative: str) -> str:
    """A valid manifest key for a relative image path (see the module docstring); not yet unique."""
    path = PurePosixPath(relative.replace("\\", "/"))
    parts = [p for p in path.parts if p not in ("", ".", "/")]
    if parts and path.suffix:
        parts[-1] = parts[-1][: -len(path.suffix)]
    key = "__".join(_NOT_KEY.sub("-", p) for p in parts if p)
    if not key:
        key = "image"
    if len(key) > MAX_KEY:
        key = key[: MAX_KEY - 9] + "-" + hashlib.sha256(relative.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return key


def unique_keys(relatives: Sequence[str]) -> list[str]:
    """Sanitized keys, made unique (ignoring case) with `-2`, `-3`, ... in the given order: each key gets the
    lowest number not taken yet. Numbering resumes where the last key with the same base stopped (the lower
    numbers are all taken), so a thousand names with one key cost a thousand tries, not half a million."""
    used: set[str] = set()
    next_number: dict[str, int] = {}  # base (lower case) -> the first number that may still be free
    keys = []
    for relative in relatives:
        base = key = sanitize_key(relative)
        if key.lower() in used:
            number = next_number.get(base.lower(), 2)
            while key.lower() in used:
                suffix = f"-{number}"
                key = base[: MAX_KEY - len(suffix)] + suffix
                number += 1
            next_number[base.lower()] = number
        used.add(key.lower())
        keys.append(key)
    return keys


def check_split(split: Sequence[float]) -> tuple[float, float, float]:
    """Validates (train, val, test) fractions: three finite numbers >= 0 that add up to 1."""
    try:
        values = tuple(float(f) for f in split)
    except (TypeError, ValueError):
        raise ValueError(f"split {split!r}: give three fractions (train, val, test)") from None
    if len(values) != 3:
        raise ValueError(f"split {split!r}: give three fractions (train, val, test)")
    if any(not math.isfinite(f) or f < 0 for f in values):
        raise ValueError(f"split {split!r}: fractions must be finite and not negative")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"split {split!r}: fractions must add up to 1, not {sum(values):g}")
    return values  # type: ignore[return-value]


def assign_split(key: str, *, seed: int = 0, split: Sequence[float] = (0.8, 0.1, 0.1)) -> str:
    """"train", "val" or "test" for a key: a hash of (seed, key) read as a uniform number in [0, 1)."""
    train, val, _ = check_split(split)
    digest = hashlib.sha256(f"{seed}\0{key}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    if u < train:
        return SPLITS[0]
    if u < train + val:
        return SPLITS[1]
    return SPLITS[2]


# reading files


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and PurePosixPath(name).suffix.lower() in IMAGE_SUFFIXES


def _resolved(folder: Path) -> Path:
    return Path(os.path.realpath(folder))


def _escapes(path: Path, top: Path) -> bool:
    """Whether `path`, its symbolic links followed, leads out of `top` (a folder, already `_resolved`)."""
    return not Path(os.path.realpath(path)).is_relative_to(top)


def _image_files(root: Path, problems: list[Problem] | None = None) -> list[tuple[str, Path]]:
    """(path relative to root, path) of the image files under root, sorted; hidden entries are skipped.
    A folder named like an image (`x.png/`) is listed, not entered: reading it reports the problem. Linked
    folders are not entered (os.walk does not follow links); the caller checks that root itself is inside."""
    found: list[tuple[str, Path]] = []

    def unreadable(exc: OSError) -> None:
        if problems is not None:
            name = Path(os.path.relpath(exc.filename, root)).as_posix() if exc.filename else str(root)
            problems.append(Problem(name + "/", f"cannot read folder: {exc.strerror or exc}"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable, followlinks=False):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            if name.startswith("."):
                continue
            if _is_image_name(name):
                found.append(((here / name).relative_to(root).as_posix(), here / name))
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            if _is_image_name(name):
                found.append(((here / name).relative_to(root).as_posix(), here / name))
    return sorted(found)


def _holds_images(folder: Path) -> bool:
    """Whether any image file lies under folder (stops at the first one)."""
    for _, dirnames, filenames in os.walk(folder, followlinks=False):
        if any(_is_image_name(name) for name in filenames):
            return True
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
    return False


def _read(path: Path, top: Path | None) -> bytes:
    """The file's bytes, or ImageProblem saying why it cannot be read; a symbolic link that leads out of the
    folder `top` (resolved) is not followed."""
    if top is not None and _escapes(path, top):
        raise ImageProblem(OUTSIDE)
    try:
        info = os.stat(path)
        if stat.S_ISDIR(info.st_mode):
            raise ImageProblem("cannot read: is a directory")
        if not stat.S_ISREG(info.st_mode):
            raise ImageProblem("cannot read: not a regular file")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageProblem(f"file too large ({info.st_size} bytes, limit {MAX_FILE_BYTES})")
        with open(path, "rb") as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except PermissionError:
        raise ImageProblem("cannot read: permission denied") from None
    except FileNotFoundError:
        if os.path.islink(path):
            raise ImageProblem("cannot read: dangling symbolic link") from None
        raise ImageProblem("cannot read: file not found") from None
    except IsADirectoryError:
        raise ImageProblem("cannot read: is a directory") from None
    except OSError as exc:
        raise ImageProblem(f"cannot read: {exc.strerror or exc}") from None


def _read_text(path: Path, top: Path) -> str:
    """A labels file's text, line ends as they are (a quoted CSV cell may hold a CR); IngestError when it cannot
    be read or lies outside the folder `top` (resolved)."""
    if _escapes(path, top):
        raise IngestError(f"{path}: outside the folder (symbolic links out of it are not followed)")
    try:
        with open(path, encoding="utf-8-sig", newline="") as handle:
            return handle.read()
    except UnicodeDecodeError as exc:
        raise IngestError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise IngestError(f"{path}: cannot read: {exc.strerror or exc}") from None


def _inside(value: str) -> PurePosixPath | None:
    relative = PurePosixPath(value.replace("\\", "/"))
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        return None
    return relative


def _needs_quote(cell: str) -> bool:
    """Whether `export` puts a quote in front of a cell (see the module docstring)."""
    rest = cell.lstrip("'")
    return rest.startswith(FORMULA_START) and not NUMBER.match(rest)


def escape_cell(cell: str) -> str:
    """A labels.csv cell that spreadsheets do not run as a formula (see the module docstring)."""
    return "'" + cell if _needs_quote(cell) else cell


def unescape_cell(cell: str) -> str:
    """The inverse of `escape_cell`."""
    return cell[1:] if cell.startswith("'") and _needs_quote(cell) else cell


def _unlabelled(root: Path, labelled: set[str], labels_name: str, problems: list[Problem]) -> None:
    for relative, _ in _image_files(root, problems):
        if relative not in labelled:
            problems.append(Problem(relative, f"no row in {labels_name}"))


# layouts


def _rows(reader, labels_file: str) -> Iterator[list[str]]:
    """The reader's rows, each cell stripped and unescaped; IngestError naming the line the csv module
    cannot parse (a field longer than its field_size_limit, for example)."""
    try:
        for row in reader:
            yield [unescape_cell(cell.strip()) for cell in row]
    except csv.Error as exc:
        raise IngestError(f"{labels_file} line {reader.line_num}: cannot parse: {exc}") from None


def _check_header(header: list[str], labels_file: str) -> None:
    """Every column named, at most MAX_CELL characters, once; at most MAX_LABEL_COLUMNS label columns."""
    if len(header) > MAX_LABEL_COLUMNS + 1:
        raise IngestError(f"{labels_file} line 1: {len(header)} columns; at most {MAX_LABEL_COLUMNS} label "
                          "columns besides the file column")
    first: dict[str, int] = {}
    for number, name in enumerate(header, start=1):
        if not name:
            raise IngestError(f"{labels_file} line 1: column {number} has no name")
        if len(name) > MAX_CELL:
            raise IngestError(f"{labels_file} line 1: the name of column {number} is longer than {MAX_CELL} "
                              "characters")
        if name in first:
            raise IngestError(f"{labels_file} line 1: column {name!r} appears twice (columns {first[name]} "
                              f"and {number})")
        first[name] = number


def _csv_layout(folder: Path, labels_file: str) -> _Found:
    top = _resolved(folder)
    labels_path = folder / labels_file
    if not labels_path.is_file():
        raise IngestError(f"{labels_path}: labels file not found (the csv layout needs one)")
    text = _read_text(labels_path, top)
    first = text.split("\n", 1)[0]
    delimiter = "," if "," in first else "\t" if "\t" in first else ";" if ";" in first else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = _rows(reader, labels_file)
    header = next(rows, [])
    if not header or not any(header):
        raise IngestError(f"{labels_file}: empty; its first line must name the columns (file,...)")
    _check_header(header, labels_file)
    lowered = [h.lower() for h in header]
    file_index = next((lowered.index(c) for c in FILE_COLUMNS if c in lowered), 0)
    columns = [h for i, h in enumerate(header) if i != file_index]
    root = folder / "images" if (folder / "images").is_dir() else folder
    if _escapes(root, top):
        raise IngestError(f"{root}: {OUTSIDE}")

    found = _Found([], [], columns)
    seen: dict[str, int] = {}
    for row in rows:
        line = reader.line_num
        if not any(row):
            continue
        where = f"{labels_file} line {line}"
        if len(row) != len(header):
            found.problems.append(Problem(where, f"has {len(row)} fields, the header has {len(header)}"))
            continue
        long = next((i for i, cell in enumerate(row) if len(cell) > MAX_CELL), None)
        if long is not None:
            found.problems.append(Problem(where, f"column {header[long]!r} is longer than {MAX_CELL} characters"))
            continue
        value = row[file_index]
        relative = _inside(value)
        if relative is None:
            reason = "the file column is empty" if not value else f"file {value!r} is outside the images folder"
            found.problems.append(Problem(where, reason))
            continue
        name = relative.as_posix()
        path = root / relative
        if not os.path.lexists(path) and root != folder and os.path.lexists(folder / relative):
            path = folder / relative  # the CSV names paths relative to the folder: images/x.png
            if relative.parts[0] == root.name:
                name = PurePosixPath(*relative.parts[1:]).as_posix()
        if not os.path.lexists(path):
            where_images = f"{root.name}/" if root != folder else "the folder"
            found.problems.append(Problem(where, f"image {value!r} does not exist in {where_images}"))
            continue
        if name in seen:
            found.problems.append(Problem(where, f"image {value!r} is already labelled on line {seen[name]}"))
            continue
        seen[name] = line
        labels = {h: row[i] for i, h in enumerate(header) if i != file_index}
        found.candidates.append(_Candidate(name, path, labels))
    _unlabelled(root, set(seen), labels_file, found.problems)
    return found


def _imagefolder_layout(folder: Path) -> _Found:
    top = _resolved(folder)
    found = _Found([], [], ["class"])
    classes = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and _escapes(entry, top):
            found.problems.append(Problem(f"{entry.name}/", OUTSIDE))
        elif entry.is_dir():
            classes.append(entry)
        elif _is_image_name(entry.name):
            found.problems.append(Problem(entry.name, "not in a class sub-folder"))
    if not classes:
        raise IngestError(f"{folder}: no class sub-folders (the imagefolder layout is <class>/<image>)")
    for class_dir in classes:
        for relative, path in _image_files(class_dir, found.problems):
            found.candidates.append(_Candidate(f"{class_dir.name}/{relative}", path, {"class": class_dir.name}))
    return found


def _celeba_layout(folder: Path) -> _Found:
    attributes_path, root = folder / CELEBA_ATTRIBUTES, folder / CELEBA_IMAGES
    if not attributes_path.is_file():
        raise IngestError(f"{attributes_path}: not found (the celeba layout needs it)")
    if not root.is_dir():
        raise IngestError(f"{root}: not found (the celeba layout keeps its images there)")
    top = _resolved(folder)
    if _escapes(root, top):
        raise IngestError(f"{root}: {OUTSIDE}")
    lines = _read_text(attributes_path, top).splitlines()
    if len(lines) < 2:
        raise IngestError(f"{CELEBA_ATTRIBUTES}: needs a count on line 1 and attribute names on line 2")
    names = lines[1].split()
    if not names or len(set(names)) != len(names):
        raise IngestError(f"{CELEBA_ATTRIBUTES} line 2: attribute names missing or repeated")
    if len(names) > MAX_LABEL_COLUMNS or max(map(len, names)) > MAX_CELL:
        raise IngestError(f"{CELEBA_ATTRIBUTES} line 2: at most {MAX_LABEL_COLUMNS} attribute names of at most "
                          f"{MAX_CELL} characters")
    found = _Found([], [], names)
    seen: dict[str, int] = {}
    rows = 0
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        rows += 1
        where = f"{CELEBA_ATTRIBUTES} line {number}"
        if len(parts) != len(names) + 1:
            found.problems.append(Problem(where, f"has {len(parts) - 1} values, line 2 names {len(names)}"))
            continue
        bad = next((n for n, v in zip(names, parts[1:], strict=True) if v not in ("1", "-1")), None)
        if bad is not None:
            value = parts[1 + names.index(bad)]
            found.problems.append(Problem(where, f"attribute {bad} is {value!r}, not 1 or -1"))
            continue
        relative = _inside(parts[0])
        if relative is None:
            found.problems.append(Problem(where, f"file {parts[0]!r} is outside {CELEBA_IMAGES}/"))
            continue
        name = relative.as_posix()
        if not os.path.lexists(root / relative):
            found.problems.append(Problem(where, f"image {parts[0]!r} does not exist in {CELEBA_IMAGES}/"))
            continue
        if name in seen:
            found.problems.append(Problem(where, f"image {parts[0]!r} is already labelled on line {seen[name]}"))
            continue
        seen[name] = number
        labels = {n: "1" if v == "1" else "0" for n, v in zip(names, parts[1:], strict=True)}
        found.candidates.append(_Candidate(name, root / relative, labels))
    count = lines[0].strip()
    if not count.isdigit() or int(count) != rows:
        found.problems.append(Problem(f"{CELEBA_ATTRIBUTES} line 1", f"says {count!r} images, the file lists {rows}"))
    _unlabelled(root, set(seen), CELEBA_ATTRIBUTES, found.problems)
    return found


def _utkface_layout(folder: Path) -> _Found:
    found = _Found([], [], ["age", "gender", "race"])
    for relative, path in _image_files(folder, found.problems):
        match = UTKFACE_NAME.match(PurePosixPath(relative).name)
        if match is None:
            found.problems.append(Problem(relative, "file name is not [age]_[gender]_[race]_[date&time].jpg"))
            continue
        age, gender, race = (str(int(g)) for g in match.groups())
        if gender not in ("0", "1") or not 0 <= int(race) <= 4:
            found.problems.append(Problem(relative, f"gender {gender} (0 or 1) or race {race} (0..4) out of range"))
            continue
        found.candidates.append(_Candidate(relative, path, {"age": age, "gender": gender, "race": race}))
    return found


def detect_layout(folder: Path, *, labels_file: str | None = None) -> str:
    """The layout of a folder, from the clues listed in the module docstring; IngestError if none applies."""
    folder = Path(folder)
    clues = []
    if (folder / CELEBA_ATTRIBUTES).is_file():
        return "celeba"
    clues.append(f"no {CELEBA_ATTRIBUTES} (celeba)")
    if (folder / (labels_file or LABELS_FILE)).is_file():
        return "csv"
    clues.append(f"no {labels_file or LABELS_FILE} (csv)")
    entries = sorted(e for e in folder.iterdir() if not e.name.startswith("."))
    images = [e.name for e in entries if _is_image_name(e.name) and not e.is_dir()]
    matching = sum(1 for n in images if UTKFACE_NAME.match(n))
    if images and matching >= 0.9 * len(images):
        return "utkface"
    if images:
        clues.append(f"only {matching} of {len(images)} image files named like {UTKFACE_EXAMPLE} (utkface)")
    else:
        clues.append(f"no image files named like {UTKFACE_EXAMPLE} (utkface)")
    top = _resolved(folder)
    if any(e.is_dir() and not _escapes(e, top) and _holds_images(e) for e in entries):
        return "imagefolder"
    clues.append("no sub-folders holding images (imagefolder)")
    raise IngestError(f"{folder}: cannot tell the layout: {'; '.join(clues)}. "
                      f"Pass layout= one of {', '.join(LAYOUTS[1:])}")


# scan, write, export


def _numeric_columns(columns: list[str], rows: Iterable[dict[str, str]]) -> list[str]:
    rows = list(rows)
    numeric = []
    for column in columns:
        values = [row.get(column, "") for row in rows]
        present = [v for v in values if v != ""]
        if present and all(NUMBER.match(v) for v in present):
            numeric.append(column)
    return numeric


def scan(
    folder: Path,
    *,
    layout: str = "auto",
    labels_file: str | None = None,
    policy: SizePolicy = DEFAULT_POLICY,
    seed: int = 0,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    progress: Progress | None = None,
) -> IngestPlan:
    """Plans the ingest of a folder: every image is read once, validated and hashed, then dropped
    (memory stays flat); the plan lists the good ones, sorted by key, and the problems found."""
    folder = Path(folder)
    if layout not in LAYOUTS:
        raise ValueError(f"layout {layout!r}: use one of {', '.join(LAYOUTS)}")
    if not isinstance(policy, SizePolicy):
        raise TypeError(f"policy: a SizePolicy, not {type(policy).__name__}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed {seed!r}: use an integer")
    fractions = check_split(split)
    if not folder.is_dir():
        raise IngestError(f"{folder}: no such folder")
    top = _resolved(folder)
    try:
        if layout == "auto":
            layout = detect_layout(folder, labels_file=labels_file)
        if layout == "csv":
            found = _csv_layout(folder, labels_file or LABELS_FILE)
        elif layout == "imagefolder":
            found = _imagefolder_layout(folder)
        elif layout == "celeba":
            found = _celeba_layout(folder)
        else:
            found = _utkface_layout(folder)
    except OSError as exc:
        raise IngestError(f"{exc.filename or folder}: cannot read: {exc.strerror or exc}") from None

    candidates = sorted(found.candidates, key=lambda c: c.name)
    keys = unique_keys([c.name for c in candidates])
    problems = list(found.problems)
    kept: list[tuple[_Candidate, str, str, int, str]] = []
    first_by_hash: dict[str, str] = {}
    total = len(candidates)
    for done, (candidate, key) in enumerate(zip(candidates, keys, strict=True), start=1):
        try:
            image = normalize(_read(candidate.path, top), policy)
        except ImageProblem as exc:
            problems.append(Problem(candidate.name, exc.reason))
        else:
            if image.sha256 in first_by_hash:
                problems.append(Problem(candidate.name, f"duplicate of {first_by_hash[image.sha256]}"))
            else:
                first_by_hash[image.sha256] = candidate.name
                kept.append((candidate, key, image.sha256, len(image.data), image.media_type))
            del image
        if progress is not None:
            progress(done, total)

    numeric = _numeric_columns(found.columns, (c.labels for c, *_ in kept))
    entries = [
        PlannedSample(
            name=candidate.name,
            path=candidate.path,
            key=key,
            labels=dict(candidate.labels),
            attributes={c: float(candidate.labels[c]) for c in numeric if candidate.labels.get(c, "") != ""},
            split=assign_split(key, seed=seed, split=fractions),
            sha256=sha256,
            size=size,
            media_type=media_type,
        )
        for candidate, key, sha256, size, media_type in kept
    ]
    entries.sort(key=lambda e: e.key)
    return IngestPlan(layout, entries, problems, list(found.columns), numeric, policy.size, policy, seed, top)


def write_shards(
    plan: IngestPlan,
    writer: ShardWriter,
    policy: SizePolicy | None = None,
    *,
    progress: Progress | None = None,
    close: bool = True,
) -> list[Sample]:
    """Re-reads and re-normalizes every planned image, in key order, into the writer; returns the samples
    with their shards filled in. Raises IngestError when a file changed since the scan. With `close` (the
    default) the writer is closed at the end, so the last shard reaches its `on_shard` too."""
    policy = plan.policy if policy is None else policy
    if policy != plan.policy:
        raise ValueError(f"policy {policy} differs from the one the plan was scanned with ({plan.policy}); "
                         "scan again with it")
    samples = []
    total = len(plan.entries)
    for done, entry in enumerate(plan.entries, start=1):
        try:
            image = normalize(_read(entry.path, plan.folder), policy)
        except ImageProblem as exc:
            raise IngestError(f"{entry.name}: {exc.reason} (it was fine when scanned; scan again)") from None
        if image.sha256 != entry.sha256:
            raise IngestError(f"{entry.name}: the file changed since the scan (sha256 {entry.sha256[:12]}... is "
                              f"now {image.sha256[:12]}...); scan again")
        sample = Sample(entry.key, "", entry.split, image.sha256, len(image.data), dict(entry.labels),
                        dict(entry.attributes), image.media_type)
        samples.append(writer.add(sample, image.data))
        if progress is not None:
            progress(done, total)
    if close:
        writer.close()
    return samples


def _csv_line(cells: Iterable[str]) -> str:
    """One labels.csv line, each cell escaped, ending in LF. The csv module quotes a cell holding a line break
    only when the break is part of its line terminator, so the line is written ending in CR LF (then a lone CR
    in a label is quoted too) and that end replaced."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\r\n").writerow([escape_cell(cell) for cell in cells])
    return buffer.getvalue()[:-2] + "\n"


def export(samples_with_images: Iterable[tuple[Sample, bytes]], folder: Path, label_columns: Sequence[str]) -> Path:
    """Writes `images/<key>.<ext>` (the bytes as given) and `labels.csv` (`file`, then the label columns)
    into `folder`, which must be missing or empty. Every cell of labels.csv goes through `escape_cell`: one
    that a spreadsheet would run as a formula (=, +, -, @, tab, carriage return; not a plain number) gets a
    single quote in front, which the csv layout removes again on ingest. Atomic: everything goes into a
    hidden sibling folder first, renamed into place at the end (and removed on any error)."""
    folder = Path(folder)
    columns = list(label_columns)
    if "file" in columns or len(set(columns)) != len(columns):
        raise ValueError(f"label columns {columns}: must be unique and not include 'file'")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise IngestError(f"{folder}: the export destination exists and is not empty; choose a new folder")
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = folder.parent / f".{folder.name}.export-{secrets.token_hex(4)}"
    staging.mkdir()
    try:
        (staging / "images").mkdir()
        written: set[str] = set()
        with open(staging / "labels.csv", "w", newline="", encoding="utf-8") as handle:
            handle.write(_csv_line(("file", *columns)))
            for sample, data in samples_with_images:
                try:
                    validate_key(sample.key)
                except ManifestError as exc:
                    raise IngestError(f"export: {exc}") from None
                if hashlib.sha256(data).hexdigest() != sample.sha256:
                    raise IngestError(f"export: sample {sample.key}: the image bytes do not match its sha256")
                name = f"{sample.key}.{sample.extension}"
                if name.lower() in written:
                    raise IngestError(f"export: sample {sample.key} appears twice")
                written.add(name.lower())
                (staging / "images" / name).write_bytes(data)
                handle.write(_csv_line((name, *(sample.labels.get(c, "") for c in columns))))
        if folder.exists():
            folder.rmdir()
        os.rename(staging, folder)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder
