"""The one definition of evaluation-time preprocessing.

Training (feature extraction and augmentation's last step), ONNX export checks, evaluation, the service and batch
jobs all call :class:`Preprocess`; its parameters travel in each model version's metadata. Pure PIL + numpy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite (TF checkpoints) expects pixels scaled to [-1, 1]: (x/255 - 0.5) / 0.5.
SYMMETRIC_MEAN = (0.5, 0.5, 0.5)
SYMMETRIC_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class Preprocess:
    """Resize the shorter side to ``resize_size``, centre-crop ``input_size``, scale to [0, 1], normalise."""

    input_size: int = 224
    resize_size: int = 256
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocess":
        return cls(int(d["input_size"]), int(d["resize_size"]), tuple(d["mean"]), tuple(d["std"]))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "layout": "NCHW", "dtype": "float32"}

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Shorter side to ``resize_size`` (bilinear, antialiased), then the centre ``input_size`` square."""
        w, h = img.size
        scale = self.resize_size / min(w, h)
        nw, nh = max(self.input_size, round(w * scale)), max(self.input_size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BILINEAR)
        left, top = (nw - self.input_size) // 2, (nh - self.input_size) // 2
        return img.crop((left, top, left + self.input_size, top + self.input_size))

    def normalize(self, img: Image.Image) -> np.ndarray:
        """An RGB image as a normalised float32 CHW array."""
        arr = np.asarray(img, dtype=np.float32)
        mean = np.asarray(self.mean, dtype=np.float32) * 255.0
        inv_std = 1.0 / (np.asarray(self.std, dtype=np.float32) * 255.0)
        return np.ascontiguousarray(((arr - mean) * inv_std).transpose(2, 0, 1))

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.normalize(self.resize_crop(img))

    def denormalize(self, chw: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`normalize`, as HWC uint8 (for plots)."""
        arr = chw.transpose(1, 2, 0) * (np.asarray(self.std) * 255.0) + np.asarray(self.mean) * 255.0
        return np.clip(arr, 0, 255).astype(np.uint8)
