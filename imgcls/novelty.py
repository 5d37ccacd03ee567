"""Open-set scoring at serve time, with numpy only: how unlike the training data an image is.

A model version may hold ``novelty.npz`` (fitted by ``training.openset`` from the training split and calibrated on
the validation split) and a ``novelty`` block in its ``metadata.json``. Its scores are computed from the pooled
last feature map (the mean over the ONNX ``features`` output's spatial axes), so no extra network runs:

- ``density``: the smallest Mahalanobis distance to a class mean (class-conditional Gaussians with one shared,
  shrunk covariance) of the L2-normalised embedding, which works for any classes and any backbone;
- ``imagenet``: ``-log`` of the probability mass the backbone's own ImageNet classifier puts on the ImageNet classes
  that the training photos themselves activate, each class weighted by how much they do (only for backbones that
  have that classifier).

Each score is divided by its own scale (its quantile at the target acceptance on the validation split), the
novelty is the largest of them divided by the calibrated threshold, so ``novelty <= 1`` means known.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["NOVELTY_FILE", "SCORES", "NoveltyDetector", "density_score", "embed", "imagenet_score", "is_known",
           "l2_normalize"]

NOVELTY_FILE = "novelty.npz"
SCORES = ("density", "imagenet")


def is_known(novelty: float | np.ndarray) -> bool | np.ndarray:
    """Whether an image with this ``novelty`` counts as one of the model's classes: the one place the rule lives."""
    return novelty <= 1.0


def embed(fmap: np.ndarray) -> np.ndarray:
    """The pooled embedding (N, C) of a feature map (N, C, h, w): what the head and the scores see."""
    return fmap.reshape(fmap.shape[0], fmap.shape[1], -1).mean(axis=2, dtype=np.float64)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def density_score(emb: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Smallest squared Mahalanobis distance of each L2-normalised embedding to the class ``means`` (K, C)."""
    x = l2_normalize(emb)
    xp = x @ precision
    d = (xp * x).sum(1)[:, None] - 2.0 * xp @ means.T + ((means @ precision) * means).sum(1)[None, :]
    return np.maximum(d.min(axis=1), 0.0)


def imagenet_score(emb: np.ndarray, weight: np.ndarray, bias: np.ndarray, known: np.ndarray) -> np.ndarray:
    """``-log`` of the ImageNet-softmax mass weighted by ``known`` (per ImageNet class, in [0, 1]: how much the
    training photos activate it)."""
    logits = emb @ weight.T + bias
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    return np.maximum(-np.log(np.maximum((p @ known) / p.sum(1), 1e-300)), 0.0)


@dataclass
class NoveltyDetector:
    """The fitted open-set detector of one model version (arrays from ``novelty.npz``, settings from metadata)."""

    scores: tuple[str, ...]
    scales: dict[str, float]
    threshold: float
    arrays: dict[str, np.ndarray]

    @classmethod
    def load(cls, model_dir: Path, info: dict[str, Any]) -> NoveltyDetector:
        with np.load(Path(model_dir) / NOVELTY_FILE) as f:
            arrays = {k: f[k].astype(np.float64) if f[k].dtype.kind == "f" else f[k] for k in f.files}
        return cls(tuple(info["scores"]), {k: float(v) for k, v in info["scales"].items()}, float(info["threshold"]),
                   arrays)

    def raw_scores(self, emb: np.ndarray) -> dict[str, np.ndarray]:
        """Each score this detector uses, unscaled, for embeddings (N, C)."""
        a = self.arrays
        out = {}
        for name in self.scores:
            if name == "density":
                out[name] = density_score(emb, a["density_means"], a["density_precision"])
            elif name == "imagenet":
                out[name] = imagenet_score(emb, a["imagenet_weight"], a["imagenet_bias"], a["imagenet_known"])
            else:
                raise ValueError(f"unknown novelty score {name!r}; known: {', '.join(SCORES)}")
        return out

    def novelty(self, emb: np.ndarray) -> np.ndarray:
        """Novelty of each embedding: > 1 means unlike the training data (not one of the model's classes)."""
        raw = self.raw_scores(emb)
        combined = np.max([raw[n] / self.scales[n] for n in self.scores], axis=0)
        return combined / self.threshold
