"""Keep-alive connections spread over the workers: :class:`ConnectionRecycle`, :class:`WorkerLoads`.

BentoML's workers accept connections from one shared socket, and a worker accepts every connection waiting when it
looks: a burst of new keep-alive connections (16 clients starting at once) can all land on one worker and stay
there while the others idle (measured: one worker 10.6 CPU seconds, the other 0.02, 0.64x the throughput;
docs/request_path.md). Ending each connection after a few requests, as nginx (``keepalive_requests``) and Apache
(``MaxKeepAliveRequests``) do, makes clients reconnect, and a new connection goes to whichever worker takes it
first: the least busy one. A reconnection every ``max_requests`` requests costs a TCP handshake, not a request.
A worker that has clearly more requests in flight than the least busy of its siblings (:class:`WorkerLoads`, a slot
per worker in a small shared file) ends connections sooner: at its next answer on each.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

from service.lifecycle import SLOTS, shared_slots

__all__ = ["ConnectionRecycle", "WorkerLoads"]


class WorkerLoads:
    """The requests in flight in each worker of one server: one int64 slot per worker (its 1-based index) in a file
    every worker maps; each writes only its own slot, and reads the others'."""

    def __init__(self, path: Path, index: int, workers: int) -> None:
        if not 1 <= index <= workers < SLOTS:
            raise ValueError(f"worker {index} of {workers}: at most {SLOTS - 1} workers share their loads")
        self.slots = shared_slots(path)
        self.index, self.workers = index, workers
        self.slots[index] = 0  # a restarted worker starts afresh

    def add(self, n: int) -> None:
        self.slots[self.index] += n

    def busier_than_peers(self) -> bool:
        """This worker has at least 2 (and a quarter) more requests in flight than the least busy other one."""
        mine = self.slots[self.index]
        least = min(self.slots[i] for i in range(1, self.workers + 1) if i != self.index)
        return mine >= least + max(2, mine // 4)


class ConnectionRecycle:
    """ASGI middleware: the ``max_requests``-th answer on a connection carries ``Connection: close``.

    Connections are told apart by the client's address and port; the counts of the ``remember`` most recent ones
    are kept (a connection the client closed on its own is forgotten among them). An answer sent before its request
    body was read whole (a refusal) never closes the connection: the client may still be sending, and closing would
    reset the connection under it before it reads the answer; the next request closes it instead."""

    def __init__(self, app, max_requests: int, loads: WorkerLoads | None = None, remember: int = 4096) -> None:
        self.app, self.max_requests, self.loads, self.remember = app, max_requests, loads, remember
        self.served: OrderedDict[tuple, int] = OrderedDict()

    async def __call__(self, scope, receive, send) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if not client:
            return await self.app(scope, receive, send)
        key = tuple(client)
        n = self.served.pop(key, 0) + 1
        self.served[key] = n
        if len(self.served) > self.remember:
            self.served.popitem(last=False)
        if self.loads is None:
            if n < self.max_requests:
                return await self.app(scope, receive, send)
            return await self._closing(scope, receive, send, key, n)
        self.loads.add(1)
        try:
            await self._closing(scope, receive, send, key, n)
        finally:
            self.loads.add(-1)

    async def _closing(self, scope, receive, send, key: tuple, n: int) -> None:
        """The app, whose answer closes the connection when its quota is spent or this worker is the busier one."""
        headers = dict(scope["headers"])
        body_read = b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") in (b"", b"0")

        async def reading() -> dict:
            nonlocal body_read
            message = await receive()
            body_read |= message["type"] == "http.request" and not message.get("more_body", False)
            return message

        async def closing(message) -> None:
            if message["type"] == "http.response.start" and body_read and (
                    n >= self.max_requests or (self.loads is not None and self.loads.busier_than_peers())):
                message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
                self.served.pop(key, None)
            await send(message)

        await self.app(scope, reading, closing)
