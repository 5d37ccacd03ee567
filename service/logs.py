"""One JSON object per log line (python-json-logger), BentoML's own lines included, and a request id.

``X-Request-ID`` from the client is kept when it is a sane token (else a new one is made), echoed in the
response and written in every log line of that request, including the one access line per request.
"""
from __future__ import annotations

import contextvars
import logging
import re
import time
import uuid

from pythonjsonlogger.json import JsonFormatter

__all__ = ["REQUEST_ID", "RequestIdAndAccessLog", "access_log", "configure_json_logging"]

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)
_VALID_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
access_log = logging.getLogger("imgcls.access")


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = REQUEST_ID.get()
        return True


class _ClientErrorTracebacks(logging.Filter):
    """BentoML logs a full traceback when a request's parameters fail validation; that is the client's mistake,
    answered 400 (and in the access line), so it must not flood the error log: those records go to debug."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "ValidationError" and type(exc).__module__.startswith("pydantic"):
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def configure_json_logging(level: int = logging.INFO) -> None:
    """JSON on every handler of the root, ``bentoml`` and ``imgcls`` loggers (BentoML sets up its own handlers
    before it imports the service, so this replaces their formatters); idempotent."""
    formatter = JsonFormatter("%(asctime)s %(levelname)s %(name)s %(message)s %(request_id)s",
                              rename_fields={"asctime": "time", "levelname": "level", "name": "logger"})
    ours = logging.getLogger("imgcls")
    if not ours.handlers:
        ours.addHandler(logging.StreamHandler())
        ours.propagate = False
    ours.setLevel(level)
    # Malformed multipart bodies are the client's problem (answered 400 bad_multipart), not warnings of ours.
    logging.getLogger("python_multipart").setLevel(logging.ERROR)
    for name in ("", "bentoml", "bentoml.serve", "bentoml.access", "imgcls", "uvicorn", "uvicorn.error"):
        for handler in logging.getLogger(name).handlers:
            handler.setFormatter(formatter)
            if not any(isinstance(f, _RequestIdFilter) for f in handler.filters):
                handler.addFilter(_RequestIdFilter())
                handler.addFilter(_ClientErrorTracebacks())


class RequestIdAndAccessLog:
    """ASGI middleware: the request id (header ``X-Request-ID``) and one access log line per request."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _VALID_ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        start, seen = time.perf_counter(), {"status": 500}

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                seen["model"] = dict(headers).get(b"x-model-version", b"").decode() or None
                message = {**message, "headers": headers + [(b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            if scope.get("path") not in ("/livez", "/readyz", "/healthz", "/metrics"):
                access_log.info("request", extra={
                    "method": scope["method"], "path": scope.get("path"), "status": seen["status"],
                    "ms": round((time.perf_counter() - start) * 1000, 2), "model": seen.get("model"),
                    "client": (scope.get("client") or ("", 0))[0]})
            REQUEST_ID.reset(token)
