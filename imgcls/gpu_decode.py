"""JPEG decoding on the GPU with nvImageCodec (``nvidia-nvimgcodec-cu13``; no torch), batched, with the CPU path
(:mod:`imgcls.images` + :mod:`imgcls.preprocess`) as fallback and as the reference.

Every input is first checked exactly as the CPU path checks it (:func:`imgcls.images.open_image`: the same limits
and error codes). Only complete RGB or grayscale JPEGs that the CPU path would decode at full scale (no ``draft``
reduction) and without an EXIF rotation go to nvImageCodec in one batched call; everything else, and every image
nvImageCodec fails on, takes the CPU path, so an image gets the same answer, or the same error, either way.

nvImageCodec 0.9 returns None where an image fails; older releases drop it from the list with only a warning.
Results are therefore mapped back by position only when the list has one entry per input; otherwise the batch is
decoded again one image at a time. Resizing, cropping and normalising run on the CPU (:class:`Preprocess`, the
same pixels as the reference); only the entropy decoding and IDCT move to the GPU.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, JpegImagePlugin

from imgcls.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_PIXELS_FULL, ImageError, open_image
from imgcls.loader import Failure, load_into
from imgcls.preprocess import Preprocess

log = logging.getLogger(__name__)
EXIF_ORIENTATION = 0x0112


class GpuDecodeUnavailable(RuntimeError):
    """nvImageCodec is not installed, or cannot decode on the backend asked for."""


@dataclass(frozen=True)
class Limits:
    """The decoding limits of :func:`imgcls.images.open_image`."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    max_pixels_full: int = DEFAULT_MAX_PIXELS_FULL


def nvimgcodec_decoder(backend: str = "gpu", threads: int = 0) -> Any:
    """An ``nvimgcodec.Decoder``: ``backend="gpu"`` (nvJPEG: CUDA or the hardware decoder, on device 0) or ``"cpu"``
    (its libjpeg-turbo backend, which needs no GPU). Raises :class:`GpuDecodeUnavailable` when it cannot be made."""
    try:
        from nvidia import nvimgcodec
    except ImportError as e:
        raise GpuDecodeUnavailable(f"nvImageCodec is not installed ({e}): pip install nvidia-nvimgcodec-cu13 "
                                   "nvidia-nvjpeg") from e
    try:
        if backend == "cpu":
            return nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=threads,
                                      backends=[nvimgcodec.Backend(nvimgcodec.BackendKind.CPU_ONLY)])
        if backend == "gpu":
            # fancy upsampling: chroma upsampled as libjpeg-turbo (the CPU path) does by default
            return nvimgcodec.Decoder(device_id=0, max_num_cpu_threads=threads, options=":fancy_upsampling=1",
                                      backends=[
                nvimgcodec.Backend(nvimgcodec.BackendKind.GPU_ONLY),
                nvimgcodec.Backend(nvimgcodec.BackendKind.HYBRID_CPU_GPU),
                nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY)])
    except RuntimeError as e:  # no CUDA device or driver
        raise GpuDecodeUnavailable(f"nvImageCodec cannot decode on the {backend}: {e}") from e
    raise ValueError(f"backend must be gpu or cpu, not {backend!r}")


