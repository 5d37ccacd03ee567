"""What the model side answers the API: typed values, and the project's error type for failures.

:class:`Prediction` per image, :class:`Explanation` for a class activation map, :class:`StaleInput` when a crop was
made for another input size (the model was swapped meanwhile; the API crops again).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from imgcls.errors import ImgclsError

__all__ = ["Explanation", "Prediction", "StaleInput", "raise_error"]


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


def raise_error(answer: Prediction | ImgclsError) -> Any:
    """``answer`` itself, or raised when it is an error."""
    if isinstance(answer, ImgclsError):
        raise answer
    return answer
