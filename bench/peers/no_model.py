"""Servers that take the upload and answer a fixed classification without any model: what the HTTP machinery of
each framework costs per request on its own (``bench/http_floor.py``).

    python -m uvicorn bench.peers.no_model:starlette_app --port N --no-access-log      Starlette's form parser
    bentoml serve bench.peers.no_model:BentoNoModel --port N              /classify's signature on BentoML's Path
    bentoml serve bench.peers.no_model:ServicePathNoModel --port N        this service's HTTP path without a model
    python -m bench.peers.litserve_no_model                                           LitServe (PEER_PORT)

The BentoML ones take the same typed parameters as ``/classify`` (``k``, ``flag`` and the file: BentoML's ``Path``,
which BentoML writes to a temporary file, or this service's in-memory upload), read the upload's bytes and answer
the same pydantic ``Classification``, with the service's options (one worker here: its tracing, metrics and
access-log settings); the second also has the service's ASGI layers (service/middleware.py).
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
from service.upload_file import UploadedFile


async def _classify(request: Request) -> JSONResponse:
    form = await request.form()
    await form["image"].read()
    return JSONResponse(ANSWER.model_dump())


starlette_app = Starlette(routes=[Route("/classify", _classify, methods=["POST"]),
                                  Route("/readyz", lambda r: JSONResponse({}))])
_OPTIONS = {**SERVICE_OPTIONS, "workers": 1, "description": None}


@bentoml.service(**{**_OPTIONS, "name": "no_model"})
class BentoNoModel:
    @bentoml.api(route="/classify")
    async def classify(self, image: Path, k: int | None = None, flag: bool = False) -> Classification:
        image.read_bytes()
        return ANSWER


@with_middlewares
@bentoml.service(**{**_OPTIONS, "name": "service_path_no_model"})
class ServicePathNoModel:
    @bentoml.api(route="/classify")
    async def classify(self, image: UploadedFile, k: int | None = None, flag: bool = False) -> Classification:
        image.read_bytes()
        return ANSWER
