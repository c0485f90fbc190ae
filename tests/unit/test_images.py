"""images.normalize: what passes through untouched, what is converted and how, and every rejection reason."""

import hashlib
import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from umbra.dataset import images
from umbra.dataset.images import ImageProblem, SizePolicy, decode_rgb, normalize


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8), "RGB")


DEFAULT = SizePolicy()


def reason(data: bytes, policy: SizePolicy = DEFAULT) -> str:
    with pytest.raises(ImageProblem) as caught:
        normalize(data, policy)
    assert str(caught.value) == caught.value.reason
    return caught.value.reason


def without_segment(jpeg: bytes, marker: bytes) -> bytes:
    """A JPEG with its first `marker` segment (two bytes, e.g. b"\\xff\\xe0") cut out."""
    start = jpeg.index(marker)
    return jpeg[:start] + jpeg[start + 2 + int.from_bytes(jpeg[start + 2 : start + 4], "big") :]


def with_segment(jpeg: bytes, marker: bytes, body: bytes) -> bytes:
    """A JPEG with a segment inserted right after its SOI marker."""
    return jpeg[:2] + marker + (len(body) + 2).to_bytes(2, "big") + body + jpeg[2:]


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        kinds.append(kind)
        pos += 12 + length
    return kinds


def with_png_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """A PNG with an ancillary chunk inserted after IHDR (8 bytes of signature, 25 of IHDR)."""
    return png[:33] + png_chunk(kind, body) + png[33:]


def jpeg_with_everything(image: Image.Image) -> bytes:
    """A JPEG carrying EXIF (a description, GPS), an ICC profile, XMP, an Adobe segment, a comment, fill bytes
    before a marker and bytes after its end."""
    exif = Image.Exif()
    exif[0x010E] = "patient 4711"  # ImageDescription
    exif[0x8825] = {1: "N", 2: (52.0, 31.0, 12.0)}  # GPS latitude
    data = encode(image, "JPEG", quality=90, exif=exif, icc_profile=b"icc: Dr. Example's monitor" * 4,
                  comment=b"scanned at St. Mary's", xmp=b"<x:xmpmeta>Jane Doe</x:xmpmeta>")
    data = with_segment(data, b"\xff\xee", b"Adobe\x00\x64\x00\x00\x00\x00\x01")  # transform 1: YCbCr
    sos = data.index(b"\xff\xda")
    return data[:sos] + b"\xff\xff" + data[sos:] + b"trailer: patient 4711"


