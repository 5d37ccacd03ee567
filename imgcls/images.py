"""Decoding untrusted image bytes into RGB, with errors that name the problem.

Handles EXIF orientation, grayscale, RGBA/LA/palette transparency, CMYK and 16-bit images; JPEGs are decoded
at reduced scale (Pillow's ``draft``) when the target size allows, so a 12-megapixel photo is never decoded in full.

Decoding cost is bounded before any pixel is decoded: the header's size is checked against ``max_pixels`` for
JPEGs (decoded at reduced scale) and a lower ``max_pixels_full`` for every other format, which Pillow can only
decode at full size (a 1.9 kB lossless WebP of 7000x7000 takes 2 s and 200 MB to decode). Multi-frame files
(GIF, WebP, TIFF, APNG) are read for their first frame only. Pillow's and libtiff's complaints about malformed
input are logged at debug level: they describe the caller's bytes, not a fault of the service. Buffers of large
images go back to the OS when freed and small ones stay for the next image (``_tune_the_allocator``).
"""
from __future__ import annotations

import ctypes
import io
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import PIL
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from imgcls.errors import ImgclsError

__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_PIXELS_FULL", "IMAGE_SUFFIXES", "ImageError", "decode_image",
           "finish_decode", "open_image", "to_rgb"]

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 50_000_000  # JPEG: ``draft`` decodes at 1/2..1/8 scale, so this costs at most ~1/4 of it
DEFAULT_MAX_PIXELS_FULL = 16_000_000  # formats decoded at full size (PNG, WebP, GIF, TIFF, BMP, ...)
# File name extensions taken as images when a folder is searched (training data, batch jobs), lower case.
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
# Signatures of formats we read: data that starts like one but does not parse is corrupt, not "not an image".
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\x00", b"MM\x00*")


class ImageError(ImgclsError, ValueError):
    """A rejected image (empty, not an image, corrupt, too many pixels): :class:`ImgclsError` with its status."""


def decode_image(
    data: bytes | str | Path, *, draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    max_pixels_full: int = DEFAULT_MAX_PIXELS_FULL,
) -> Image.Image:
    """Decode ``data`` (bytes or a file path) to an RGB image, or raise :class:`ImageError`.

    ``draft_size``: the smallest side the caller needs; JPEGs may be DCT-scaled down to no less than that.
    ``max_pixels``: the most pixels a JPEG may have; ``max_pixels_full``: the most for any other format
    (the smaller of the two applies), checked from the header before decoding.
    """
    return finish_decode(open_image(data, draft_size=draft_size, max_pixels=max_pixels,
                                    max_pixels_full=max_pixels_full))


