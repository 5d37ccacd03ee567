"""Reading uploads safely: size-limited bodies, multipart or raw image bodies, JSON errors that name the problem."""
from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse


class ApiError(Exception):
    """An error answered as ``status`` with ``{"error": reason, "detail": message}``."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.reason, "detail": self.message}, self.status, headers=self.headers)


@dataclass
class Upload:
    name: str  # the form field's name, or "body" for a raw body
    filename: str | None
    data: bytes


@dataclass
class Parsed:
    files: list[Upload]
    fields: dict[str, str]


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refusing (413) as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, "body_too_large", f"request body is {declared} bytes; the limit is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, "body_too_large", f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def parse_upload(request: Request, limit: int, max_files: int = 1) -> Parsed:
    """Images from a multipart form (every file field) or a raw ``image/*`` / octet-stream body."""
    body = await read_body(request, limit)
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if not body:
        raise ApiError(400, "empty", "the request body is empty; send an image")
    if ctype == "multipart/form-data":
        async def receive() -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(request.scope, receive).form(max_files=max_files + 1, max_fields=32)
        except Exception as e:  # noqa: BLE001 - python-multipart raises several types on malformed input
            detail = getattr(e, "detail", None) or str(e)
            if "Too many files" in str(detail):
                raise ApiError(413, "too_many_images", f"more than {max_files} images in one request") from e
            raise ApiError(400, "bad_multipart", f"malformed multipart body: {detail}") from e
        files, fields = [], {}
        for key, value in form.multi_items():
            if isinstance(value, UploadFile):
                files.append(Upload(key, value.filename, await value.read()))
            else:
                fields[key] = value
        await form.close()
        if len(files) > max_files:
            raise ApiError(413, "too_many_images", f"{len(files)} images in one request; the limit is {max_files}")
        if not files:
            raise ApiError(400, "no_image", "the multipart form has no file field; send the image as field 'image'")
        return Parsed(files, fields)
    if ctype.startswith("image/") or ctype in ("application/octet-stream", ""):
        return Parsed([Upload("body", None, body)], {})
    raise ApiError(415, "unsupported_media_type",
                   f"Content-Type {ctype!r}: send multipart/form-data with field 'image', or a raw image/* body")


def parse_k(raw: str | None, n_classes: int) -> int | None:
    """The optional ``k`` (top-k) parameter: an integer in 1..number of classes."""
    if raw is None or raw == "":
        return None
    try:
        k = int(raw)
    except ValueError:
        raise ApiError(400, "bad_parameter", f"k must be an integer, not {raw!r}") from None
    if not 1 <= k <= n_classes:
        raise ApiError(400, "bad_parameter", f"k must be between 1 and {n_classes}, not {k}")
    return k
