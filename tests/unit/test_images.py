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


@pytest.mark.parametrize(("fmt", "media_type"), [("PNG", "image/png"), ("JPEG", "image/jpeg")])
def test_rgb_at_size_passes_through_byte_identical(fmt, media_type):
    data = encode(noise(64, 64), fmt)
    result = normalize(data, SizePolicy())
    assert result.data == data
    assert (result.media_type, result.width, result.height) == (media_type, 64, 64)
    assert result.sha256 == hashlib.sha256(data).hexdigest()


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
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


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
