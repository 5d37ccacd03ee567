"""Training and evaluation presets (as in torchvision's references/classification/presets.py).

Both end in the same :class:`imgcls.preprocess.Preprocess`: evaluation is exactly it, training augments the
decoded image first (random resized crop, flip, colour jitter) and then normalises it the same way.
"""
from __future__ import annotations

import numpy as np
from PIL import Image
from torchvision.transforms import v2 as T

from imgcls.preprocess import Preprocess


class ClassificationPresetTrain:
    def __init__(self, preprocess: Preprocess, *, hflip_prob: float = 0.5, jitter: float = 0.3) -> None:
        self.preprocess = preprocess
        self.augment = T.Compose([
            T.RandomResizedCrop(preprocess.input_size, scale=(0.35, 1.0), antialias=True),
            T.RandomHorizontalFlip(hflip_prob),
            T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
        ])

    @property
    def settings(self) -> str:
        """Every augmentation parameter, as text (torchvision's repr lists them): names cached augmented views."""
        return " ".join(repr(self.augment).split())

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.preprocess.normalize(self.augment(img))


class ClassificationPresetEval:
    def __init__(self, preprocess: Preprocess) -> None:
        self.preprocess = preprocess

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.preprocess(img)
