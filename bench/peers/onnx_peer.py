"""What the ONNX peers share: the project's decoding, preprocessing and ONNX Runtime session (no torch)."""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from bench.peers import answers, model_dir, variant
from imgcls.images import decode_image
from imgcls.onnx_model import OnnxClassifier


class OnnxPeerModel:
    """The registry version's model file that the harness names (``PEER_VARIANT``: the one this service's
    ``MODEL_VARIANT=auto`` serves on this CPU, so that every server runs the same file) on CPU, one intra-op
    thread per core."""

    def __init__(self) -> None:
        self.model = OnnxClassifier(model_dir(), device="cpu", threads=os.cpu_count(), variant=variant())
        self.model.warmup()
        self.preprocess = self.model.preprocess

    def decode(self, data: bytes) -> np.ndarray:
        """Untrusted bytes to one preprocessed CHW array (raises ``imgcls.images.ImageError`` on bad input)."""
        return self.preprocess(decode_image(data, draft_size=self.preprocess.resize_size))

    def from_pil(self, img: Image.Image) -> np.ndarray:
        return self.preprocess(img.convert("RGB"))

    def classify(self, arrays: list[np.ndarray]) -> list[dict]:
        return answers(self.model.labels, self.model.predict(np.stack(arrays)))
