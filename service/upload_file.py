"""The endpoints' file parameter: an upload held in memory (:class:`UploadedFile`).

BentoML takes a parameter typed as a path (any ``PurePath``) as a multipart file field. Its own ``Path`` type
writes every upload to a file in a per-request temporary folder, which the endpoint then reads back and BentoML
deletes: about 0.2 ms of CPU per request, a third of what BentoML's request path costs with no model at all
(measured: ``python -m bench.http_floor``, docs/request_path.md). This type keeps the upload's bytes that BentoML's
form parser already holds, and reads like a path (``name``, :meth:`UploadedFile.read_bytes`), so the endpoints,
the docs page and BentoML's client see a file parameter as before.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

from pydantic import GetCoreSchemaHandler, GetJsonSchemaHandler
from pydantic_core import core_schema
from starlette.datastructures import UploadFile

__all__ = ["UploadedFile"]


class UploadedFile(PurePosixPath):
    """An uploaded file: its name (a path of one part) and its bytes."""

    data: bytes = b""

    def read_bytes(self) -> bytes:
        return self.data

    @classmethod
    def of(cls, name: str, data: bytes) -> UploadedFile:
        upload = cls(os.path.basename(name) or "upload")
        upload.data = data
        return upload

    @classmethod
    def _validate(cls, value: Any) -> UploadedFile:
        if isinstance(value, UploadedFile):
            return value
        if isinstance(value, UploadFile):  # from a multipart form
            value.file.seek(0)
            return cls.of(value.filename or "upload", value.file.read())
        if isinstance(value, (bytes, bytearray, memoryview)):
            return cls.of("upload", bytes(value))
        if isinstance(value, PurePath):  # a local file, from a caller in this process
            return cls.of(value.name, Path(value).read_bytes())
        raise ValueError("expected an uploaded file")

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls._validate, serialization=core_schema.plain_serializer_function_ser_schema(lambda v: v.data))

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler
                                     ) -> dict[str, Any]:
        # As BentoML's own file type describes itself: a file on input, binary data in the OpenAPI document.
        return {"type": "file", "format": "binary"} if handler.mode == "validation" else \
            {"type": "string", "format": "binary"}
