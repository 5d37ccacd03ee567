"""Class activation maps (Zhou et al. 2016), all in one place: the map of one class from a linear head's weights and
a feature map (used by the service and the training report), and its picture, a PNG overlay (numpy and Pillow only).
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["class_activation_map", "jet", "overlay_png"]


def class_activation_map(class_weights: np.ndarray, fmap: np.ndarray) -> np.ndarray:
    """The CAM of one class for one image: ``class_weights`` (K,) of a linear head over the average-pooled
    feature map ``fmap`` (K, h, w), summed over channels and scaled to [0, 1] (all zeros when flat)."""
    cam = np.tensordot(np.asarray(class_weights, np.float32), np.asarray(fmap, np.float32), axes=(0, 0))
    cam -= cam.min()
    peak = cam.max()
    return cam / peak if peak > 0 else cam


def jet(values: np.ndarray) -> np.ndarray:
    """The 'jet' colormap for values in [0, 1], as uint8 RGB."""
    v = np.clip(values, 0.0, 1.0)[..., None]
    rgb = np.clip(1.5 - np.abs(4.0 * v - np.array([3.0, 2.0, 1.0])), 0.0, 1.0)
    return (rgb * 255).astype(np.uint8)


def overlay_png(image: Image.Image, cam: np.ndarray, alpha: float = 0.45) -> bytes:
    """``cam`` (h, w) in [0, 1], upsampled bilinearly and blended over ``image``, encoded as PNG."""
    size = image.size
    cam_img = Image.fromarray((cam * 255).astype(np.uint8), "L").resize(size, Image.BILINEAR)
    heat = Image.fromarray(jet(np.asarray(cam_img, np.float32) / 255.0), "RGB")
    out = io.BytesIO()
    Image.blend(image.convert("RGB"), heat, alpha).save(out, format="PNG")
    return out.getvalue()
