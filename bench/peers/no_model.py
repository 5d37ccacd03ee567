"""Servers that take the upload and answer a fixed classification without any model: what the HTTP machinery of
each framework costs per request on its own (``bench/http_floor.py``).

    python -m uvicorn bench.peers.no_model:starlette_app --port N --no-access-log      Starlette's form parser
    bentoml serve bench.peers.no_model:BentoNoModel --port N                          this service's endpoint shape
    bentoml serve bench.peers.no_model:BentoNoModelLayers --port N                    ... with this service's layers
    python -m bench.peers.no_model litserve                                           LitServe (PEER_PORT)

The BentoML ones take the same typed parameters as ``/classify`` (a file spooled by BentoML to a path, ``k``,
``flag``), read the upload's bytes and answer the same pydantic ``Classification``, with the service's options
(one worker here: its tracing, metrics and access-log settings).
"""
from __future__ import annotations

import sys
from pathlib import Path

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from service.schemas import Classification, ModelRef, Probability
from service.service import SERVICE_OPTIONS, with_middlewares

ANSWER = Classification(label="cat", score=0.99, probabilities=[Probability(label="cat", score=0.99),
                                                               Probability(label="dog", score=0.01)],
                        model=ModelRef(name="none", version="none", variant="int8"), known=True, novelty=0.1)


async def _classify(request: Request) -> JSONResponse:
    form = await request.form()
    await form["image"].read()
    return JSONResponse(ANSWER.model_dump())


starlette_app = Starlette(routes=[Route("/classify", _classify, methods=["POST"]),
                                  Route("/readyz", lambda r: JSONResponse({}))])
_OPTIONS = {**SERVICE_OPTIONS, "workers": 1, "description": None}


class _NoModel:
    @bentoml.api(route="/classify")
    async def classify(self, image: Path, k: int | None = None, flag: bool = False) -> Classification:
        image.read_bytes()
        return ANSWER


@bentoml.service(**{**_OPTIONS, "name": "no_model"})
class BentoNoModel(_NoModel):
    pass


@with_middlewares
@bentoml.service(**{**_OPTIONS, "name": "no_model_layers"})
class BentoNoModelLayers(_NoModel):
    pass


def litserve() -> None:
    import litserve as ls

    from bench.peers import MAX_BATCH, MAX_WAIT_MS, port

    class NoModelAPI(ls.LitAPI):
        def setup(self, device: str) -> None:
            pass

        def decode_request(self, request) -> bytes:
            return request["image"].file.read()

        def predict(self, batch: list[bytes]) -> list[dict]:
            return [ANSWER.model_dump() for _ in batch]

        def encode_response(self, output: dict) -> dict:
            return output

    api = NoModelAPI(max_batch_size=MAX_BATCH, batch_timeout=MAX_WAIT_MS / 1000, api_path="/classify")
    ls.LitServer(api, accelerator="cpu", workers_per_device=1, timeout=60).run(
        host="127.0.0.1", port=port(), generate_client_file=False)


if __name__ == "__main__" and sys.argv[1:] == ["litserve"]:
    litserve()
