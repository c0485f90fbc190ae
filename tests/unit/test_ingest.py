"""ingest: every layout, every problem by name and reason, keys, splits, and the shards/export round trip.
The folders are built from synthetic faces in tmp_path (never from the shared data folder)."""

import csv
import hashlib
import io
import os
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from umbra.dataset import images, ingest, synthetic
from umbra.dataset.images import SizePolicy
from umbra.dataset.ingest import IngestError, Problem, scan, write_shards
from umbra.dataset.manifest import SPLITS, validate_key
from umbra.dataset.shards import ShardWriter, iter_shard

POLICY = SizePolicy(size=32)
COLUMNS = list(synthetic.COLUMNS)


@pytest.fixture(scope="module")
def faces():
    return list(synthetic.generate(10, size=32, seed=11))


def write_csv(folder: Path, faces, *, images_dir: bool = True, labels_file: str = "labels.csv") -> Path:
    images = folder / "images" if images_dir else folder
    images.mkdir(parents=True, exist_ok=True)
    with open(folder / labels_file, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["file", *COLUMNS])
        for face in faces:
            (images / f"{face.key}.png").write_bytes(face.png)
            out.writerow([f"{face.key}.png", *(synthetic.csv_value(face.attributes[c]) for c in COLUMNS)])
    return folder


def add_row(folder: Path, name: str, labels_file: str = "labels.csv") -> int:
    """Appends a labels row for `name`; returns its line number."""
    path = folder / labels_file
    lines = path.read_text().splitlines()
    lines.append(",".join([name, "30", "0", "1", "0", "0", "red"]))
    path.write_text("\n".join(lines) + "\n")
    return len(lines)