def png_with_everything(image: Image.Image) -> bytes:
    """A PNG carrying text chunks (a name, GPS), EXIF, an ICC profile, pHYs, and bytes after IEND."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("Author", "Jane Doe")
    info.add_text("GPS", "52.52N 13.40E", zip=True)
    info.add_itxt("Comment", "patient 4711")
    exif = Image.Exif()
    exif[0x010E] = "patient 4711"
    data = encode(image, pnginfo=info, dpi=(300, 300), exif=exif, icc_profile=b"icc: Dr. Example" * 4)
    return data + b"trailer: patient 4711"


@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_rgb_at_size_keeps_its_encoded_pixels(fmt, media_type):
    data = encode(noise(64, 64), fmt)
    result = normalize(data, SizePolicy())
    # PIL writes a PNG with only critical chunks, and a JPEG with a JFIF segment, which goes
    assert result.data == (data if fmt == "PNG" else without_segment(data, b"\xff\xe0"))
    assert (result.media_type, result.width, result.height) == (media_type, 64, 64)
    assert result.sha256 == hashlib.sha256(result.data).hexdigest()
    assert np.array_equal(decode_rgb(result.data), decode_rgb(data))


def test_png_metadata_and_trailing_bytes_are_stripped():
    image = noise(64, 64, seed=3)
    data = png_with_everything(image)
    for kind in (b"tEXt", b"zTXt", b"iTXt", b"eXIf", b"iCCP", b"pHYs"):
        assert kind in data
    result = normalize(data)
    assert result.media_type == "image/png" and b"4711" not in result.data and b"Jane" not in result.data
    assert result.data == encode(image)  # exactly the PNG without the extras: the same IHDR and IDAT
    assert np.array_equal(decode_rgb(result.data), decode_rgb(data))
    assert normalize(result.data).data == result.data  # idempotent
    images.check_stored(result.data, size=64, media_type="image/png")


def test_jpeg_metadata_and_trailing_bytes_are_stripped_and_the_pixels_stay():
    image = noise(64, 64, seed=5)
    data = jpeg_with_everything(image)
    result = normalize(data)
    assert result.media_type == "image/jpeg"
    for secret in (b"4711", b"Jane", b"Mary", b"Example", b"Adobe", b"Exif", b"JFIF", b"ICC_PROFILE"):
        assert secret in data and secret not in result.data
    # The same quantization and entropy-coded data as a plain encoding, without even its JFIF segment.
    assert result.data == without_segment(encode(image, "JPEG", quality=90), b"\xff\xe0")
    assert np.array_equal(decode_rgb(result.data), decode_rgb(data))
    assert normalize(result.data).data == result.data  # idempotent
    images.check_stored(result.data, size=64, media_type="image/jpeg")


def test_jpeg_whose_adobe_segment_says_rgb_is_converted_not_stripped():
    # Adobe transform 0 makes decoders read the three components as RGB; without the segment they would be
    # read as YCbCr and the colours would change, so such a JPEG is converted to PNG instead.
    plain = without_segment(encode(noise(64, 64, seed=6), "JPEG"), b"\xff\xe0")
    data = with_segment(plain, b"\xff\xee", b"Adobe\x00\x64\x00\x00\x00\x00\x00")
    assert not np.array_equal(decode_rgb(data), decode_rgb(plain))
    result = normalize(data)
    assert result.media_type == "image/png" and png_chunks(result.data) == [b"IHDR", b"IDAT", b"IEND"]
    assert np.array_equal(decode_rgb(result.data), decode_rgb(data))


def test_converted_images_get_no_ancillary_chunk():
    # PIL's PNG encoder writes what image.info holds (an ICC profile from a JPEG as iCCP) when given the image.
    data = jpeg_with_everything(noise(80, 70, seed=7))
    result = normalize(data)
    assert result.media_type == "image/png" and png_chunks(result.data) == [b"IHDR", b"IDAT", b"IEND"]
    images.check_stored(result.data, size=64, media_type="image/png")
    png = normalize(png_with_everything(noise(80, 70, seed=7)))
    assert png_chunks(png.data) == [b"IHDR", b"IDAT", b"IEND"]


@pytest.mark.parametrize("make", [png_with_everything, jpeg_with_everything], ids=["png", "jpeg"])
def test_strip_is_idempotent(make):
    stripped = images.strip(make(noise(64, 64, seed=8)))
    assert stripped.removed and images.strip(stripped.data) == images.Stripped(stripped.data, ())


def test_other_sizes_are_center_cropped_and_resized_to_png():
    array = np.zeros((80, 120, 3), dtype=np.uint8)
    array[:, :20] = (255, 0, 0)  # cropped away: the crop keeps columns 20..99
    array[:, 20:100] = (0, 0, 255)
    array[:, 100:] = (0, 255, 0)
    result = normalize(encode(Image.fromarray(array), "JPEG", quality=95), SizePolicy(size=32))
    assert (result.media_type, result.width, result.height) == ("image/png", 32, 32)
    pixels = decode_rgb(result.data)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8
    assert pixels[:, :, 2].min() > 200 and pixels[:, :, 0].max() < 40 and pixels[:, :, 1].max() < 40


def test_conversion_is_deterministic_and_idempotent():
    data = encode(noise(50, 70, seed=4))
    first, second = normalize(data), normalize(data)
    assert first == second
    assert normalize(first.data) == first  # a normalized image passes through


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (Image.new("RGBA", (64, 64), (10, 20, 30, 0)), (255, 255, 255)),  # transparent → white
        (Image.new("RGBA", (64, 64), (10, 20, 30, 255)), (10, 20, 30)),
        (Image.new("LA", (64, 64), (0, 0)), (255, 255, 255)),
        (Image.new("L", (64, 64), 77), (77, 77, 77)),
        (Image.new("1", (64, 64), 1), (255, 255, 255)),
        (Image.new("RGB", (64, 64), (255, 0, 0)).convert("P"), (255, 0, 0)),
        (Image.fromarray(np.full((64, 64), 65535, dtype=np.uint16)), (255, 255, 255)),  # I;16 scaled, not clipped
        (Image.fromarray(np.full((64, 64), 257 * 40, dtype=np.uint16)), (40, 40, 40)),
    ],
    ids=["rgba-clear", "rgba-opaque", "la", "l", "bilevel", "palette", "i16-max", "i16-mid"],
)
def test_modes_become_rgb_png(image, expected):
    result = normalize(encode(image), SizePolicy())
    assert result.media_type == "image/png"
    pixels = decode_rgb(result.data)
    assert tuple(int(v) for v in pixels[10, 10]) == expected


def test_palette_with_transparency_is_flattened_onto_white():
    image = Image.new("P", (64, 64), 0)
    image.putpalette([0, 0, 0, 200, 0, 0] + [0] * 762)
    image.info["transparency"] = 0
    assert tuple(decode_rgb(normalize(encode(image, transparency=0)).data)[0, 0]) == (255, 255, 255)


def test_cmyk_jpeg_and_gif_are_converted():
    cmyk = normalize(encode(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.media_type == "image/png"
    red = decode_rgb(cmyk.data)[5, 5]
    assert red[0] > 200 and red[1] < 60 and red[2] < 60
    gif = normalize(encode(Image.new("RGB", (64, 64), (0, 0, 255)), "GIF"))
    assert gif.media_type == "image/png" and tuple(decode_rgb(gif.data)[0, 0]) == (0, 0, 255)


def test_exif_orientation_is_applied_not_passed_through():
    image = noise(64, 32)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(image, "JPEG", exif=exif.tobytes())
    assert decode_rgb(data).shape == (64, 32, 3)
    result = normalize(data, SizePolicy(size=32))
    assert result.media_type == "image/png" and result.width == 32


def test_require_rejects_the_wrong_size_and_accepts_the_right_one():
    assert reason(encode(noise(50, 64)), SizePolicy(mode="require")) == "wrong size 50x64 (need 64x64)"
    data = encode(noise(64, 64))
    assert normalize(data, SizePolicy(mode="require")).data == data
    assert normalize(encode(Image.new("L", (64, 64))), SizePolicy(mode="require")).media_type == "image/png"


def test_empty_file():
    assert reason(b"") == "empty file (0 bytes)"


def test_text_is_not_an_image():
    assert reason(b"hello, I am a text file\n") == "not an image (PNG/JPEG/...): cannot identify image file"


@pytest.mark.parametrize("cut", [0.5, 0.9])
def test_truncated_png_is_corrupt(cut):
    data = encode(noise(64, 64))
    assert reason(data[: int(len(data) * cut)]).startswith("corrupt image data: ")


def test_bad_png_checksum_is_corrupt():
    data = bytearray(encode(noise(64, 64)))
    data[60] ^= 0xFF  # inside the first IDAT chunk
    assert reason(bytes(data)).startswith("corrupt image data: ")


def test_truncated_jpeg_is_corrupt():
    data = encode(noise(64, 64), "JPEG")
    assert reason(data[: len(data) // 2]).startswith("corrupt image data: ")


def _png_header_only(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + png_chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [9_000, 100_000])
def test_decompression_bombs_are_refused_before_decoding(side):
    assert reason(_png_header_only(side, side)).startswith("image too large")


def test_pixel_limit_is_explicit(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100)
    assert reason(encode(noise(11, 10))) == "image too large: 11x10 pixels (limit 100)"


@pytest.mark.parametrize("kwargs", [{"size": 7}, {"size": 1025}, {"size": 64.0}, {"size": True}, {"mode": "fit"}])
def test_size_policy_is_validated(kwargs):
    with pytest.raises(ValueError):
        SizePolicy(**kwargs)


def test_decode_rgb_rejects_what_normalize_rejects():
    with pytest.raises(ImageProblem, match="empty file"):
        decode_rgb(b"")


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pixels=arrays(np.uint8, st.tuples(st.integers(8, 40), st.integers(8, 40), st.just(3))),
    size=st.sampled_from([8, 16, 24]),
)
def test_any_rgb_image_normalizes_to_a_stable_square(pixels, size):
    policy = SizePolicy(size=size)
    result = normalize(encode(Image.fromarray(pixels, "RGB")), policy)
    assert decode_rgb(result.data).shape == (size, size, 3)
    assert normalize(result.data, policy) == result


# check_stored: the server's check of an image it stores


def stored_reason(data: bytes, size: int = 64, media_type: str = "image/png") -> str:
    with pytest.raises(ImageProblem) as caught:
        images.check_stored(data, size=size, media_type=media_type)
    return caught.value.reason


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_check_stored_accepts_what_normalize_gives(fmt):
    for image in (noise(64, 64), noise(100, 90), Image.new("L", (64, 64), 9)):
        result = normalize(encode(image, fmt))
        images.check_stored(result.data, size=64, media_type=result.media_type)


def test_check_stored_reasons():
    png, jpeg = encode(noise(64, 64)), without_segment(encode(noise(64, 64), "JPEG"), b"\xff\xe0")
    assert stored_reason(with_png_chunk(png, b"tEXt", b"Author\x00Jane Doe")) == "carries metadata (PNG tEXt chunk)"
    assert stored_reason(png + b"\x00") == "bytes after the image end"
    assert stored_reason(jpeg + b"more", media_type="image/jpeg") == "bytes after the image end"
    assert stored_reason(encode(noise(64, 64), "JPEG"), media_type="image/jpeg") \
        == "carries metadata (JPEG APP0 segment, JFIF)"
    exif = Image.Exif()
    exif[0x010E] = "patient 4711"
    assert stored_reason(with_segment(jpeg, b"\xff\xe1", b"Exif\x00\x00" + exif.tobytes()), media_type="image/jpeg") \
        == "carries metadata (JPEG APP1 segment, EXIF)"
    assert stored_reason(with_segment(jpeg, b"\xff\xfe", b"hello"), media_type="image/jpeg") \
        == "carries metadata (JPEG comment)"
    assert stored_reason(png, media_type="image/jpeg") == "declared image/jpeg but is PNG"
    assert stored_reason(jpeg) == "declared image/png but is JPEG"
    assert stored_reason(encode(noise(64, 64), "GIF")) == "declared image/png but is GIF"
    assert stored_reason(png, media_type="image/gif") == "media type 'image/gif': use image/png or image/jpeg"
    assert stored_reason(png, size=32) == "is 64x64, the version's images are 32x32"
    assert stored_reason(encode(Image.new("L", (64, 64)))) == "not 8-bit RGB (stored as L)"
    ihdr16 = struct.pack(">IIBBBBB", 64, 64, 16, 2, 0, 0, 0)  # 16-bit RGB
    rows = (b"\x00" + bytes(64 * 6)) * 64  # each row: filter type 0, then 64 pixels of 6 bytes
    rgb16 = b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr16) + png_chunk(b"IDAT", zlib.compress(rows)) \
        + png_chunk(b"IEND", b"")
    assert stored_reason(rgb16) == "not 8-bit RGB (stored as RGB;16B)"
    assert stored_reason(encode(noise(64, 64), "PNG", save_all=True, append_images=[noise(64, 64, seed=1)])) \
        == "has 2 frames, not 1"
    assert stored_reason(b"not an image at all").startswith("not an image")
    assert stored_reason(b"") == "empty file (0 bytes)"
    assert stored_reason(png[: len(png) // 2]).startswith("corrupt image data")


def test_check_stored_refuses_another_size_before_decoding(monkeypatch):
    decoded = []
    monkeypatch.setattr(images, "_open", lambda data: decoded.append(data))
    assert stored_reason(_png_header_only(13_000, 13_000)) == "is 13000x13000, the version's images are 64x64"
    assert stored_reason(_png_header_only(100_000, 100_000)).startswith("image too large")
    assert decoded == []


def test_workers_refuse_a_decompression_bomb_before_decoding_it():
    """Issue 15, class 6: a 20 KB PNG of 13000x13000 took a training worker from 380 MB to 1.18 GB; a worker's
    decode now refuses it from its header, as DATA_LOSS (never INTERNAL)."""
    import struct
    import tracemalloc
    import zlib

    from umbra.classifiers.data import decode
    from umbra.runtime.errors import DataLoss

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    side = 13000
    bomb = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * (side * 3 + 1) * 64, 9)) + chunk(b"IEND", b""))
    assert len(bomb) < 1_000_000
    tracemalloc.start()
    with pytest.raises(DataLoss, match="13000x13000"):
        decode(bomb, 64)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 50_000_000
    with pytest.raises(DataLoss, match="does not decode"):
        decode(b"not an image", 64)
