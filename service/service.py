"""The HTTP API: ``bentoml serve service.service:ImageClassifier`` (``imgcls serve``).

The endpoints are :class:`service.api.ClassifierApi`; each worker process runs inference itself
(:class:`service.model_client.LocalModel`). Every error is JSON ``{"error", "detail"}`` with a 4xx/503 status.
Settings: service/config.py.
"""
from __future__ import annotations

import bentoml

from service.api import ClassifierApi, web
from service.config import Config
from service.middleware import ApiLayers
from service.model_client import LocalModel

__all__ = ["SERVICE_OPTIONS", "ImageClassifier", "with_middlewares"]

# The docs page at / (and /docs.json's description) shows this instead of BentoML's generic text and badges.
DESCRIPTION = """\
# Image classifier

Classifies photos with a frozen ImageNet CNN and a head trained on the served model's classes (cats and dogs by
default), in ONNX Runtime; it also says when an image looks like none of them (`known: false`).

- `POST /classify`: one image (multipart field `image`, or the raw bytes with an `image/*` Content-Type); `k` keeps
  the top k classes.
- `POST /classify_batch`: several images (repeated field `images`); a bad image gets an error entry of its own.
- `POST /explain`: the class activation map of the predicted class (or `label`) as a PNG, or `format=json`.
- `POST /feedback`: an image with its correct `label` for the next retraining (bearer token).
- `GET /model`: the served version, its metrics and the runtime; `GET /demo`: a page to try it in a browser.

Every error is JSON `{"error": code, "detail": text}` with a 4xx status (503 with `Retry-After` while no model
is served or the queue is full).
"""


class DescribedService(bentoml.Service):
    """A BentoML service whose docs page shows its own ``description`` (BentoML's shows a generic text)."""

    @property
    def doc(self) -> str:
        return self.description or super().doc


# BentoML fixes a service's processes and tracing when the class is decorated: these two settings are the only
# ones read at import (every other one when a worker builds its service).
_LAYOUT = Config.from_env()
SERVICE_OPTIONS = dict(
    name="image_classifier",
    description=DESCRIPTION,
    service_class=DescribedService,
    # One Python process cannot keep more than about one core busy (docs/request_path.md): one worker per usable
    # CPU, each with its own model, ONNX Runtime threads = usable CPUs / workers.
    workers=_LAYOUT.workers,
    traffic={"timeout": 60},
    metrics={"enabled": False},  # service/metrics.py: BentoML's label each raw path (unbounded series)
    logging={"access": {"enabled": False}},  # service/logs.py writes one JSON line per request
    # BentoML's OpenTelemetry middleware costs CPU on every request even with no exporter: off unless TRACING=1.
    **({} if _LAYOUT.tracing else {"tracing": {"excluded_urls": [".*"]}}),
)


def with_middlewares(svc):
    """The HTTP layers every topology shares (:class:`service.middleware.ApiLayers`)."""
    svc.add_asgi_middleware(ApiLayers)
    return svc


@with_middlewares
@bentoml.service(**SERVICE_OPTIONS)
@bentoml.asgi_app(web, path="/")
class ImageClassifier(ClassifierApi):
    """The service, in each worker: the API reads and checks uploads; the model's thread decodes the coalesced
    batches and runs ONNX Runtime on them."""

    def __init__(self) -> None:
        config = Config.from_env()
        super().__init__(config, LocalModel(config))

    def __is_ready__(self) -> bool:
        return self.model_client.ready
