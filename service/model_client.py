"""How the API service reaches the model: in its own process (:class:`LocalModel`, the default) or in a separate
BentoML service through ``bentoml.depends`` (:class:`RemoteModel`, service/two_services.py).

Both answer the same typed values (:mod:`service.answers`) or raise :class:`~imgcls.errors.ImgclsError`, and both
merge the crops that wait while the model is busy into the next batch (:class:`service.coalesce.Coalescer`): an
idle service runs a lone request at once, a busy one runs batches as large as the queue, up to ``MAX_BATCH_SIZE``.
"""
from __future__ import annotations

from typing import Any

import anyio
import numpy as np
from bentoml.exceptions import BentoMLException

from imgcls.errors import ImgclsError
from service.answers import Explanation, Prediction, from_wire, raise_error
from service.coalesce import Coalescer
from service.config import Config
from service.errors import overloaded
from service.inference import Inference

__all__ = ["LocalModel", "RemoteModel"]


class LocalModel:
    """The model in this process: one batch at a time in a worker thread (ONNX Runtime's own threads use every
    core), so no request pays for a call to another process."""

    def __init__(self, config: Config) -> None:
        self.inference = Inference(config)
        self.coalescer = Coalescer(self._run, config.max_batch_size, max_in_flight=1)

    @property
    def ready(self) -> bool:
        return self.inference.ready

    async def _run(self, crops: list[np.ndarray]) -> list[Prediction | ImgclsError]:
        return await anyio.to_thread.run_sync(self.inference.infer, crops)

    async def infer(self, crop: np.ndarray) -> Prediction:
        return raise_error(await self.coalescer.submit(crop))

    async def explain(self, crop: np.ndarray, label: str | None) -> Explanation:
        return await anyio.to_thread.run_sync(self.inference.explain, crop, label)

    async def describe(self) -> dict[str, Any]:
        return self.inference.describe()

    async def reload(self) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self.inference.reload)


class RemoteModel:
    """The model in the two-service topology's model service, reached through ``bentoml.depends``: BentoML's adaptive
    batching merges the calls of every API worker. Each call costs a request in both processes, so the crops
    waiting meanwhile travel together (two calls in flight keep the model busy between them)."""

    def __init__(self, dependency: Any, config: Config) -> None:
        self.dependency = dependency
        self.coalescer = Coalescer(self._infer_batch, config.max_batch_size, max_in_flight=2)

    async def _infer_batch(self, crops: list[np.ndarray]) -> list[Prediction | ImgclsError]:
        return [from_wire(d) for d in await self._call("infer", crops=crops)]

    async def infer(self, crop: np.ndarray) -> Prediction:
        return raise_error(await self.coalescer.submit(crop))

    async def explain(self, crop: np.ndarray, label: str | None) -> Explanation:
        return raise_error(from_wire(await self._call("explain", crop=crop, label=label)))

    async def describe(self) -> dict[str, Any]:
        return raise_error(from_wire(await self._call("describe")))

    async def reload(self) -> dict[str, Any]:
        return raise_error(from_wire(await self._call("reload")))

    async def _call(self, method: str, **kwargs: Any) -> Any:
        """A dropped connection (a keep-alive race) is retried once (every model call is idempotent); whatever
        still fails is a 503 with a reason, never a 500."""
        call = getattr(self.dependency.to_async, method)
        for attempt in (1, 2):
            try:
                return await call(**kwargs)
            except BentoMLException as e:
                status = getattr(getattr(e, "error_code", None), "value", 503)
                if status == 503:
                    raise overloaded(f"the model service is overloaded: {e}") from e
                raise ImgclsError(503, "model_unavailable", f"the model service failed: {e}",
                                  {"Retry-After": "1"}) from e
            except Exception as e:  # noqa: BLE001 - transport errors of the client BentoML uses
                if attempt == 2:
                    raise ImgclsError(503, "model_unavailable", f"the model service did not answer: "
                                                               f"{type(e).__name__}: {e}", {"Retry-After": "1"}) from e
        raise AssertionError("unreachable")
