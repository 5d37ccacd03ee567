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

import time
from collections import OrderedDict

import anyio

from service.metrics import HELD

class RefusalDelays:
    """Per client key, the delay before its next refusal goes out (a generic cell rate algorithm: the answers a
    client has had refused are spaced ``1 / rate`` apart after a burst of ``burst``). Delays are capped at
    ``max_delay_s``; at most ``max_clients`` keys are kept (least recently refused dropped first)."""

    def __init__(self, rate: float, burst: int, max_delay_s: float = 10.0, max_clients: int = 10_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1 (got {rate}, {burst})")
        self.interval, self.tolerance = 1.0 / rate, burst / rate
        self.max_delay_s, self.max_clients = max_delay_s, max_clients
        self._due: OrderedDict[str, float] = OrderedDict()  # key -> when the client's bucket is empty again

    def delay(self, key: str, now: float | None = None) -> float:
        """Record one refusal for ``key``: the seconds to hold its answer."""
        now = time.monotonic() if now is None else now
        due = max(self._due.pop(key, now), now) + self.interval
        wait = max(0.0, round(due - now - self.tolerance, 6))  # rounded: no sleeps of 1e-17 s
        if wait > self.max_delay_s:  # a flood beyond the cap is not booked further ahead
            wait, due = self.max_delay_s, now + self.tolerance + self.max_delay_s
        self._due[key] = due
        while len(self._due) > self.max_clients:
            self._due.popitem(last=False)
        return wait


class RefusalThrottle:
    """ASGI middleware: holds a client's 4xx answers back per :class:`RefusalDelays` (``rate`` <= 0: off)."""

    def __init__(self, app, rate: float, burst: int) -> None:
        self.app = app
        self.delays = RefusalDelays(rate, burst) if rate > 0 else None

    async def __call__(self, scope, receive, send) -> None:
        if self.delays is None or scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = (scope.get("client") or ("unknown",))[0]

        async def held_send(message: dict) -> None:
            if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
                wait = self.delays.delay(client)
                if wait:
                    HELD.inc()
                    await anyio.sleep(wait)
            await send(message)

        await self.app(scope, receive, held_send)