def gpu_eligible(img: Image.Image, data: bytes, draft_size: int) -> bool:
    """An image (``data``, its header read into ``img``, nothing decoded) that nvImageCodec decodes to the CPU
    path's pixels: a complete JPEG (it ends with the end-of-image marker: the CPU path refuses truncated files, and
    whether nvJPEG does is not known) in RGB or grayscale, no EXIF rotation, and small enough that the CPU path would
    not decode it at reduced scale."""
    if not isinstance(img, JpegImagePlugin.JpegImageFile) or img.mode not in ("RGB", "L"):
        return False
    if not data.rstrip(b"\0\r\n ").endswith(b"\xff\xd9"):
        return False
    w, h = img.size
    if min(w // draft_size, h // draft_size) >= 2:  # Pillow's draft() would pick a 1/2..1/8 DCT scale
        return False
    try:
        return img.getexif().get(EXIF_ORIENTATION, 1) in (1, None)
    except Exception:  # noqa: BLE001 - malformed EXIF: the CPU path decides what it means
        return False


class BatchDecoder:
    """Decodes and preprocesses batches of image files or bytes into float32 NCHW arrays, JPEGs on nvImageCodec.

    ``decoder``: from :func:`nvimgcodec_decoder`. ``workers`` threads run the per-image header checks, the CPU
    fallback and the resize/normalise step (Pillow and numpy release the GIL)."""

    def __init__(self, preprocess: Preprocess, decoder: Any, *, workers: int = 2, limits: Limits = Limits()) -> None:
        from nvidia import nvimgcodec

        self.preprocess, self.decoder, self.limits = preprocess, decoder, limits
        self._nvimgcodec = nvimgcodec
        self._params = nvimgcodec.DecodeParams(color_spec=nvimgcodec.ColorSpec.SRGB, apply_exif_orientation=False)
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="gpu-decode")
        self.stats = {"nvimgcodec": 0, "nvimgcodec_failed": 0, "cpu": 0, "one_by_one": 0}

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def decode_into(self, items: Sequence[bytes | str | Path], out: np.ndarray) -> dict[int, Failure]:
        """Decode ``items`` into ``out[i]`` (shape (len(items), 3, S, S)); returns the failures by index, whose
        rows of ``out`` are left undefined."""
        data: list[bytes | None] = [None] * len(items)
        failures: dict[int, Failure] = {}
        gpu: list[int] = []
        cpu: list[int] = []
        for i, routed in enumerate(self._pool.map(self._route, items)):
            if isinstance(routed, Failure):
                failures[i] = routed
            else:
                data[i], on_gpu = routed
                (gpu if on_gpu else cpu).append(i)
        decoded = self._decode_on_nvimgcodec([data[i] for i in gpu])
        self.stats["nvimgcodec"] += sum(d is not None for d in decoded)
        self.stats["nvimgcodec_failed"] += sum(d is None for d in decoded)
        pairs = list(zip(gpu, decoded, strict=True))
        cpu += [i for i, d in pairs if d is None]  # nvImageCodec's failures: the CPU path says why
        self.stats["cpu"] += len(cpu)
        jobs = [self._pool.submit(self._finish, d, out[i]) for i, d in pairs if d is not None]
        cpu_jobs = {i: self._pool.submit(load_into, data[i], self.preprocess, out[i]) for i in cpu}
        for job in jobs:
            job.result()
        for i, job in cpu_jobs.items():
            if (failure := job.result()) is not None:
                failures[i] = failure
        return failures

    def _route(self, item: bytes | str | Path) -> tuple[bytes, bool] | Failure:
        """The bytes of ``item`` and whether they go to nvImageCodec, or why the item is refused (as the CPU path)."""
        try:
            data = Path(item).read_bytes() if isinstance(item, (str, Path)) else item
            img = open_image(data, max_pixels=self.limits.max_pixels, max_pixels_full=self.limits.max_pixels_full)
            return data, gpu_eligible(img, data, self.preprocess.resize_size)
        except ImageError as e:
            return Failure(e.reason, e.message)
        except FileNotFoundError:
            return Failure("not_found", "no such file")
        except OSError as e:
            return Failure("unreadable", f"cannot read the file: {e.strerror or e}")

    def _decode_on_nvimgcodec(self, data: list[bytes]) -> list[np.ndarray | None]:
        """HWC uint8 arrays in input order; None where nvImageCodec could not decode an image."""
        if not data:
            return []
        streams = [self._nvimgcodec.CodeStream(d) for d in data]
        images = self.decoder.decode(streams, params=self._params)
        if len(images) != len(data):  # an older nvImageCodec dropped the failures: positions are unknown
            self.stats["one_by_one"] += 1
            images = [self.decoder.decode(s, params=self._params) for s in streams]
        return [None if img is None else _host_rgb(img) for img in images]

    def _finish(self, hwc: np.ndarray, out: np.ndarray) -> None:
        self.preprocess(Image.fromarray(hwc, "RGB"), out)

    def batches(self, paths: Sequence[str], batch_size: int, prefetch: int = 2
                ) -> Iterator[tuple[list[int], np.ndarray | None, dict[int, Failure]]]:
        """Like :func:`imgcls.loader.preprocessed_batches`: (indices into ``paths``, a (n, 3, S, S) array or None,
        failures by index), in order, one batch decoded ahead per ``prefetch`` in a background thread."""
        size = self.preprocess.input_size
        ahead = ThreadPoolExecutor(1, thread_name_prefix="gpu-batch")

        def one(start: int) -> tuple[int, np.ndarray, dict[int, Failure]]:
            chunk = paths[start:start + batch_size]
            buf = np.empty((len(chunk), 3, size, size), np.float32)
            return start, buf, self.decode_into(chunk, buf)

        starts = iter(range(0, len(paths), batch_size))
        pending = [ahead.submit(one, s) for s in [next(starts, None) for _ in range(prefetch + 1)] if s is not None]
        try:
            while pending:
                start, buf, failures = pending.pop(0).result()
                if (s := next(starts, None)) is not None:
                    pending.append(ahead.submit(one, s))
                ok = [j for j in range(len(buf)) if j not in failures]
                batch = buf if len(ok) == len(buf) else (buf[ok] if ok else None)
                yield [start + j for j in ok], batch, {start + j: f for j, f in failures.items()}
        finally:
            ahead.shutdown(wait=True, cancel_futures=True)


def _host_rgb(img: Any) -> np.ndarray:
    """An nvImageCodec image (on the device or the host) as a host HWC uint8 RGB array."""
    arr = np.asarray(img.cpu())  # a copy from the device; a host image is returned as it is
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3], dtype=np.uint8)
