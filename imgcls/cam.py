"""Class activation maps (Zhou et al. 2016): the one definition, used by the service and the training report."""
from __future__ import annotations

import numpy as np

__all__ = ["class_activation_map"]


def class_activation_map(class_weights: np.ndarray, fmap: np.ndarray) -> np.ndarray:
    """The CAM of one class for one image: ``class_weights`` (K,) of a linear head over the average-pooled
    feature map ``fmap`` (K, h, w), summed over channels and scaled to [0, 1] (all zeros when flat)."""
    cam = np.tensordot(np.asarray(class_weights, np.float32), np.asarray(fmap, np.float32), axes=(0, 0))
    cam -= cam.min()
    peak = cam.max()
    return cam / peak if peak > 0 else cam
