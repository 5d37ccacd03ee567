"""LitServe with batching: ``python -m bench.peers.litserve_server`` (PEER_MODEL_DIR, PEER_PORT).

Multipart field ``image`` on ``POST /classify``; ``decode_request`` runs the project's decoding + preprocessing
(in LitServe's inference worker, as its examples do), ``predict`` one ONNX Runtime batch.
"""
from __future__ import annotations

import litserve as ls
import numpy as np

from bench.peers import MAX_BATCH, MAX_WAIT_MS, port
from bench.peers.onnx_peer import OnnxPeerModel


class ClassifierAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        self.model = OnnxPeerModel()

    def decode_request(self, request) -> np.ndarray:
        return self.model.decode(request["image"].file.read())

    def batch(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return inputs  # stacked in predict, by OnnxPeerModel.classify

    def predict(self, batch: list[np.ndarray]) -> list[dict]:
        return self.model.classify(batch)

    def unbatch(self, output: list[dict]) -> list[dict]:
        return output

    def encode_response(self, output: dict) -> dict:
        return output


def main() -> None:
    api = ClassifierAPI(max_batch_size=MAX_BATCH, batch_timeout=MAX_WAIT_MS / 1000, api_path="/classify")
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60)
    server.run(host="127.0.0.1", port=port(), generate_client_file=False)


if __name__ == "__main__":
    main()
