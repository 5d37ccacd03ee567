"""The same HTTP API with the model in its own BentoML service:
``bentoml serve service.split:ImageClassifierSplit``.

Decoding stays in the API process and inference moves to :class:`service.inference.ModelService`, reached through
``bentoml.depends`` and batched by BentoML's adaptive batching (``@bentoml.api(batchable=True)``). Meant for GPU
hosts, where the two can scale apart (more API workers decoding for one GPU process:
``BENTOML_CONFIG_OPTIONS="services.image_classifier.workers=4 services.image_classifier_model.resources.gpu=1"``).
On a small CPU host every call between the two processes costs CPU the model needs, so service.service (one
process) is the default there: bench/bench_serving.py measures both.
"""
from __future__ import annotations

import bentoml

from service.inference import ModelService
from service.model_client import RemoteModel
from service.service import CONFIG, SERVICE_OPTIONS, ClassifierApi, web, with_middlewares


@with_middlewares
@bentoml.service(**SERVICE_OPTIONS)
@bentoml.asgi_app(web, path="/")
class ImageClassifierSplit(ClassifierApi):
    """The API here, the model in :class:`ModelService`; BentoML's ``/readyz`` waits for both."""

    inference = bentoml.depends(ModelService)

    def __init__(self) -> None:
        super().__init__(RemoteModel(self.inference, CONFIG))
