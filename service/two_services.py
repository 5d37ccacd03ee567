"""The same HTTP API with the model in its own BentoML service:
``bentoml serve service.two_services:ImageClassifierTwoServices``.

Decoding stays in the API process and inference moves to :class:`ModelService`, reached through
``bentoml.depends`` and batched by BentoML's adaptive batching (``@bentoml.api(batchable=True)``). Meant for GPU
hosts, where the two can scale apart (more API workers decoding for one GPU process:
``BENTOML_CONFIG_OPTIONS="services.image_classifier.workers=4 services.image_classifier_model.resources.gpu=1"``).
On a small CPU host every call between the two processes costs CPU the model needs, so service.service (one
process) is the default there: bench/bench_serving.py measures both. Answers cross the process boundary as the
dicts of :func:`service.answers.to_wire`.
"""
from __future__ import annotations

from typing import Any

import bentoml
import numpy as np

from imgcls.errors import ImgclsError
from service.answers import to_wire
from service.api import ClassifierApi, web
from service.config import Config
from service.inference import Inference
from service.lifecycle import exit_with_parent, linger_after_sigterm
from service.logs import configure_json_logging
from service.model_client import RemoteModel
from service.service import SERVICE_OPTIONS, with_middlewares

__all__ = ["ImageClassifierTwoServices", "ModelService"]
# BentoML fixes a batchable endpoint's batch size and latency when the class is decorated, so these two settings
# (MAX_BATCH_SIZE, MAX_LATENCY_MS) are the only ones read at import; every other one when a service is built.
_BATCHING = Config.from_env()


@bentoml.service(
    name="image_classifier_model",
    workers=1,  # one process owns the ONNX Runtime session; its threads use every core (or the GPU)
    traffic={"timeout": 60},
    metrics={"enabled": False},  # service/metrics.py
    logging={"access": {"enabled": False}},
)
class ModelService:
    """:class:`Inference` as a BentoML service: ``infer`` is batchable, so BentoML's adaptive batching merges the
    calls of the API workers into model batches."""

    def __init__(self) -> None:
        configure_json_logging()
        exit_with_parent()
        config = Config.from_env()
        linger_after_sigterm(config.shutdown_grace_s)
        self.inference = Inference(config)

    def __is_ready__(self) -> bool:
        return self.inference.ready

    @bentoml.api(batchable=True, max_batch_size=_BATCHING.max_batch_size, max_latency_ms=_BATCHING.max_latency_ms)
    def infer(self, crops: list[np.ndarray]) -> list[dict[str, Any]]:
        """Class probabilities for uint8 HWC crops at the model's input size, one answer per crop."""
        return [to_wire(a) for a in self.inference.infer(crops)]

    @bentoml.api
    def explain(self, crop: np.ndarray, label: str | None = None) -> dict[str, Any]:
        """Probabilities and the class activation map of ``label`` (default: the top class)."""
        return _answer(self.inference.explain, crop, label)

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        """The served version's metadata (trimmed) and the runtime it really uses."""
        return _answer(self.inference.describe)

    @bentoml.api
    def reload(self) -> dict[str, Any]:
        """Swap in the model ``MODEL`` names now."""
        return _answer(self.inference.reload)


def _answer(method: Any, *args: Any) -> dict[str, Any]:
    try:
        return to_wire(method(*args))
    except ImgclsError as e:
        return to_wire(e)


@with_middlewares
@bentoml.service(**SERVICE_OPTIONS)
@bentoml.asgi_app(web, path="/")
class ImageClassifierTwoServices(ClassifierApi):
    """The API here, the model in :class:`ModelService`; BentoML's ``/readyz`` waits for both."""

    inference = bentoml.depends(ModelService)

    def __init__(self) -> None:
        config = Config.from_env()
        super().__init__(config, RemoteModel(self.inference, config))
