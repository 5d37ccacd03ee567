"""Ray Serve with ``@serve.batch``: ``python -m bench.peers.rayserve_server`` (PEER_MODEL_DIR, PEER_PORT).

A local Ray (no dashboard) runs one replica; ``POST /classify`` takes the multipart field ``image``, decodes and
preprocesses it off the event loop, and ``@serve.batch`` groups requests into one ONNX Runtime batch.
``GET /classify`` answers 200 once the replica is up (the harness's readiness probe).
"""
from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import ray
from ray import serve
from starlette.requests import Request
from starlette.responses import PlainTextResponse

from bench.peers import MAX_BATCH, MAX_WAIT_MS, port
from bench.peers.onnx_peer import OnnxPeerModel


@serve.deployment(num_replicas=1, max_ongoing_requests=4 * MAX_BATCH,
                  ray_actor_options={"num_cpus": os.cpu_count() or 1})
class Classifier:
    def __init__(self) -> None:
        self.model = OnnxPeerModel()

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=MAX_WAIT_MS / 1000)
    async def classify(self, arrays: list[np.ndarray]) -> list[dict]:
        return self.model.classify(arrays)

    async def __call__(self, request: Request):
        if request.method == "GET":
            return PlainTextResponse("ready")
        form = await request.form()
        data = await form["image"].read()
        return await self.classify(await asyncio.to_thread(self.model.decode, data))


def main() -> None:
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port()})
    serve.run(Classifier.bind(), route_prefix="/classify")
    stop = asyncio.Event()

    async def wait() -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGINT, stop.set)
        await stop.wait()

    asyncio.run(wait())
    serve.shutdown()
    ray.shutdown()


if __name__ == "__main__":
    main()
