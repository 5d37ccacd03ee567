"""Decoding untrusted bytes: every Pillow mode to RGB, EXIF orientation, draft decoding, and named errors."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from imgcls.images import ImageError, decode_image
from imgcls.preprocess import SYMMETRIC_MEAN, SYMMETRIC_STD, Preprocess


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def gradient(w: int = 64, h: int = 48) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.uint8)[None, :].repeat(h, 0)
    return Image.fromarray(np.stack([x, x[::-1, ::-1], np.full_like(x, 100)], -1), "RGB")


@pytest.mark.parametrize("mode", ["L", "RGBA", "LA", "P", "CMYK", "1", "I;16"])
def test_every_mode_becomes_rgb(mode: str) -> None:
    src = gradient().convert("L").convert(mode) if mode in ("1", "I;16") else gradient().convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    img = decode_image(encode(src, fmt))
    assert img.mode == "RGB" and img.size == (64, 48)


def test_16_bit_is_scaled_not_clipped() -> None:
    arr = np.full((8, 8), 32768, np.uint16)  # mid-grey in 16 bits
    img = decode_image(encode(Image.fromarray(arr), "PNG"))
    assert abs(int(np.asarray(img)[0, 0, 0]) - 128) <= 1  # clipping would give 255


def test_transparency_is_composited_on_white() -> None:
    clear = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(decode_image(encode(clear, "PNG")))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    data = encode(gradient(64, 48), "JPEG", exif=exif)
    assert decode_image(data).size == (48, 64)


def test_large_jpeg_is_draft_decoded_to_at_least_the_target() -> None:
    data = encode(gradient(4000, 3000), "JPEG", quality=85)
    img = decode_image(data, draft_size=256)
    assert min(img.size) >= 256 and img.size[0] <= 4000 // 8 * 2  # DCT-scaled, not decoded in full
    assert decode_image(data).size == (4000, 3000)


@pytest.mark.parametrize(("data", "reason", "status"), [
    (b"", "empty", 400),
    (b"hello, not an image", "not_an_image", 415),
    (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "corrupt", 422),
])
def test_bad_bytes_get_named_errors(data: bytes, reason: str, status: int) -> None:
    with pytest.raises(ImageError) as e:
        decode_image(data)
    assert (e.value.reason, e.value.status) == (reason, status)


def test_truncated_jpeg_is_corrupt() -> None:
    data = encode(gradient(200, 200), "JPEG")
    with pytest.raises(ImageError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.reason == "corrupt" and e.value.status == 422


def test_too_many_pixels_is_refused_before_decoding() -> None:
    data = encode(Image.new("L", (5000, 5000)), "PNG")
    with pytest.raises(ImageError) as e:
        decode_image(data, max_pixels=10_000_000)
    assert (e.value.reason, e.value.status) == ("too_many_pixels", 413)


def test_preprocess_shape_and_scaling() -> None:
    pre = Preprocess(224, 256, SYMMETRIC_MEAN, SYMMETRIC_STD)
    x = pre(Image.new("RGB", (640, 320), (255, 0, 128)))
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert np.allclose(x[:, 100, 100], [1.0, -1.0, 128 / 127.5 - 1], atol=1e-6)
    assert Preprocess.from_dict(pre.to_dict()) == pre
    assert np.array_equal(pre.denormalize(x)[100, 100], [255, 0, 128])


def test_preprocess_upscales_small_images() -> None:
    assert Preprocess()(Image.new("RGB", (60, 39))).shape == (3, 224, 224)
