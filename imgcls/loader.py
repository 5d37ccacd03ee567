"""Decoding and preprocessing many image files in parallel threads (Pillow and numpy release the GIL)."""
from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from imgcls.images import ImageError, decode_image
from imgcls.preprocess import Preprocess


def preprocessed_batches(paths: list[Path], preprocess: Preprocess, batch_size: int = 32, workers: int = 2,
                         prefetch: int = 2) -> Iterator[tuple[list[int], np.ndarray | None, dict[int, str]]]:
    """Decode and preprocess ``paths`` in threads, ``prefetch`` batches ahead of the consumer.

    Yields (indices, batch, errors by index) per batch; unreadable files appear only in the errors.
    """
    def load(i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            return i, preprocess(decode_image(paths[i], draft_size=preprocess.resize_size)), None
        except (ImageError, OSError) as e:
            return i, None, str(e)

    indices = iter(range(len(paths)))
    pending: deque[Future] = deque()
    with ThreadPoolExecutor(workers) as pool:
        def fill() -> None:
            while len(pending) < batch_size * (prefetch + 1):
                i = next(indices, None)
                if i is None:
                    return
                pending.append(pool.submit(load, i))

        fill()
        while pending:
            results = [pending.popleft().result() for _ in range(min(batch_size, len(pending)))]
            fill()
            good = [(i, a) for i, a, _ in results if a is not None]
            yield ([i for i, _ in good], np.stack([a for _, a in good]) if good else None,
                   {i: e for i, _, e in results if e})
