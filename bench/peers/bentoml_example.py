"""The serving pattern of BentoML's own examples: ``@bentoml.api(batchable=True)`` over a list of PIL images.

    bentoml serve bench.peers.bentoml_example:BentoExample --port N      (PEER_MODEL_DIR names the version)

BentoML parses the multipart field ``image`` into a ``PIL.Image`` and its adaptive batcher groups requests.
"""
from __future__ import annotations

import os

import bentoml
from PIL import Image

from bench.peers import MAX_BATCH
from bench.peers.onnx_peer import OnnxPeerModel


@bentoml.service(name="bento_example", workers=1, resources={"cpu": str(os.cpu_count() or 1)},
                 traffic={"timeout": 60})
class BentoExample:
    def __init__(self) -> None:
        self.model = OnnxPeerModel()

    # max_latency_ms as this service's: a few hundred ms made the batcher answer 503 under CPU load (NOTES.md).
    @bentoml.api(route="/classify", batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=10_000)
    def classify(self, image: list[Image.Image]) -> list[dict]:
        return self.model.classify([self.model.from_pil(img) for img in image])