def jpeg(png: bytes) -> bytes:
    buffer = io.BytesIO()
    Image.open(io.BytesIO(png)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# layouts


@pytest.mark.parametrize("layout", ["csv", "auto"])
def test_csv_layout(tmp_path, faces, layout):
    folder = write_csv(tmp_path / "d", faces)
    plan = scan(folder, layout=layout, policy=POLICY)
    assert plan.layout == "csv" and plan.problems == [] and plan.image_size == 32
    assert plan.label_columns == COLUMNS
    assert plan.attribute_columns == ["age", "gender", "skin_tone", "glasses", "smile"]
    assert [e.key for e in plan.entries] == [f.key for f in faces]
    for entry, face in zip(plan.entries, faces, strict=True):
        assert entry.name == f"{face.key}.png" and entry.path == folder / "images" / entry.name
        assert entry.labels == {c: synthetic.csv_value(face.attributes[c]) for c in COLUMNS}
        assert entry.attributes["age"] == face.attributes["age"] and entry.attributes["glasses"] in (0.0, 1.0)
        assert "hair_color" not in entry.attributes
        assert (entry.sha256, entry.size, entry.media_type) == (sha(face.png), len(face.png), "image/png")
        assert entry.split in SPLITS


def test_csv_layout_with_images_beside_an_own_labels_file(tmp_path, faces):
    folder = tmp_path / "flat"
    folder.mkdir()
    for face in faces[:3]:
        (folder / f"{face.key}.png").write_bytes(face.png)
    (folder / "meta.csv").write_text("id,filename\nfirst,synth-000000.png\nsecond,synth-000001.png\n"
                                     "third,synth-000002.png\n")
    plan = scan(folder, labels_file="meta.csv", policy=POLICY)
    assert plan.layout == "csv" and plan.problems == []
    assert plan.label_columns == ["id"] and plan.attribute_columns == []
    assert [e.labels for e in plan.entries] == [{"id": "first"}, {"id": "second"}, {"id": "third"}]


def test_csv_paths_may_include_the_images_folder(tmp_path, faces):
    folder = write_csv(tmp_path / "d", faces[:2])
    text = (folder / "labels.csv").read_text().replace("synth-000001.png", "images/synth-000001.png")
    (folder / "labels.csv").write_text(text)
    plan = scan(folder, policy=POLICY)
    assert plan.problems == [] and [e.name for e in plan.entries] == ["synth-000000.png", "synth-000001.png"]


@pytest.mark.parametrize("layout", ["imagefolder", "auto"])
def test_imagefolder_layout(tmp_path, faces, layout):
    for face in faces:
        cls = "glasses" if face.attributes["glasses"] == "1" else "plain"
        (tmp_path / cls).mkdir(exist_ok=True)
        (tmp_path / cls / f"{face.key}.png").write_bytes(face.png)
    plan = scan(tmp_path, layout=layout, policy=POLICY)
    assert plan.layout == "imagefolder" and plan.problems == []
    assert plan.label_columns == ["class"] and plan.attribute_columns == []
    assert len(plan.entries) == len(faces)
    for entry in plan.entries:
        cls, file = entry.name.split("/")
        assert entry.labels == {"class": cls} and entry.key == f"{cls}__{file[:-4]}"


@pytest.mark.parametrize("layout", ["celeba", "auto"])
def test_celeba_layout(tmp_path, faces, layout):
    (tmp_path / "img_align_celeba").mkdir()
    lines = [str(len(faces)), "Eyeglasses Male Smiling"]
    for number, face in enumerate(faces, start=1):
        (tmp_path / "img_align_celeba" / f"{number:06d}.jpg").write_bytes(jpeg(face.png))
        male = "1" if face.attributes["gender"] == "0" else "0"
        values = [face.attributes["glasses"], male, face.attributes["smile"]]
        lines.append(f"{number:06d}.jpg " + " ".join(f"{'1' if v == '1' else '-1':>2}" for v in values))
    (tmp_path / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    plan = scan(tmp_path, layout=layout, policy=POLICY)
    assert plan.layout == "celeba" and plan.problems == []
    assert plan.label_columns == ["Eyeglasses", "Male", "Smiling"] == plan.attribute_columns
    assert [e.key for e in plan.entries] == [f"{n:06d}" for n in range(1, len(faces) + 1)]
    for entry, face in zip(plan.entries, faces, strict=True):
        assert entry.labels["Eyeglasses"] == face.attributes["glasses"]
        assert entry.labels["Smiling"] == face.attributes["smile"]
        assert entry.labels["Male"] == ("1" if face.attributes["gender"] == "0" else "0")
        assert entry.media_type == "image/jpeg" and entry.sha256 == sha(images.strip(entry.path.read_bytes()).data)


@pytest.mark.parametrize("layout", ["utkface", "auto"])
def test_utkface_layout(tmp_path, faces, layout):
    names = []
    for index, face in enumerate(faces):
        age, gender = int(face.attributes["age"]), face.attributes["gender"]
        name = f"{age}_{gender}_{index % 5}_2017011917115{index:04d}.jpg.chip.jpg"
        (tmp_path / name).write_bytes(jpeg(face.png))
        names.append((name, str(age), gender, str(index % 5)))
    (tmp_path / "61_1_20170109142408075.jpg.chip.jpg").write_bytes(jpeg(faces[0].png))  # no race: UTKFace has these
    plan = scan(tmp_path, layout=layout, policy=POLICY)
    assert plan.layout == "utkface"
    assert plan.problems == [Problem("61_1_20170109142408075.jpg.chip.jpg",
                                     "file name is not [age]_[gender]_[race]_[date&time].jpg")]
    assert plan.label_columns == ["age", "gender", "race"] == plan.attribute_columns
    by_name = {e.name: e for e in plan.entries}
    for name, age, gender, race in names:
        entry = by_name[name]
        assert entry.labels == {"age": age, "gender": gender, "race": race}
        assert entry.attributes["age"] == float(age)
        assert entry.key == name[: -len(".jpg")].replace(".", "-")


def test_auto_says_which_clues_it_looked_for(tmp_path):
    (tmp_path / "notes.txt").write_text("nothing here")
    (tmp_path / "photo.png").write_bytes(b"whatever")
    with pytest.raises(IngestError) as caught:
        scan(tmp_path)
    message = str(caught.value)
    for clue in ("list_attr_celeba.txt (celeba)", "labels.csv (csv)", "only 0 of 1 image files named like",
                 "(utkface)", "no sub-folders holding images (imagefolder)", "layout="):
        assert clue in message


def test_whole_folder_errors(tmp_path):
    with pytest.raises(IngestError, match="no such folder"):
        scan(tmp_path / "missing")
    with pytest.raises(IngestError, match=r"labels\.csv: labels file not found"):
        scan(tmp_path, layout="csv")
    with pytest.raises(ValueError, match="layout 'zip'"):
        scan(tmp_path, layout="zip")
    (tmp_path / "labels.csv").write_text("file,a,a\n")
    with pytest.raises(IngestError, match="column 'a' appears twice"):
        scan(tmp_path)


# problems, each by name and reason


@pytest.fixture
def folder(tmp_path, faces):
    return write_csv(tmp_path / "data", faces[:4])


def problems_of(folder: Path, policy: SizePolicy = POLICY) -> tuple[list[Problem], list[str]]:
    plan = scan(folder, policy=policy)
    return plan.problems, [e.name for e in plan.entries]


def test_corrupt_png(folder):
    path = folder / "images" / "synth-000001.png"
    path.write_bytes(path.read_bytes()[:200])
    problems, names = problems_of(folder)
    assert [p.name for p in problems] == ["synth-000001.png"]
    assert problems[0].reason.startswith("corrupt image data: ")
    assert names == ["synth-000000.png", "synth-000002.png", "synth-000003.png"]


def test_text_file_named_png(folder):
    (folder / "images" / "synth-000002.png").write_text("not really a picture\n")
    problems, names = problems_of(folder)
    assert problems == [Problem("synth-000002.png", "not an image (PNG/JPEG/...): cannot identify image file")]
    assert "synth-000002.png" not in names


def test_zero_byte_file(folder):
    (folder / "images" / "synth-000003.png").write_bytes(b"")
    assert problems_of(folder)[0] == [Problem("synth-000003.png", "empty file (0 bytes)")]


# Tests run as root, where chmod 000 does not stop reads: unreadable files are made as a dangling symbolic
# link and as a directory named like an image instead (and chmod 000 is tried only when not root).
def test_unreadable_dangling_symlink(folder):
    os.symlink(folder / "nowhere.png", folder / "images" / "link.png")
    add_row(folder, "link.png")
    assert problems_of(folder)[0] == [Problem("link.png", "cannot read: dangling symbolic link")]


def test_unreadable_directory_named_like_an_image(folder):
    (folder / "images" / "folder.png").mkdir()
    add_row(folder, "folder.png")
    assert problems_of(folder)[0] == [Problem("folder.png", "cannot read: is a directory")]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_without_permission(folder):
    path = folder / "images" / "synth-000000.png"
    path.chmod(0)
    try:
        assert problems_of(folder)[0] == [Problem("synth-000000.png", "cannot read: permission denied")]
    finally:
        path.chmod(0o644)


def test_labels_row_whose_image_does_not_exist(folder):
    line = add_row(folder, "missing.png")
    expected = Problem(f"labels.csv line {line}", "image 'missing.png' does not exist in images/")
    assert problems_of(folder)[0] == [expected]


def test_image_with_no_labels_row(folder, faces):
    (folder / "images" / "extra.png").write_bytes(faces[5].png)
    problems, names = problems_of(folder)
    assert problems == [Problem("extra.png", "no row in labels.csv")]
    assert "extra.png" not in names


def test_duplicates_are_reported_as_the_later_ones(folder, faces):
    (folder / "images" / "copy-b.png").write_bytes(faces[0].png)
    (folder / "images" / "copy-a.png").write_bytes(faces[0].png)
    add_row(folder, "copy-b.png")
    add_row(folder, "copy-a.png")
    problems, names = problems_of(folder)
    assert problems == [Problem("copy-b.png", "duplicate of copy-a.png"),  # in name order
                        Problem("synth-000000.png", "duplicate of copy-a.png")]
    assert names == ["copy-a.png", "synth-000001.png", "synth-000002.png", "synth-000003.png"]


def test_duplicates_are_found_after_normalization(folder, faces):
    big = Image.open(io.BytesIO(faces[4].png)).resize((48, 48))
    for name, level in (("big-1.png", 1), ("big-9.png", 9)):  # different bytes, the same pixels
        big.save(folder / "images" / name, compress_level=level)
        add_row(folder, name)
    assert (folder / "images" / "big-1.png").read_bytes() != (folder / "images" / "big-9.png").read_bytes()
    assert problems_of(folder)[0] == [Problem("big-9.png", "duplicate of big-1.png")]


def test_wrong_size_under_the_require_policy(folder):
    Image.new("RGB", (40, 32), (1, 2, 3)).save(folder / "images" / "wide.png")
    add_row(folder, "wide.png")
    problems, names = problems_of(folder, SizePolicy(size=32, mode="require"))
    assert problems == [Problem("wide.png", "wrong size 40x32 (need 32x32)")]
    assert len(names) == 4
    assert problems_of(folder)[0] == []  # the default policy resizes it


def test_bad_labels_rows(folder):
    path = folder / "labels.csv"
    text = path.read_text()
    path.write_text(text + "synth-000000.png,1,0,1,0,0,red\nshort.png,1\n../outside.png,1,0,1,0,0,red\n"
                    ",1,0,1,0,0,red\n")
    assert problems_of(folder)[0] == [
        Problem("labels.csv line 6", "image 'synth-000000.png' is already labelled on line 2"),
        Problem("labels.csv line 7", "has 2 fields, the header has 7"),
        Problem("labels.csv line 8", "file '../outside.png' is outside the images folder"),
        Problem("labels.csv line 9", "the file column is empty"),
    ]


def test_bad_celeba_rows(tmp_path, faces):
    (tmp_path / "img_align_celeba").mkdir()
    (tmp_path / "img_align_celeba" / "000001.jpg").write_bytes(jpeg(faces[0].png))
    (tmp_path / "img_align_celeba" / "000009.jpg").write_bytes(jpeg(faces[1].png))
    (tmp_path / "list_attr_celeba.txt").write_text("3\nSmiling Male\n000001.jpg 1 -1\n000002.jpg 1 -1\n"
                                                   "000003.jpg 1\n000004.jpg 1 0\n")
    problems, names = problems_of(tmp_path)
    assert problems == [
        Problem("list_attr_celeba.txt line 4", "image '000002.jpg' does not exist in img_align_celeba/"),
        Problem("list_attr_celeba.txt line 5", "has 1 values, line 2 names 2"),
        Problem("list_attr_celeba.txt line 6", "attribute Male is '0', not 1 or -1"),
        Problem("list_attr_celeba.txt line 1", "says '3' images, the file lists 4"),
        Problem("000009.jpg", "no row in list_attr_celeba.txt"),
    ]
    assert names == ["000001.jpg"]


# keys and splits


@settings(max_examples=60, deadline=None)
@given(st.lists(st.text(max_size=140), max_size=12))
def test_keys_are_always_valid_and_unique(relatives):
    keys = ingest.unique_keys(relatives)
    assert len(keys) == len(relatives)
    assert len({k.lower() for k in keys}) == len(keys)
    for key in keys:
        assert validate_key(key) == key and len(key) <= ingest.MAX_KEY and "." not in key
    assert ingest.unique_keys(relatives) == keys


def test_key_examples():
    long = "x" * 200 + ".png"
    assert ingest.unique_keys(["a-2.png", "a.jpg", "a.png", "A.gif", "dir/x y.png", ".hidden.png", long]) \
        == ["a-2", "a", "a-3", "A-4", "dir__x-y", "-hidden", "x" * 86 + "-" + sha(long.encode())[:8]]


def test_the_longest_key_fits_a_shard():
    key = ingest.sanitize_key("k" * 300)
    assert len(key) == ingest.MAX_KEY
    writer = ShardWriter(lambda name, data: None)
    writer.add(ingest.Sample(key, "", "train", "0" * 64, 1), b"x")
    writer.close()


def test_split_follows_the_fractions_and_is_deterministic():
    keys = [f"img-{i:05d}" for i in range(20_000)]
    counts = Counter(ingest.assign_split(k, seed=3) for k in keys)
    assert abs(counts["train"] / len(keys) - 0.8) < 0.015
    assert abs(counts["val"] / len(keys) - 0.1) < 0.01 and abs(counts["test"] / len(keys) - 0.1) < 0.01
    again = [ingest.assign_split(k, seed=3) for k in keys[:500]]
    other = [ingest.assign_split(k, seed=4) for k in keys[:500]]
    assert again == [ingest.assign_split(k, seed=3) for k in keys[:500]] and again != other
    assert {ingest.assign_split(k, split=(0.0, 0.0, 1.0)) for k in keys[:200]} == {"test"}


@pytest.mark.parametrize("split", [(0.5, 0.5), (0.8, 0.3, -0.1), (0.5, 0.2, 0.2), (float("nan"), 0.5, 0.5), "abc"])
def test_bad_split_fractions(split):
    with pytest.raises(ValueError, match="split"):
        ingest.check_split(split)


def test_scan_split_is_the_same_for_the_same_folder_and_seed(tmp_path, faces):
    folder = write_csv(tmp_path / "d", faces)
    first = [(e.key, e.split) for e in scan(folder, policy=POLICY, seed=5).entries]
    assert first == [(e.key, e.split) for e in scan(folder, policy=POLICY, seed=5).entries]
    assert [s for _, s in first] == [ingest.assign_split(k, seed=5) for k, _ in first]


# shards and export


def test_round_trip_is_byte_identical(tmp_path, faces):
    source = write_csv(tmp_path / "source", faces)
    calls = []
    plan = scan(source, policy=POLICY, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(faces), len(faces)) and len(calls) == len(faces)

    shards: dict[str, bytes] = {}
    writer = ShardWriter(lambda name, data: shards.__setitem__(name, data), max_bytes=8 * 1024)
    calls.clear()
    samples = write_shards(plan, writer, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (len(faces), len(faces))
    assert len(shards) > 1 and sorted(shards) == sorted({s.shard for s in samples}) == writer.shards
    assert all(s.sha256 == sha(f.png) and s.size == len(f.png) for s, f in zip(samples, faces, strict=True))

    images = {}
    for name, data in shards.items():
        members = list(iter_shard(io.BytesIO(data)))
        assert [m.key for m in members] == sorted(m.key for m in members)
        assert {s.key for s in samples if s.shard == name} == {m.key for m in members}
        images.update((m.key, m.image) for m in members)
    dest = ingest.export(((s, images[s.key]) for s in samples), tmp_path / "exported", plan.label_columns)
    for face in faces:
        assert (dest / "images" / f"{face.key}.png").read_bytes() == face.png
    assert (dest / "labels.csv").read_bytes() == (source / "labels.csv").read_bytes().replace(b"\r\n", b"\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exported", "source"]  # no staging folder left


def test_write_shards_notices_a_file_changed_since_the_scan(tmp_path, faces):
    folder = write_csv(tmp_path / "d", faces[:3])
    plan = scan(folder, policy=POLICY)
    (folder / "images" / "synth-000001.png").write_bytes(faces[7].png)
    with pytest.raises(IngestError, match=r"synth-000001\.png: the file changed since the scan"):
        write_shards(plan, ShardWriter(lambda name, data: None))
    (folder / "images" / "synth-000001.png").write_bytes(b"")
    with pytest.raises(IngestError, match=r"synth-000001\.png: empty file \(0 bytes\) \(it was fine when scanned"):
        write_shards(plan, ShardWriter(lambda name, data: None))
    with pytest.raises(ValueError, match="differs from the one the plan was scanned with"):
        write_shards(plan, ShardWriter(lambda name, data: None), SizePolicy(size=64))


def test_export_refuses_a_non_empty_destination_and_leaves_nothing_on_error(tmp_path, faces):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    sample = ingest.Sample("a", "shard-000000.tar", "train", sha(faces[0].png), len(faces[0].png), {"x": "1"})
    with pytest.raises(IngestError, match="not empty"):
        ingest.export([(sample, faces[0].png)], tmp_path / "full", ["x"])
    with pytest.raises(IngestError, match="do not match its sha256"):
        ingest.export([(sample, faces[1].png)], tmp_path / "new", ["x"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["full"]
    (tmp_path / "empty").mkdir()
    dest = ingest.export([(sample, faces[0].png)], tmp_path / "empty", ["x"])
    assert (dest / "labels.csv").read_text() == "file,x\na.png,1\n"


# privacy on the way in: symbolic links out of the folder, metadata, formula injection


@pytest.fixture
def outside(tmp_path, faces):
    """A folder beside the upload folder, holding an image that must not be read."""
    path = tmp_path / "outside"
    path.mkdir()
    (path / "secret.png").write_bytes(faces[9].png)
    return path


def test_a_symbolic_link_out_of_the_folder_is_not_followed(folder, outside, faces):
    os.symlink(outside / "secret.png", folder / "images" / "link.png")
    add_row(folder, "link.png")
    (folder / "more").mkdir()
    (folder / "more" / "extra.png").write_bytes(faces[5].png)
    os.symlink(Path("..") / "more" / "extra.png", folder / "images" / "inside.png")  # stays inside: followed
    add_row(folder, "inside.png")
    problems, names = problems_of(folder)
    assert problems == [Problem("link.png", "symbolic link points outside the folder")]
    assert "inside.png" in names and "link.png" not in names


def test_write_shards_does_not_follow_a_link_made_after_the_scan(folder, outside):
    plan = scan(folder, policy=POLICY)
    target = folder / "images" / "synth-000001.png"
    target.unlink()
    os.symlink(outside / "secret.png", target)
    with pytest.raises(IngestError, match=r"synth-000001\.png: symbolic link points outside the folder"):
        write_shards(plan, ShardWriter(lambda name, data: None))


def test_a_labels_file_or_images_folder_linked_out_of_the_folder_is_refused(tmp_path, outside, faces):
    write_csv(outside, faces[:2])
    linked_labels = tmp_path / "labels-link"
    (linked_labels / "images").mkdir(parents=True)
    os.symlink(outside / "labels.csv", linked_labels / "labels.csv")
    with pytest.raises(IngestError, match=r"labels\.csv: outside the folder"):
        scan(linked_labels, policy=POLICY)
    linked_images = tmp_path / "images-link"
    linked_images.mkdir()
    (linked_images / "labels.csv").write_bytes((outside / "labels.csv").read_bytes())
    os.symlink(outside / "images", linked_images / "images")
    with pytest.raises(IngestError, match="images: symbolic link points outside the folder"):
        scan(linked_images, policy=POLICY)


def test_folder_walks_never_enter_a_linked_folder_outside(tmp_path, outside, faces):
    upload = tmp_path / "classes"
    (upload / "cats").mkdir(parents=True)
    (upload / "cats" / "a.png").write_bytes(faces[0].png)
    os.symlink(outside, upload / "cats" / "nested")  # a linked folder inside a class: not walked
    os.symlink(outside, upload / "stolen")  # a class folder that is a link out: a problem, not walked
    plan = scan(upload, policy=POLICY)
    assert plan.layout == "imagefolder" and [e.name for e in plan.entries] == ["cats/a.png"]
    assert plan.problems == [Problem("stolen/", "symbolic link points outside the folder")]
    only_link = tmp_path / "only-link"
    only_link.mkdir()
    os.symlink(outside, only_link / "stolen")
    with pytest.raises(IngestError, match="no sub-folders holding images"):  # detection does not look inside
        scan(only_link, policy=POLICY)


def test_metadata_is_stripped_and_the_round_trip_stays_byte_identical(tmp_path, faces):
    from PIL import PngImagePlugin

    source = tmp_path / "source"
    (source / "images").mkdir(parents=True)
    exif = Image.Exif()
    exif[0x010E] = "patient 4711"  # ImageDescription
    text = PngImagePlugin.PngInfo()
    text.add_text("Author", "Jane Doe")
    face = Image.open(io.BytesIO(faces[0].png))
    face.save(source / "images" / "a.jpg", exif=exif, comment=b"Mary", icc_profile=b"Example" * 10)
    face.save(source / "images" / "b.png", pnginfo=text, exif=exif, dpi=(300, 300))
    with open(source / "images" / "b.png", "ab") as handle:
        handle.write(b"trailer")
    (source / "labels.csv").write_text("file,x\na.jpg,1\nb.png,2\n")
    plan = scan(source, policy=POLICY)
    assert plan.problems == [] and [e.media_type for e in plan.entries] == ["image/jpeg", "image/png"]
    shards: dict[str, bytes] = {}
    samples = write_shards(plan, ShardWriter(lambda name, data: shards.__setitem__(name, data)))
    stored = {m.key: m.image for data in shards.values() for m in iter_shard(io.BytesIO(data))}
    for sample in samples:
        for secret in (b"4711", b"Jane", b"Mary", b"Example", b"trailer"):
            assert secret not in stored[sample.key]
        images.check_stored(stored[sample.key], size=32, media_type=sample.media_type)
    exported = ingest.export(((s, stored[s.key]) for s in samples), tmp_path / "exported", plan.label_columns)
    again = scan(exported, policy=POLICY)
    assert [(e.sha256, e.size) for e in again.entries] == [(e.sha256, e.size) for e in plan.entries]
    assert [e.labels for e in again.entries] == [e.labels for e in plan.entries]


FORMULAS = ["=cmd|' /C calc'!A0", "+1+1", "-2+3", "@SUM(A1)", "\tx", "\r=x", "'=x", "''@x", "-", "=", "-inf"]
PLAIN = ["-3", "-0.5", "+4", "1e-3", "'-3", "'", "", "hello", "a=b", "'quoted"]


def test_export_escapes_formulas_and_ingest_reads_them_back(tmp_path, faces):
    columns = ["+col", *(f"c{i}" for i in range(len(FORMULAS) + len(PLAIN)))]
    values = ["v", *FORMULAS, *PLAIN]
    sample = ingest.Sample("-hidden", "shard-000000.tar", "train", sha(faces[0].png), len(faces[0].png),
                           dict(zip(columns, values, strict=True)))
    dest = ingest.export([(sample, faces[0].png)], tmp_path / "out", columns)
    with open(dest / "labels.csv", newline="") as handle:
        header, row = list(csv.reader(handle))
    assert header[:2] == ["file", "'+col"] and row[0] == "'-hidden.png"
    written = dict(zip(columns, row[1:], strict=True))
    for column, value in zip(columns[1:], values[1:], strict=True):
        if value in FORMULAS:
            assert written[column] == "'" + value
        else:
            assert written[column] == value
    plan = scan(dest, policy=POLICY)
    assert plan.problems == [] and plan.label_columns == columns
    (entry,) = plan.entries
    assert entry.name == "-hidden.png"
    # the csv layout strips the whitespace around cells; the escaped tab and CR survive inside their quote
    assert entry.labels == dict(zip(columns, values, strict=True))


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.sampled_from(list("'=+-@\t\r0123.5eEx ")), max_size=8))
def test_escape_cell_round_trips_and_never_starts_a_formula(cell):
    escaped = ingest.escape_cell(cell)
    assert ingest.unescape_cell(escaped) == cell
    assert not escaped.startswith(ingest.FORMULA_START) or ingest.NUMBER.match(escaped)


# linear checks and bounds


def test_a_million_columns_are_refused_at_once(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels.csv").write_text("file," + ",".join(f"c{i}" for i in range(10**6)) + "\n")
    started = time.monotonic()
    with pytest.raises(IngestError, match=r"labels\.csv line 1: 1000001 columns; at most 1000 label columns"):
        scan(tmp_path, layout="csv", policy=POLICY)
    assert time.monotonic() - started < 5  # the quadratic check took hours


def test_the_duplicate_column_check_is_linear(tmp_path, monkeypatch):
    monkeypatch.setattr(ingest, "MAX_LABEL_COLUMNS", 10**7)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels.csv").write_text("file," + ",".join(f"c{i}" for i in range(10**6)) + ",c7\n")
    started = time.monotonic()
    with pytest.raises(IngestError, match=r"column 'c7' appears twice \(columns 9 and 1000002\)"):
        scan(tmp_path, layout="csv", policy=POLICY)
    assert time.monotonic() - started < 5


def test_label_columns_and_cells_are_bounded(folder):
    labels = folder / "labels.csv"
    text = labels.read_text()
    labels.write_text("file," + ",".join(f"c{i}" for i in range(1000)) + "\n")
    assert scan(folder, layout="csv", policy=POLICY).label_columns == [f"c{i}" for i in range(1000)]
    labels.write_text("file,ok," + "n" * 1001 + "\n")
    with pytest.raises(IngestError, match="line 1: the name of column 3 is longer than 1000 characters"):
        scan(folder, policy=POLICY)
    labels.write_text(text + "synth-000000.png,30,0,1,0,0," + "r" * 1001 + "\n")
    line = len(text.splitlines()) + 1
    assert problems_of(folder)[0] == [Problem(f"labels.csv line {line}",
                                              "column 'hair_color' is longer than 1000 characters")]
    labels.write_text(text + "synth-000000.png,30,0,1,0,0," + "r" * 200_000 + "\n")
    with pytest.raises(IngestError, match=f"labels.csv line {line}: cannot parse: field larger than field limit"):
        scan(folder, policy=POLICY)


def _quadratic_unique_keys(relatives):
    """unique_keys as it was: the reference for which key each name gets."""
    used, keys = set(), []
    for relative in relatives:
        base = key = ingest.sanitize_key(relative)
        number = 2
        while key.lower() in used:
            suffix = f"-{number}"
            key = base[: ingest.MAX_KEY - len(suffix)] + suffix
            number += 1
        used.add(key.lower())
        keys.append(key)
    return keys


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["a.png", "A.jpg", "a-2.png", "a-3.gif", "a b.png", "a!b.png", "a-b-2.png",
                                 "x" * 94 + ".png", "x" * 94 + "y.png", "x" * 93 + "-2.png"]), max_size=30))
def test_unique_keys_gives_the_keys_it_always_gave(relatives):
    assert ingest.unique_keys(relatives) == _quadratic_unique_keys(relatives)


def test_unique_keys_is_linear_in_the_names():
    names = [f"a.{i}" for i in range(10_000)]  # every name has the key "a"
    started = time.monotonic()
    keys = ingest.unique_keys(names)
    assert time.monotonic() - started < 5  # the quadratic numbering took about 35 s
    assert keys == ["a", *(f"a-{n}" for n in range(2, 10_001))]
