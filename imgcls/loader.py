"""Decoding and preprocessing many image files in parallel threads (Pillow and numpy release the GIL)."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import numpy as np

from imgcls.images import ImageError, decode_image
from imgcls.preprocess import Preprocess


def preprocessed_batches(paths: list[Path], preprocess: Preprocess, batch_size: int = 32,
                         workers: int = 2) -> Iterator[tuple[list[int], np.ndarray | None, dict[int, str]]]:
    """Decode and preprocess ``paths`` in threads; yields (indices, batch, errors by index) per batch."""
    def load(i: int):
        try:
            return i, preprocess(decode_image(paths[i], draft_size=preprocess.resize_size)), None
        except (ImageError, OSError) as e:
            return i, None, str(e)

    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(paths), batch_size):
            results = list(pool.map(load, range(start, min(start + batch_size, len(paths)))))
            good = [(i, a) for i, a, _ in results if a is not None]
            yield ([i for i, _ in good], np.stack([a for _, a in good]) if good else None,
                   {i: e for i, _, e in results if e})
