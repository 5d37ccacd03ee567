"""How the endpoints reach the model in their process: :class:`LocalModel`.

It answers typed values (:mod:`service.answers`) or raises :class:`~imgcls.errors.ImgclsError`, and merges the crops
that wait while the model is busy into the next batch (:class:`service.coalesce.Coalescer`): an idle service runs a
lone request at once, a busy one runs batches as large as the queue, up to ``MAX_BATCH_SIZE``.
"""
from __future__ import annotations

from typing import Any

import anyio
import numpy as np

from imgcls.errors import ImgclsError
from service.answers import Explanation, Prediction, raise_error
from service.coalesce import Coalescer
from service.config import Config
from service.inference import Inference

__all__ = ["LocalModel"]


class LocalModel:
    """The model in this process: one batch at a time (decoding, preprocessing, ONNX Runtime) in a worker thread,
    so no request pays for a call to another process, nor for a thread of its own."""

    def __init__(self, config: Config) -> None:
        self.inference = Inference(config)
        self.coalescer = Coalescer(self._run, config.max_batch_size, max_in_flight=1)

    @property
    def ready(self) -> bool:
        return self.inference.ready

    async def _run(self, images: list[bytes | np.ndarray]) -> list[Prediction | ImgclsError]:
        return await anyio.to_thread.run_sync(self.inference.infer, images)

    async def infer(self, image: bytes | np.ndarray) -> Prediction:
        """An encoded image's (or a crop's) answer, from the next batch (:meth:`Inference.infer`)."""
        return raise_error(await self.coalescer.submit(image))

    async def explain(self, crop: np.ndarray, label: str | None) -> Explanation:
        return await anyio.to_thread.run_sync(self.inference.explain, crop, label)

    async def describe(self) -> dict[str, Any]:
        return self.inference.describe()

    async def reload(self) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(self.inference.reload)