def open_image(
    data: bytes | str | Path, *, draft_size: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS,
    max_pixels_full: int = DEFAULT_MAX_PIXELS_FULL,
) -> Image.Image:
    """Read only the header of ``data`` and check it (arguments as :func:`decode_image`); nothing is decoded yet.

    The returned image's ``size`` is what decoding will produce (JPEGs already set to reduced scale), so
    ``width * height`` is the cost of :func:`finish_decode`: a caller can route costly images to a slower lane.
    """
    if isinstance(data, (str, Path)):
        data = Path(data).read_bytes()
    if not data:
        raise ImageError(400, "empty", "the request has no image data")
    try:
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise ImageError(413, "too_many_pixels", f"image has too many pixels: {e}") from e
    except UnidentifiedImageError as e:
        if data.startswith(_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP"):
            raise ImageError(422, "corrupt", "the data starts like an image but its header is corrupt") from e
        raise ImageError(415, "not_an_image",
                         "the data is not an image format we can read (JPEG, PNG, WebP, ...)") from e
    except Exception as e:  # Pillow plugins raise assorted errors on malformed headers
        raise ImageError(422, "corrupt", f"the image header is corrupt: {e}") from e
    w, h = img.size
    jpeg = isinstance(img, JpegImagePlugin.JpegImageFile)  # also MPO, the multi-picture JPEG of many cameras
    limit = max_pixels if jpeg else min(max_pixels, max_pixels_full)
    if w * h > limit:
        raise ImageError(413, "too_many_pixels", f"{img.format or 'image'} is {w}x{h} = {w * h} pixels, over the "
                                                 f"limit of {limit} for this format")
    if w == 0 or h == 0:
        raise ImageError(422, "corrupt", f"image has no pixels ({w}x{h})")
    try:
        if draft_size and jpeg and img.mode in ("RGB", "L", "CMYK"):
            img.draft(img.mode, (draft_size, draft_size))
    except Exception as e:
        raise ImageError(422, "corrupt", f"the image header is corrupt: {e}") from e
    return img


def finish_decode(img: Image.Image) -> Image.Image:
    """Decode an image from :func:`open_image` to RGB (EXIF orientation applied), or raise :class:`ImageError`."""
    try:
        img.load()
        ImageOps.exif_transpose(img, in_place=True)  # in place: no copy when there is nothing to rotate
        return to_rgb(img)
    except Exception as e:
        raise ImageError(422, "corrupt", f"the image data is truncated or corrupt: {e}") from e


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparency is composited on white, 16-bit data is scaled, not clipped."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float32)  # float32: half the memory, exact for 16 bits
        top = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
        return Image.fromarray((np.clip(arr, 0, top) * (255.0 / top) + 0.5).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info or img.mode in ("PA", "LA", "RGBA", "La", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def _log_pil_warnings() -> None:
    """Send Pillow's warnings (corrupt EXIF, truncated TIFF tags, ...) to this module's debug log.

    Once, process-wide, instead of ``warnings.catch_warnings`` per call, which is not thread-safe. The "always"
    action also keeps Python's per-message registry from growing with every distinct malformed upload.
    """
    warnings.filterwarnings("always", module=r"PIL(\.|$)")
    pil_dir = str(Path(PIL.__file__).parent)
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        if str(filename).startswith(pil_dir):
            log.debug("Pillow: %s: %s", category.__name__, message)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


class _AsDebug(logging.Filter):
    """Pillow's TIFF reader logs one complaint about malformed files at ERROR ("More samples per pixel than can
    be decoded") before raising; it describes the caller's bytes, so it is demoted to DEBUG."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


def _silence_libtiff() -> None:
    """libtiff prints its warnings and errors about malformed files straight to stderr (C code, not Python
    warnings); Pillow turns the errors that matter into exceptions, which callers report. Drop libtiff's output."""
    libs = sorted((Path(PIL.__file__).parent.parent / "pillow.libs").glob("libtiff*.so*"))
    if not libs:
        log.debug("libtiff not found beside Pillow; its messages about malformed TIFFs stay on stderr")
        return
    try:
        libtiff = ctypes.CDLL(str(libs[0]))  # the copy Pillow's _imaging already loaded: the same handle
        libtiff.TIFFSetWarningHandler.restype = libtiff.TIFFSetErrorHandler.restype = ctypes.c_void_p
        libtiff.TIFFSetWarningHandler(None)
        libtiff.TIFFSetErrorHandler(None)
    except (OSError, AttributeError) as e:
        log.debug("could not silence libtiff: %s", e)


def _tune_the_allocator() -> None:
    """Large images' buffers go back to the OS when freed; small ones stay for the next image.

    By default glibc raises its mmap threshold to the size of the largest block freed so far (up to 32 MB), so
    after one large image, the next ones' buffers (Pillow allocates images in 16 MB blocks) come from the heap
    and per-thread arenas, which keep the memory: the server's RSS stepped up after large images and stayed up.
    Every allocation over 4 MB is its own mmap instead (measured: 3 threads decoding 15 MP PNGs left +75 MB
    resident; with this, +3 MB). A fixed threshold also fixes glibc's trim threshold at 128 kB, which gave every
    image's buffers (a few hundred kB each) back to the kernel and took them again page by page: about 150 page
    faults and 0.2-0.3 ms of CPU per image (docs/request_path.md). Up to 32 MB of freed small blocks stay in
    the process instead. Each threshold is left as it is where the operator set its variable
    (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``); both where the C library is not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # glibc's public tuning call (malloc.h)
    except AttributeError as e:
        log.debug("could not tune the allocator: %s", e)
        return
    for variable, param, value in (("MALLOC_MMAP_THRESHOLD_", -3, 4 << 20),  # -3: M_MMAP_THRESHOLD
                                   ("MALLOC_TRIM_THRESHOLD_", -1, 32 << 20)):  # -1: M_TRIM_THRESHOLD
        if variable not in os.environ:
            mallopt(param, value)


_log_pil_warnings()
logging.getLogger("PIL.TiffImagePlugin").addFilter(_AsDebug())
_silence_libtiff()
_tune_the_allocator()
