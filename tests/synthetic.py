"""Synthetic labelled images for the fast tests: three classes told apart by colour, made in milliseconds.

Every image is a noisy field of its class's colour with a lighter rectangle at a random place, in random sizes
(wider or taller than square), saved as JPEG or PNG so decoding and resizing see real files."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("blue", "green", "red")  # sorted: label i is CLASSES[i], as the data reader numbers them
_RGB = {"blue": (40, 60, 200), "green": (40, 170, 60), "red": (200, 40, 40)}


def image(label: str, seed: int, size: tuple[int, int] | None = None) -> Image.Image:
    """One RGB image of class ``label``; the same ``seed`` gives the same pixels."""
    rng = np.random.default_rng([CLASSES.index(label), seed])
    w, h = size or (int(rng.integers(40, 90)), int(rng.integers(40, 90)))
    pixels = rng.normal(_RGB[label], 25, (h, w, 3))
    x, y = int(rng.integers(0, w // 2)), int(rng.integers(0, h // 2))
    pixels[y:y + h // 3, x:x + w // 3] += 50
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def image_bytes(label: str, seed: int, fmt: str = "JPEG", size: tuple[int, int] | None = None) -> bytes:
    buf = io.BytesIO()
    image(label, seed, size).save(buf, fmt, **({"quality": 92} if fmt == "JPEG" else {}))
    return buf.getvalue()


def write_split_folders(root: Path, per_class: dict[str, int]) -> Path:
    """``root/{split}/{class}/{class}-{split}-{i}.jpg`` (every fourth one a PNG); returns ``root``."""
    for split, n in per_class.items():
        for label in CLASSES:
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                fmt, ext = ("PNG", "png") if i % 4 == 3 else ("JPEG", "jpg")
                seed = {"train": 0, "val": 10_000, "test": 20_000}.get(split, 30_000) + i
                (folder / f"{label}-{split}-{i}.{ext}").write_bytes(image_bytes(label, seed, fmt))
    return root
