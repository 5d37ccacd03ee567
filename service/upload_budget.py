"""A budget of upload bytes the service holds in memory at once.

An upload is read whole into memory, then BentoML parses it and the endpoint reads it again: 200 clients sending
9 MB images at once held several GB. Here every upload reserves its size (its ``Content-Length``, or the body limit
when it sends none) before a byte of it is read, and gives it back when its answer is sent. An upload that does not
fit waits, first come first served, for up to ``wait_s`` seconds, and is then answered 503 with ``Retry-After``;
meanwhile its bytes stay in the client's socket (uvicorn stops reading a connection whose body is not consumed).
A reservation is all or nothing, so uploads waiting for each other's bytes cannot deadlock.
"""
from __future__ import annotations

from collections import deque

import anyio

from imgcls.errors import ImgclsError

__all__ = ["ByteBudget"]


class ByteBudget:
    """``capacity`` bytes shared by the uploads in flight (FIFO waiting; see the module docstring)."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity, self.wait_s = capacity, wait_s
        self.used = 0
        self._waiting: deque[tuple[int, anyio.Event]] = deque()

    async def reserve(self, n: int) -> int:
        """Reserve ``n`` bytes (at most the whole capacity), waiting for them; returns what was reserved, to give to
        :meth:`release`. Raises a 503 :class:`ImgclsError` after ``wait_s`` seconds."""
        n = min(n, self.capacity)
        if not self._waiting and self.used + n <= self.capacity:
            self.used += n
            return n
        ticket = (n, anyio.Event())
        self._waiting.append(ticket)
        try:
            with anyio.move_on_after(self.wait_s):
                await ticket[1].wait()
        except BaseException:  # cancelled (the client went away): nothing stays reserved or queued
            self._abandon(ticket)
            raise
        if ticket[1].is_set():
            return n  # _wake counted it in
        self._abandon(ticket)
        raise ImgclsError(503, "busy", f"the service holds {self.used} bytes of uploads (UPLOAD_BUDGET_BYTES="
                          f"{self.capacity}) and this one waited {self.wait_s:g} s for room; retry shortly",
                          {"Retry-After": "2"})

    def release(self, n: int) -> None:
        self.used -= n
        self._wake()

    def _abandon(self, ticket: tuple[int, anyio.Event]) -> None:
        if ticket[1].is_set():
            self.release(ticket[0])
        else:
            self._waiting.remove(ticket)
            self._wake()  # a smaller upload behind this one may fit now

    def _wake(self) -> None:
        while self._waiting and self.used + self._waiting[0][0] <= self.capacity:
            n, event = self._waiting.popleft()
            self.used += n
            event.set()
