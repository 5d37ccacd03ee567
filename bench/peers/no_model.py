"""Servers that take the upload and answer a fixed classification without any model: what the HTTP machinery of
each framework costs per request on its own (``bench/http_floor.py``).

    python -m uvicorn bench.peers.no_model:starlette_app --port N --no-access-log      Starlette's form parser
    bentoml serve bench.peers.no_model:BentoNoModel --port N                          this service's endpoint shape
    bentoml serve bench.peers.no_model:BentoNoModelLayers --port N                    ... with this service's layers
    python -m bench.peers.litserve_no_model                                           LitServe (PEER_PORT)

The BentoML ones take the same typed parameters as ``/classify`` (a file spooled by BentoML to a path, ``k``,
``flag``), read the upload's bytes and answer the same pydantic ``Classification``, with the service's options
(one worker here: its tracing, metrics and access-log settings).
"""
from __future__ import annotations

from pathlib import Path

import bentoml
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from bench.peers import ANSWER
from service.schemas import Classification
from service.service import SERVICE_OPTIONS, with_middlewares


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
