"""Refused requests answered no faster than a rate per client: a tarpit for clients that loop bad input.

Refusing a decompression bomb at its header costs well under a millisecond, but a client that loops it is answered
at once and sends the next: four such clients kept the HTTP loop saturated with hundreds of refusals a second, and
valid requests queued behind them. Here each client (by address; behind the proxy, the address it forwards) may
have ``burst`` requests refused at once, and beyond that its 4xx answers are held back so that they go out at
``rate`` a second. Nothing is refused that would not have been, answers that are not 4xx are never held, and a
held answer costs a sleeping coroutine, not a thread. Like nginx's ``limit_req`` with ``delay``, but keyed on
refusals, so that a busy client sending good requests is never slowed.
"""
from __future__ import annotations

import anyio

from imgcls.feedback import RateLimiter
from service.metrics import HELD

__all__ = ["MAX_DELAY_S", "RefusalThrottle"]

MAX_DELAY_S = 10.0  # a refusal is never held longer


class RefusalThrottle:
    """ASGI middleware: a client's 4xx answers wait for tokens of its bucket (:meth:`RateLimiter.delay`: ``burst``
    at once, then ``rate`` a second; ``rate`` <= 0: off)."""

    def __init__(self, app, rate: float, burst: int) -> None:
        self.app = app
        self.limiter = RateLimiter(rate, burst) if rate > 0 else None

    async def __call__(self, scope, receive, send) -> None:
        if self.limiter is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown",))[0]

        async def held_send(message: dict) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                wait = self.limiter.delay(client, MAX_DELAY_S)
                if wait:
                    HELD.inc()
                    await anyio.sleep(wait)
            await send(message)

        await self.app(scope, receive, held_send)
