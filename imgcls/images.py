"""Decoding untrusted image bytes into RGB, with errors that name the problem.

Handles EXIF orientation, grayscale, RGBA/LA/palette transparency, CMYK and 16-bit images; JPEGs are decoded
at reduced scale (Pillow's ``draft``) when the target size allows, so a 12-megapixel photo is never decoded in full.
"""
from __future__ import annotations

import io
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 50_000_000
# File name extensions taken as images when a folder is searched (training data, batch jobs), lower case.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Signatures of formats we read: data that starts like one but does not parse is corrupt, not "not an image".
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class ImageError(ValueError):
    """A rejected input. ``reason`` is a stable machine-readable code, ``status`` the HTTP status it maps to."""

    def __init__(self, reason: str, message: str, status: int) -> None:
        super().__init__(message)
        self.reason, self.message, self.status = reason, message, status


def decode_image(
    data: bytes | str | Path, *, draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS
) -> Image.Image:
    """Decode ``data`` (bytes or a file path) to an RGB image, or raise :class:`ImageError`.

    ``draft_size``: the smallest side the caller needs; JPEGs may be DCT-scaled down to no less than that.
    """
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if not data:
        raise ImageError("empty", "the request has no image data", 400)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError("too_many_pixels", f"image has too many pixels: {e}", 413) from e
    except UnidentifiedImageError as e:
        if data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise ImageError("corrupt", "the data starts like an image but its header is corrupt", 422) from e
        raise ImageError("not_an_image", "the data is not an image format we can read (JPEG, PNG, WebP, ...)", 415) from e
    except Exception as e:  # Pillow plugins raise assorted errors on malformed headers
        raise ImageError("corrupt", f"the image header is corrupt: {e}", 422) from e
    w, h = img.size
    if w * h > max_pixels:
        raise ImageError("too_many_pixels", f"image is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}", 413)
    if w == 0 or h == 0:
        raise ImageError("corrupt", f"image has no pixels ({w}x{h})", 422)
    try:
        if draft_size and img.format == "JPEG" and img.mode in ("RGB", "L", "CMYK"):
            img.draft(img.mode, (draft_size, draft_size))
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy when there is nothing to rotate
        return to_rgb(img)
    except Exception as e:
        raise ImageError("corrupt", f"the image data is truncated or corrupt: {e}", 422) from e


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white, 16-bit data is scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray((np.clip(arr, 0, top) * (255.0 / top) + 0.5).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("PA", "LA", "RGBA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")
