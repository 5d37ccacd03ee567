"""Class activation maps as PNG overlays, with numpy and Pillow only."""
from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["jet", "overlay_png"]


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
