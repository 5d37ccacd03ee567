"""Errors answered as JSON ``{"error": code, "detail": text}``, and a middleware that gives every 4xx/5xx that
BentoML or Starlette produce themselves (unknown path, wrong method, request validation) the same shape."""
from __future__ import annotations

import json
from typing import Any

from starlette.responses import JSONResponse

from imgcls.errors import ImgclsError

__all__ = ["JsonErrors", "error_response", "overloaded"]


def error_response(e: ImgclsError) -> JSONResponse:
    """The one translation of the project's error type into an HTTP answer."""
    return JSONResponse(e.body(), e.status, headers=e.headers)


def overloaded(detail: str = "the model queue is full; retry shortly") -> ImgclsError:
    return ImgclsError(503, "overloaded", detail, {"Retry-After": "1"})


_GENERIC = {400: "bad_request", 401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
            408: "request_timeout", 413: "body_too_large", 415: "unsupported_media_type", 422: "unprocessable",
            429: "too_many_requests", 500: "internal_error", 503: "unavailable", 504: "timeout"}


def _normalise(status: int, body: bytes, path: str) -> bytes | None:
    """A JSON ``{"error", "detail"}`` body for an error response in another shape; None if it already has it."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str) and isinstance(data.get("detail"), str) \
            and data["error"].replace("_", "").isalnum():
        return None
    if isinstance(data, list) and len(data) == 1 and isinstance(data[0], dict):  # BentoML answers ({"error": ...},)
        data = data[0]
    code = _GENERIC.get(status, f"http_{status}")
    if status == 404:
        detail = f"no endpoint at {path}; see / for the API docs"
    elif status == 405:
        detail = f"{path} does not accept this method; see / for the API docs"
    elif isinstance(data, dict) and isinstance(data.get("detail"), list):  # pydantic validation errors
        code = "bad_parameter" if status == 400 else code
        detail = "; ".join(f"{'.'.join(str(x) for x in e.get('loc', ()))}: {e.get('msg')}" for e in data["detail"])
    elif isinstance(data, dict) and data.get("error"):
        detail = str(data["error"])
    else:
        detail = body.decode("utf-8", "replace").strip()[:500] or "error"
    return json.dumps({"error": code, "detail": detail}).encode()


class JsonErrors:
    """ASGI middleware: error responses that are not already ``{"error", "detail"}`` JSON are rewritten to it."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held: dict[str, Any] = {}
        chunks: list[bytes] = []

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start" and message["status"] >= 400:
                held["start"] = message
                return
            if "start" in held and message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))
                if message.get("more_body"):
                    return
                start, body = held.pop("start"), b"".join(chunks)
                fixed = _normalise(start["status"], body, scope.get("path", ""))
                if fixed is not None:
                    headers = [(k, v) for k, v in start.get("headers", [])
                               if k.lower() not in (b"content-length", b"content-type")]
                    headers += [(b"content-type", b"application/json"), (b"content-length", str(len(fixed)).encode())]
                    start, body = {**start, "headers": headers}, fixed
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_wrapper)
