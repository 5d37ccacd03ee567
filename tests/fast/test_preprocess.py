"""The one preprocessing definition gives torchvision's ``Resize`` + ``CenterCrop`` + ``ToTensor`` + ``Normalize``
(what the torchvision weights were trained with) within one uint8 level, for every aspect and size."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from torchvision import transforms as T

from imgcls.preprocess import IMAGENET_MEAN, IMAGENET_STD, SYMMETRIC_MEAN, SYMMETRIC_STD, Preprocess


def noisy_image(w: int, h: int, seed: int = 0) -> Image.Image:
    """Smooth colour blobs plus pixel noise: high frequencies make any misplaced pixel show."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    return Image.fromarray(np.clip(np.asarray(base) + rng.normal(0, 25, (h, w, 3)), 0, 255).astype(np.uint8))


@pytest.mark.parametrize("pre", [Preprocess(224, 256, IMAGENET_MEAN, IMAGENET_STD),
                                 Preprocess(224, 256, SYMMETRIC_MEAN, SYMMETRIC_STD),
                                 Preprocess(32, 36, IMAGENET_MEAN, IMAGENET_STD)],
                         ids=["imagenet", "symmetric", "tiny"])
@pytest.mark.parametrize("size", [(640, 480), (480, 640), (300, 301), (301, 300), (599, 400), (257, 1000),
                                  (224, 224), (100, 80), (37, 36)])
def test_preprocess_equals_torchvision_resize_center_crop_normalize(pre: Preprocess, size: tuple[int, int]) -> None:
    img = noisy_image(*size)
    reference = T.Compose([
        T.Resize(pre.resize_size, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
        T.CenterCrop(pre.input_size), T.ToTensor(), T.Normalize(pre.mean, pre.std),
    ])(img).numpy()
    ours = pre(img)
    assert ours.shape == reference.shape == (3, pre.input_size, pre.input_size) and ours.dtype == np.float32
    levels = np.abs(ours - reference) * (np.asarray(pre.std, np.float32) * 255)[:, None, None]
    assert levels.max() <= 1.0 + 1e-3  # Pillow's one-pass box resize rounds a few pixels the other way
    assert levels.mean() < 0.02
