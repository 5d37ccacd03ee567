"""TorchServe handler: TorchServe's image classifier over the version's torch checkpoint.

The .mar holds the version's ``checkpoint.pt`` and ``metadata.json``; ``training.checkpoint.load_model`` rebuilds
the eager torch model from them (PYTHONPATH must reach the project). Images are decoded and preprocessed as the
ONNX peers do (``imgcls``, the parameters in the version's metadata), since TorchServe's default ImageNet transform
is not this model's. Requests: multipart field ``image`` (or a raw body) on ``POST /predictions/imgcls``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from ts.torch_handler.image_classifier import ImageClassifier

from bench.peers import answers
from imgcls.images import decode_image
from imgcls.metadata import ModelCard
from training.checkpoint import load_model


class CheckpointImageClassifier(ImageClassifier):
    def initialize(self, context) -> None:
        torch.set_num_threads(os.cpu_count() or 1)  # the same CPU budget as the ONNX peers' intra-op threads
        model_dir = Path(context.system_properties["model_dir"])
        card = ModelCard.load(model_dir)
        self.labels = list(card.labels)
        self.transform = card.preprocessing
        self.device = torch.device("cpu")
        self.model = load_model(model_dir)
        self.initialized = True

    def preprocess(self, data: list[dict]) -> torch.Tensor:
        arrays = []
        for row in data:
            raw = row.get("image") or row.get("data") or row.get("body")
            arrays.append(self.transform(decode_image(bytes(raw), draft_size=self.transform.resize_size)))
        return torch.from_numpy(np.stack(arrays))

    def postprocess(self, logits: torch.Tensor) -> list[dict]:
        return answers(self.labels, torch.softmax(logits, dim=1).numpy())
