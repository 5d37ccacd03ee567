"""Keep-alive connections spread over the workers: :class:`ConnectionRecycle`.

BentoML's workers accept connections from one shared socket, and a worker accepts every connection waiting when it
looks: a burst of new keep-alive connections (16 clients starting at once) can all land on one worker and stay
there while the others idle (measured: one worker 10.6 CPU seconds, the other 0.02, 0.64x the throughput;
docs/request_path.md). Ending each connection after a few requests, as nginx (``keepalive_requests``) and Apache
(``MaxKeepAliveRequests``) do, makes clients reconnect, and a new connection goes to whichever worker takes it
first: the least busy one. A reconnection every ``max_requests`` requests costs a TCP handshake, not a request.
"""
from __future__ import annotations

from collections import OrderedDict

__all__ = ["ConnectionRecycle"]


class ConnectionRecycle:
    """ASGI middleware: the ``max_requests``-th answer on a connection carries ``Connection: close``.

    Connections are told apart by the client's address and port; the counts of the ``remember`` most recent ones
    are kept (a connection the client closed on its own is forgotten among them). An answer sent before its request
    body was read whole (a refusal) never closes the connection: the client may still be sending, and closing would
    reset the connection under it before it reads the answer; the next request closes it instead."""

    def __init__(self, app, max_requests: int, remember: int = 4096) -> None:
        self.app, self.max_requests, self.remember = app, max_requests, remember
        self.served: OrderedDict[tuple, int] = OrderedDict()

    async def __call__(self, scope, receive, send) -> None:
        client = scope.get("client") if scope["type"] == "http" else None
        if not client:
            return await self.app(scope, receive, send)
        key = tuple(client)
        n = self.served.pop(key, 0) + 1
        if n < self.max_requests:
            self.served[key] = n
            if len(self.served) > self.remember:
                self.served.popitem(last=False)
            return await self.app(scope, receive, send)

        headers = dict(scope["headers"])
        body_read = b"transfer-encoding" not in headers and headers.get(b"content-length", b"0") in (b"", b"0")

        async def reading() -> dict:
            nonlocal body_read
            message = await receive()
            body_read |= message["type"] == "http.request" and not message.get("more_body", False)
            return message

        async def closing(message) -> None:
            if message["type"] == "http.response.start":
                if body_read:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
                else:
                    self.served[key] = n  # not this time: the next answer on this connection closes it
            await send(message)

        await self.app(scope, reading, closing)
