"""Peer servers for ``bench/bench_peers.py``: the same ONNX model behind other serving frameworks.

Each module is a small server written the way its framework's own examples write one (no extra error mapping),
with the settings every peer shares: ONNX Runtime threads = cores, batches of up to ``MAX_BATCH`` formed within
``MAX_WAIT_MS``. The harness passes the model version folder in ``PEER_MODEL_DIR``, the variant to run in
``PEER_VARIANT`` and the port in ``PEER_PORT``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from service.schemas import Classification, ModelRef, Probability

MAX_BATCH = 32
MAX_WAIT_MS = 5


def model_dir() -> Path:
    return Path(os.environ["PEER_MODEL_DIR"])


def variant() -> str:
    return os.environ.get("PEER_VARIANT", "fp32")


def port() -> int:
    return int(os.environ["PEER_PORT"])


def answers(labels: list[str], probabilities: np.ndarray) -> list[dict]:
    """One JSON-able answer per row: the best label, its score and every class's probability."""
    out = []
    for row in probabilities:
        best = int(np.argmax(row))
        out.append({"label": labels[best], "score": float(row[best]),
                    "probabilities": {label: float(p) for label, p in zip(labels, row)}})
    return out


# What the servers without a model (no_model.py, litserve_no_model.py) answer every request.
ANSWER = Classification(label="cat", score=0.99, probabilities=[Probability(label="cat", score=0.99),
                                                               Probability(label="dog", score=0.01)],
                        model=ModelRef(name="none", version="none", variant="int8"), known=True, novelty=0.1)
