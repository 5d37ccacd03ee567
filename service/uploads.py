"""Request bodies for the upload endpoints, checked before BentoML parses them.

BentoML's typed endpoints read multipart forms. This ASGI middleware lets the same endpoints take a raw
``image/*`` (or octet-stream) body and query parameters (``?k=1``), as ``curl --data-binary`` users send them,
by rewriting such requests into the multipart form the endpoint declares. On the way it enforces what BentoML
does not: a body-size limit (413), a stalled-upload timeout (408), file fields that hold files (a text field named
``image`` would make BentoML download a URL), a file count limit, and JSON errors naming the problem. For the
single-image endpoints it also reads the image's header here, so that what the endpoint would refuse anyway (not
an image, over the format's pixel limit) is refused before BentoML parses the form again: a client looping such
files costs the service a fraction of a full request each.

Every route's query (and the upload routes' form fields) is checked against what the endpoint takes
(service/params.py) before BentoML parses it; the routes without parameters take none, and no body but ``{}``. An
upload waits for room in the budget of upload bytes held at once (service/upload_budget.py) before it is read.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import anyio
from starlette.datastructures import UploadFile
from starlette.requests import Request

from imgcls.errors import ImgclsError
from imgcls.images import open_image
from service.errors import error_response
from service.metrics import REJECTED
from service.params import checked, merged, parse_query
from service.upload_budget import ByteBudget

__all__ = ["UploadRequests", "UploadRoute", "encode_multipart"]


@dataclass(frozen=True)
class UploadRoute:
    file_field: str  # the endpoint's file parameter
    max_files: int
    params: frozenset[str]  # the endpoint's other parameters, accepted as form fields or query parameters
    check_image: bool = False  # refuse a file that is no image, or over the pixel limits, here


_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _part(name: str, value: bytes, filename: str | None = None, ctype: str | None = None) -> bytes:
    disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"Content-Disposition: {disposition}\r\n" + (f"Content-Type: {ctype}\r\n" if ctype else "")
    return head.encode() + b"\r\n" + value


BARE_BODY_BYTES = 64 * 1024  # the most a route without parameters reads before refusing the body (413)


def _check_bare_body(scope, body: bytes) -> None:
    """A route without parameters takes no body, or an empty JSON object (BentoML's client sends ``{}``):
    BentoML would parse anything else as its parameters (a form's values with ``json.loads``)."""
    ctype = dict(scope["headers"]).get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
    if not body.strip():
        return
    if ctype not in ("", "application/json"):
        raise ImgclsError(415, "unsupported_media_type", f"Content-Type {ctype!r}: this endpoint takes no body "
                                                      "(or an empty JSON object)")
    if b"".join(body.split()) != b"{}":
        raise ImgclsError(400, "bad_parameter", "this endpoint takes no parameters: send no body, or {}")


def encode_multipart(files: list[tuple[str, str, str, bytes]], fields: dict[str, str]) -> tuple[bytes, str]:
    """(body, content type) of a multipart form: ``files`` as (field, filename, content type, data)."""
    boundary = os.urandom(16).hex()
    parts = [_part(k, v.encode()) for k, v in fields.items()]
    parts += [_part(field, data, name, ctype) for field, name, ctype, data in files]
    sep = f"--{boundary}\r\n".encode()
    body = b"".join(sep + p + b"\r\n" for p in parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


class UploadRequests:
    """ASGI middleware in front of the upload endpoints (``routes``: path -> :class:`UploadRoute`)."""

    def __init__(self, app, routes: dict[str, UploadRoute], max_body_bytes: int, stall_timeout_s: float,
                 max_pixels: int, max_pixels_full: int, bare_routes: frozenset[str] = frozenset(),
                 budget: ByteBudget | None = None) -> None:
        self.app, self.routes, self.bare_routes, self.budget = app, routes, bare_routes, budget
        self.max_body_bytes, self.stall_timeout_s = max_body_bytes, stall_timeout_s
        self.max_pixels, self.max_pixels_full = max_pixels, max_pixels_full

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        held = 0
        if self.budget is not None and scope["method"] == "POST" and scope.get("path", "") in self.routes:
            declared = dict(scope["headers"]).get(b"content-length", b"")
            size = int(declared) if declared.isdigit() else self.max_body_bytes
            if size <= self.max_body_bytes:  # a larger one is refused before a byte of it is read
                try:
                    held = await self.budget.reserve(size)
                except ImgclsError as e:
                    REJECTED.labels(reason=e.reason).inc()
                    return await error_response(e)(scope, receive, send)
        try:
            await self._handle(scope, receive, send)
        finally:
            if held:
                self.budget.release(held)

    async def _handle(self, scope, receive, send) -> None:
        refusal = None
        try:
            checked_request = await self._checked(scope, receive)
        except ImgclsError as e:
            REJECTED.labels(reason=e.reason).inc()
            refusal = error_response(e)
        if refusal is not None:  # answered outside the handler: its traceback, and the body, are let go
            return await refusal(scope, receive, send)
        if checked_request is None:  # nothing read: the request goes on as it came
            return await self.app(scope, receive, send)
        scope, body = checked_request
        sent = False

        async def replay() -> dict:
            nonlocal sent, body
            if sent:
                return await receive()  # after the body: wait for the disconnect
            sent = True
            message = {"type": "http.request", "body": body, "more_body": False}
            body = None  # handed on: not held here too while the endpoint works (service/upload_budget.py)
            return message

        await self.app(scope, replay, send)

    async def _checked(self, scope, receive) -> tuple[dict, bytes] | None:
        """The request (scope, whole body) to pass on, once checked; None when the body need not be read."""
        path = scope.get("path", "")
        route = self.routes.get(path) if scope["method"] == "POST" else None
        if route is not None:
            return await self._canonical(scope, await self._read_body(scope, receive), route)
        query = parse_query(scope.get("query_string", b""))
        if path not in self.bare_routes:
            return None
        checked(query, frozenset(), "query")
        if scope["method"] != "POST":
            return None
        body = await self._read_body(scope, receive, BARE_BODY_BYTES)
        _check_bare_body(scope, body)
        return scope, body

    async def _read_body(self, scope, receive, limit: int | None = None) -> bytes:
        limit = limit or self.max_body_bytes
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > limit:
            raise ImgclsError(413, "body_too_large", f"request body is {int(declared)} bytes; the limit is {limit}")
        chunks, size = [], 0
        while True:
            with anyio.move_on_after(self.stall_timeout_s) as scope_timer:
                message = await receive()
            if scope_timer.cancelled_caught:
                raise ImgclsError(408, "request_timeout",
                               f"no part of the request body arrived for {self.stall_timeout_s:g} s")
            if message["type"] == "http.disconnect":
                raise ImgclsError(400, "client_disconnected", "the client went away before sending the whole body")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise ImgclsError(413, "body_too_large", f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body"):
                return b"".join(chunks)

    async def _canonical(self, scope, body: bytes, route: UploadRoute) -> tuple[dict, bytes]:
        """The request as the multipart form the endpoint declares (unchanged when it already is one)."""
        headers = dict(scope["headers"])
        ctype = headers.get(b"content-type", b"").decode("latin-1").split(";")[0].strip().lower()
        query = checked(parse_query(scope.get("query_string", b"")), route.params, "query")
        if not body:
            raise ImgclsError(400, "empty", "the request body is empty; send an image")
        if ctype == "multipart/form-data":
            files, fields, rename = await self._read_form(scope, body, route)
            self._check_images(files, route)
            if not query and not rename:
                return scope, body
        elif ctype.startswith("image/") or ctype in ("application/octet-stream", ""):
            files, fields = [(route.file_field, "upload", ctype or "application/octet-stream", body)], {}
            self._check_images(files, route)
        else:
            raise ImgclsError(415, "unsupported_media_type",
                           f"Content-Type {ctype!r}: send multipart/form-data with the image as field "
                           f"{route.file_field!r}, or the raw image bytes with an image/* Content-Type")
        new_body, new_type = encode_multipart(files, merged(query, fields))
        new_headers = [(k, v) for k, v in scope["headers"] if k not in (b"content-type", b"content-length")]
        new_headers += [(b"content-type", new_type.encode()), (b"content-length", str(len(new_body)).encode())]
        return {**scope, "headers": new_headers, "query_string": b""}, new_body

    def _check_images(self, files: list[tuple[str, str, str, bytes]], route: UploadRoute) -> None:
        """The header checks :func:`imgcls.images.open_image` makes (nothing is decoded), for ``check_image``
        routes; the endpoint makes them again on what passes, so this only answers sooner."""
        if not route.check_image:
            return
        for _, _, _, data in files:
            open_image(data, max_pixels=self.max_pixels, max_pixels_full=self.max_pixels_full)

    async def _read_form(self, scope, body: bytes, route: UploadRoute
                         ) -> tuple[list[tuple[str, str, str, bytes]], dict[str, str], bool]:
        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, receive).form(max_files=route.max_files + 1, max_fields=16)
        except Exception as e:  # noqa: BLE001 - python-multipart raises several types on malformed input
            detail = str(getattr(e, "detail", None) or e)
            if "Too many files" in detail:
                raise ImgclsError(413, "too_many_images", f"more than {route.max_files} image(s) in one request") from e
            raise ImgclsError(400, "bad_multipart", f"malformed multipart body: {detail}") from e
        files, pairs, rename = [], [], False
        try:
            for key, value in form.multi_items():
                if isinstance(value, UploadFile):
                    rename |= key != route.file_field
                    name = _SAFE_NAME.sub("_", os.path.basename(value.filename or "upload"))[-64:] or "upload"
                    rename |= name != value.filename
                    files.append((route.file_field, name, value.content_type or "application/octet-stream",
                                  await value.read()))
                elif key == route.file_field:
                    raise ImgclsError(400, "no_image", f"field {key!r} must be a file upload, not text")
                elif value:  # a blank field is no value, as in the query string
                    pairs.append((key, value))
                else:
                    rename = True  # BentoML would parse the blank value: the form is written anew without it
        finally:
            await form.close()
        fields = checked(pairs, route.params, "form")
        if not files:
            raise ImgclsError(400, "no_image", f"the multipart form has no file; send the image as field "
                                            f"{route.file_field!r}")
        if len(files) > route.max_files:
            raise ImgclsError(413, "too_many_images",
                              f"{len(files)} images in one request; the limit is {route.max_files}")
        if not all(data for _, _, _, data in files):
            raise ImgclsError(400, "empty", "an uploaded file is empty; send an image")
        return files, fields, rename
