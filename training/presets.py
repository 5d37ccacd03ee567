"""Training and evaluation presets (as in torchvision's references/classification/presets.py).

Both end in the same :class:`imgcls.preprocess.Preprocess`: evaluation is exactly it, training augments the
decoded image first and then normalises it the same way. The augmentation models what photos from other sources
do to the same subjects: lower resolution (half the views are shrunk to a shorter side of 80-224 px first, then
scaled back up by the crop), JPEG recompression (half, at quality 40-95), other crops and aspect ratios (random
resized crop), mirror images and other cameras' colours (flip, colour jitter).
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
            T.RandomApply([T.RandomResize(80, 224, antialias=True)], p=0.5),
            T.RandomApply([T.JPEG((40, 95))], p=0.5),
            T.RandomResizedCrop(preprocess.input_size, scale=(0.35, 1.0), antialias=True),
            T.RandomHorizontalFlip(hflip_prob),
            T.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter),
        ])

    @property
    def settings(self) -> str:
        """Every augmentation parameter, as text (torchvision's repr lists them): names cached augmented views."""
        # RandomApply's repr leaves out its probability: name it here.
        return " ".join(repr(self.augment).split()) + " RandomApply.p=0.5,0.5"

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.preprocess.normalize(self.augment(img))


class ClassificationPresetEval:
    def __init__(self, preprocess: Preprocess) -> None:
        self.preprocess = preprocess

    def __call__(self, img: Image.Image) -> np.ndarray:
        return self.preprocess(img)
