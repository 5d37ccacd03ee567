"""Adaptive batching of single-image requests: crops waiting while the model is busy go in together.

An idle service sends a lone request at once (no added latency); while ``max_in_flight`` calls run, new crops
queue, and the next call takes all of them (up to ``max_batch``). One call at a time (``LocalModel``) keeps ONNX
Runtime's threads on the batch at hand.
"""
from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["Coalescer"]


class Coalescer:
    """``await submit(item)`` -> its answer from ``send(items)``, with at most ``max_in_flight`` calls at a time."""

    def __init__(self, send: Callable[[list[Any]], Awaitable[list[Any]]], max_batch: int,
                 max_in_flight: int = 1) -> None:
        self.send, self.max_batch, self.max_in_flight = send, max_batch, max_in_flight
        self.pending: list[tuple[Any, asyncio.Future]] = []
        self.in_flight = 0
        self._calls: set[asyncio.Task] = set()  # the loop keeps only weak references to tasks: without these a
        # call could be garbage-collected mid-flight and its waiters would wait for ever

    async def submit(self, item: Any) -> Any:
        future = asyncio.get_running_loop().create_future()
        self.pending.append((item, future))
        self._start_calls()
        return await future

    def _start_calls(self) -> None:
        while self.pending and self.in_flight < self.max_in_flight:
            batch, self.pending = self.pending[: self.max_batch], self.pending[self.max_batch:]
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._call(batch))
            self._calls.add(task)
            task.add_done_callback(self._calls.discard)

    async def _call(self, batch: list[tuple[Any, asyncio.Future]]) -> None:
        try:
            answers = await self.send([item for item, _ in batch])
            for (_, future), answer in zip(batch, answers):
                if not future.done():
                    future.set_result(answer)
        except BaseException as e:  # noqa: BLE001 - every waiter gets the failure (a 503 ImgclsError, usually)
            for _, future in batch:
                if not future.done():
                    future.set_exception(e)
        finally:
            self.in_flight -= 1
            self._start_calls()
