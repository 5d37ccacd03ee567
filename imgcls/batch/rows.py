"""The batch job's result rows: one per input, a prediction or the reason it could not be classified."""
from __future__ import annotations

from typing import Any

import numpy as np

from imgcls.loader import Failure
from imgcls.novelty import is_known
from imgcls.onnx_model import OnnxClassifier

__all__ = ["FIELDS", "batch_rows", "error_row", "prediction_row"]
FIELDS = ("path", "label", "score", "known", "novelty", "probabilities", "model_version", "error", "detail")


def batch_rows(model: OnnxClassifier, paths: list[str], ok: list[int], array: np.ndarray | None,
               failures: dict[int, Failure]) -> list[dict[str, Any]]:
    """One row per path of one batch, in order: ``array`` holds the decoded ones (``ok``, indices into ``paths``)."""
    rows: list[dict[str, Any]] = [{}] * len(paths)
    if array is not None:
        out = model.classify(array)
        novelty = out.novelty if out.novelty is not None else [None] * len(ok)
        for i, probs, nov in zip(ok, out.probabilities, novelty):
            rows[i] = prediction_row(paths[i], probs, model.labels, model.version, nov)
    for i, failure in failures.items():
        rows[i] = error_row(paths[i], failure, model.version)
    return rows


def prediction_row(path: str, probs: np.ndarray, labels: list[str], version: str,
                   novelty: float | None = None) -> dict[str, Any]:
    """``known`` is false (``novelty`` > 1) for an image unlike the model's training data; both are None for a
    model version without an open-set detector."""
    top = int(np.argmax(probs))
    return {"path": path, "label": labels[top], "score": float(probs[top]),
            "known": None if novelty is None else bool(is_known(novelty)),
            # 6 decimals: the score's last float digits depend on how images were batched (BLAS), not on the image
            "novelty": None if novelty is None else round(float(novelty), 6),
            "probabilities": {label: float(p) for label, p in zip(labels, probs)},
            "model_version": version, "error": None, "detail": None}


def error_row(path: str, failure: Failure, version: str) -> dict[str, Any]:
    # One physical line per row is what makes torn-line recovery exact, also for CSV output.
    detail = " ".join(failure.detail.split())
    return {"path": path, "label": None, "score": None, "known": None, "novelty": None, "probabilities": None,
            "model_version": version, "error": failure.reason, "detail": detail}
