"""The project's one error type: a refusal with an HTTP status, a stable machine-readable reason and a message.

Images (:class:`imgcls.images.ImageError`), feedback, the model (:class:`ModelError`) and the HTTP
API raise it; the service turns it into ``{"error": reason, "detail": message}`` in one place
(``service/api.py``), and batch jobs write ``reason`` and ``message`` into their results file.
"""
from __future__ import annotations

__all__ = ["ImgclsError", "ModelError"]


class ImgclsError(Exception):
    """A refused request or input: answered as ``status`` with :meth:`body` (and ``headers``, e.g. Retry-After)."""

    def __init__(self, status: int, reason: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.reason, self.message, self.headers = status, reason, message, headers or {}

    def body(self) -> dict[str, str]:
        """The JSON answer: ``{"error": reason, "detail": message}``."""
        return {"error": self.reason, "detail": self.message}


class ModelError(ImgclsError, RuntimeError):
    """A model version that is missing, unknown, fails its checksums or fails at inference (503 by default)."""

    def __init__(self, message: str, status: int = 503, reason: str = "model_error",
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, reason, message, headers)
