"""LitServe taking the upload and answering a fixed classification without a model (``bench/http_floor.py``):
``python -m bench.peers.litserve_no_model`` (PEER_PORT). Batching as in ``litserve_server.py``."""
from __future__ import annotations

import litserve as ls

from bench.peers import ANSWER, MAX_BATCH, MAX_WAIT_MS, port


class NoModelAPI(ls.LitAPI):
    def setup(self, device: str) -> None:
        pass

    def decode_request(self, request) -> bytes:
        return request["image"].file.read()

    def predict(self, batch: list[bytes]) -> list[dict]:
        return [ANSWER.model_dump() for _ in batch]

    def encode_response(self, output: dict) -> dict:
        return output


def main() -> None:
    api = NoModelAPI(max_batch_size=MAX_BATCH, batch_timeout=MAX_WAIT_MS / 1000, api_path="/classify")
    ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60).run(
        host="127.0.0.1", port=port(), generate_client_file=False)


if __name__ == "__main__":
    main()
