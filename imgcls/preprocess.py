"""The one definition of evaluation-time preprocessing.

Training (feature extraction and augmentation's last step), ONNX export checks, evaluation, the service and batch
jobs all call :class:`Preprocess`; its parameters travel in each model version's metadata. Pure PIL + numpy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "SYMMETRIC_MEAN", "SYMMETRIC_STD", "Preprocess"]

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
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        return cls(int(d["input_size"]), int(d["resize_size"]), tuple(d["mean"]), tuple(d["std"]))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std), "layout": "NCHW", "dtype": "float32"}

    def resize_crop(self, img: Image.Image) -> Image.Image:
        """Shorter side to ``resize_size`` (bilinear, antialiased), then the centre ``input_size`` square: the
        pixels of torchvision's ``Resize(resize_size)`` + ``CenterCrop(input_size)`` (tests/fast check it).

        Done as one resize of the source region that the crop keeps (Pillow's ``box``): the same pixels as
        resizing the whole image and cropping (within rounding), at about half the cost.
        """
        w, h = img.size
        # The resized size exactly as torchvision's Resize(resize_size) computes it (the long side truncated).
        short, long = (w, h) if w <= h else (h, w)
        new_long = int(self.resize_size * long / short)
        nw, nh = (self.resize_size, new_long) if w <= h else (new_long, self.resize_size)
        nw, nh = max(self.input_size, nw), max(self.input_size, nh)
        # CenterCrop's offsets, with Python's round() as torchvision rounds them (half to even).
        left, top = int(round((nw - self.input_size) / 2)), int(round((nh - self.input_size) / 2))
        sx, sy = nw / w, nh / h
        box = (left / sx, top / sy, (left + self.input_size) / sx, (top + self.input_size) / sy)
        return img.resize((self.input_size, self.input_size), Image.BILINEAR, box=box)

    def normalize(self, img: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        """An RGB image as a normalised float32 CHW array (into ``out`` if given): ``x * scale + offset``
        straight from uint8, in one pass."""
        chw = np.asarray(img).transpose(2, 0, 1)
        std = np.asarray(self.std, dtype=np.float32)
        out = np.empty(chw.shape, np.float32) if out is None else out
        np.multiply(chw, (1.0 / (255.0 * std))[:, None, None], out=out, casting="unsafe")
        out += (-np.asarray(self.mean, dtype=np.float32) / std)[:, None, None]
        return out

    def __call__(self, img: Image.Image, out: np.ndarray | None = None) -> np.ndarray:
        return self.normalize(self.resize_crop(img), out)

    def denormalize(self, chw: np.ndarray) -> np.ndarray:
        """The inverse of :meth:`normalize`, as HWC uint8 (for plots)."""
        arr = chw.transpose(1, 2, 0) * (np.asarray(self.std) * 255.0) + np.asarray(self.mean) * 255.0
        return np.clip(arr, 0, 255).astype(np.uint8)
