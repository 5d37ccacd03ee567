"""Decoding and preprocessing many image files in parallel threads, ahead of the model (Pillow and numpy release
the GIL). Used by evaluation, export checks and batch jobs."""
from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from imgcls.images import ImageError, decode_image
from imgcls.preprocess import Preprocess

__all__ = ["Failure", "load_into", "preprocessed_batches"]


@dataclass(frozen=True)
class Failure:
    """Why one file could not be used: a stable ``reason`` code and a human ``detail``."""

    reason: str
    detail: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


def load_into(path: str | Path, preprocess: Preprocess, out: np.ndarray) -> Failure | None:
    """Decode and preprocess one file into ``out`` exactly as the service does; a bad file gives a Failure."""
    try:
        preprocess(decode_image(path, draft_size=preprocess.resize_size), out)
        return None
    except ImageError as e:
        return Failure(e.reason, e.message)
    except FileNotFoundError:
        return Failure("not_found", "no such file")
    except OSError as e:  # permission denied, a directory, an I/O error
        return Failure("unreadable", f"cannot read the file: {e.strerror or e}")
    except Exception as e:  # noqa: BLE001 - one odd file must not stop a job of millions
        return Failure("failed", f"{type(e).__name__}: {e}")


def preprocessed_batches(paths: list[str] | list[Path], preprocess: Preprocess, batch_size: int = 32,
                         workers: int = 2, prefetch: int = 2, nice: int = 0
                         ) -> Iterator[tuple[list[int], np.ndarray | None, dict[int, Failure]]]:
    """Batches of preprocessed images, in order, decoded by ``workers`` threads up to ``prefetch`` batches ahead
    of the consumer (memory: ``(prefetch + 1) * batch_size`` images). Threads may run at a lower priority
    (``nice``) so that the model's threads win the cores.

    Yields (indices into ``paths``, a (n, 3, S, S) float32 array or None, failures by index).
    """
    size = preprocess.input_size
    starts = iter(range(0, len(paths), batch_size))
    pending: deque[tuple[int, np.ndarray, list[Future]]] = deque()
    pool = ThreadPoolExecutor(workers, thread_name_prefix="decode", initializer=_lower_priority, initargs=(nice,))

    def submit_next() -> None:
        start = next(starts, None)
        if start is not None:
            n = min(batch_size, len(paths) - start)
            buf = np.empty((n, 3, size, size), np.float32)  # images are written in place: no stacking copy
            pending.append((start, buf, [pool.submit(load_into, paths[start + j], preprocess, buf[j])
                                         for j in range(n)]))

    try:
        for _ in range(prefetch + 1):
            submit_next()
        while pending:
            start, buf, futures = pending.popleft()
            failures = {start + j: f for j, fut in enumerate(futures) if (f := fut.result()) is not None}
            submit_next()
            ok = [j for j in range(len(buf)) if start + j not in failures]
            batch = buf if len(ok) == len(buf) else (buf[ok] if ok else None)
            yield [start + j for j in ok], batch, failures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _lower_priority(nice: int) -> None:
    """Raise the calling thread's nice value by ``nice`` (Linux schedules threads one by one)."""
    if nice > 0:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), os.getpriority(os.PRIO_PROCESS, 0) + nice)
        except OSError:
            pass
