"""What the model side answers the API: typed values, and the project's error type for failures.

:class:`Prediction` per image, :class:`Explanation` for a class activation map, :class:`StaleInput` when a crop was
made for another input size (the model was swapped meanwhile; the API crops again). Between two processes (the
two-service topology) they travel as dicts: :func:`to_wire` and :func:`from_wire` are the only place that knows that
shape.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from imgcls.errors import ImgclsError

__all__ = ["Answer", "Explanation", "Prediction", "StaleInput", "from_wire", "raise_error", "to_wire"]


@dataclass
class Prediction:
    """One image's class probabilities from one model version (``novelty``/``known``: None without a detector)."""

    version: str
    name: str  # the backbone
    variant: str
    labels: list[str]
    probs: np.ndarray
    novelty: float | None = None
    known: bool | None = None


@dataclass
class Explanation(Prediction):
    """A prediction with the class activation map (h, w in [0, 1]) of class ``index``."""

    index: int = 0
    cam: np.ndarray | None = None


class StaleInput(ImgclsError):
    """The crop was made for another input size: crop again at ``resize_size``/``input_size``. Raised to a client
    only if the model changes size again meanwhile."""

    def __init__(self, resize_size: int, input_size: int) -> None:
        super().__init__(503, "model_error", f"the model changed its input size ({input_size} px) during this "
                                             "request; retry", {"Retry-After": "5"})
        self.resize_size, self.input_size = resize_size, input_size


Answer = Prediction | Explanation | ImgclsError | dict


def to_wire(answer: Answer) -> dict[str, Any]:
    """``answer`` as a dict of plain values and arrays, for BentoML to carry to another process (a plain dict, as
    ``describe`` and ``reload`` answer, travels as it is)."""
    if isinstance(answer, dict):
        return {"kind": "value", "value": answer}
    if isinstance(answer, StaleInput):
        return {"kind": "stale", "resize_size": answer.resize_size, "input_size": answer.input_size}
    if isinstance(answer, ImgclsError):
        return {"kind": "error", "status": answer.status, "reason": answer.reason, "message": answer.message,
                "headers": answer.headers}
    kind = "explanation" if isinstance(answer, Explanation) else "prediction"
    return {"kind": kind, **{f.name: getattr(answer, f.name) for f in fields(answer)}}


def from_wire(data: dict[str, Any]) -> Answer:
    """The inverse of :func:`to_wire`."""
    data = dict(data)
    kind = data.pop("kind")
    if kind == "value":
        return data["value"]
    if kind == "stale":
        return StaleInput(int(data["resize_size"]), int(data["input_size"]))
    if kind == "error":
        return ImgclsError(int(data["status"]), data["reason"], data["message"], data.get("headers"))
    data["probs"] = np.asarray(data["probs"])
    if kind == "explanation":
        data["cam"] = np.asarray(data["cam"])
        return Explanation(**data)
    return Prediction(**data)


def raise_error(answer: Answer) -> Any:
    """``answer`` itself, or raised when it is an error."""
    if isinstance(answer, ImgclsError):
        raise answer
    return answer
