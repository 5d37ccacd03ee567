"""Fitting what a model version needs to know what it does not know, and to say how sure it is.

- :func:`fit_detector`: the open-set detector (``imgcls.novelty``). Where the classes are distinct ImageNet
  concepts (``training.concepts``: "domestic cat", "dog"), it is the backbone's own ImageNet probability mass on
  those concepts, every breed included, calibrated on the training and validation photos, augmented views too, to
  accept ``accept`` of them (default 99%). Otherwise it is the density score (and, for backbones with an ImageNet
  classifier, the ImageNet classes the training photos activate), fitted on the training split's views and
  calibrated on the validation split.
- :func:`fit_temperature`: temperature scaling of the head's logits, fitted on the validation split; it is folded
  into the head's last linear layer (:func:`apply_temperature`), so the exported ``probabilities`` are calibrated
  and the arg-max (accuracy) is unchanged.
- :func:`expected_calibration_error`, :func:`open_set_metrics`: the figures the evaluation reports.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn import metrics as skm
from sklearn.covariance import LedoitWolf
from torch import nn

from imgcls.novelty import NOVELTY_FILE, NoveltyDetector, l2_normalize
from training.concepts import Concept, concept_mask, find_concepts
from training.features import Features
from training.models import ConceptHead, TransferModel

log = logging.getLogger(__name__)


@dataclass
class OpenSetConfig:
    accept: float = 0.99  # share of the validation photos the calibrated threshold accepts as known
    # auto: imagenet alone where the classes are ImageNet concepts; imagenet + density where the backbone has an
    # ImageNet head but they are not; density otherwise. Or density, imagenet, imagenet,density.
    scores: str = "auto"


# -- embeddings and logits from cached features -------------------------------------------------------------------

@torch.inference_mode()
def embeddings(model: TransferModel, feats: Features, batch_size: int = 256) -> np.ndarray:
    """The pooled last feature map (N, C) of cached features, whatever the extractor cut at (pooled or body)."""
    x = feats.x
    if x.ndim == 2 and isinstance(model.pool[0], nn.AdaptiveAvgPool2d) and model.pool[0].output_size in (1, (1, 1)):
        return x.astype(np.float64)
    out = [model.last(torch.from_numpy(x[i:i + batch_size])).mean((2, 3)).double().numpy()
           for i in range(0, len(x), batch_size)]
    return np.concatenate(out) if out else np.zeros((0, 0))


@torch.inference_mode()
def head_logits(model: TransferModel, feats: Features, batch_size: int = 256) -> np.ndarray:
    """The head's logits for cached features (eval mode: no dropout)."""
    from training.fit import _trainable_forward

    model.eval()
    out = [_trainable_forward(model, torch.from_numpy(feats.x[i:i + batch_size])).double().numpy()
           for i in range(0, len(feats.x), batch_size)]
    return np.concatenate(out)


# -- temperature scaling ------------------------------------------------------------------------------------------

def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def softmax(z: np.ndarray) -> np.ndarray:
    return np.exp(_log_softmax(z))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T > 0 minimising the negative log-likelihood of ``softmax(logits / T)`` on (logits, y)."""
    from scipy.optimize import minimize_scalar

    if len(y) == 0:
        return 1.0

    def nll(log_t: float) -> float:
        return float(-_log_softmax(logits / np.exp(log_t))[np.arange(len(y)), y].mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(best.x)) if best.fun <= nll(0.0) else 1.0


def apply_temperature(model: TransferModel, temperature: float) -> None:
    """Divide the head's last linear layer (and a concept head's concept weights) by ``temperature``: its logits
    become ``logits / T``."""
    last = [m for m in model.head.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        last.weight.div_(temperature)
        last.bias.div_(temperature)
        if isinstance(model.head, ConceptHead):  # its logits are linear + concept term: both scale
            model.head.concept_weight.div_(temperature)


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling, recovered from calibrated ones: softmax(T * log p)."""
    return softmax(temperature * np.log(np.clip(probs.astype(np.float64), 1e-300, 1.0)))


def reliability(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> list[dict[str, float]]:
    """Per confidence bin (equal width): count, mean confidence and accuracy of the arg-max."""
    conf, correct = probs.max(1), (probs.argmax(1) == y)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    return [{"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int((which == b).sum()),
             "confidence": float(conf[which == b].mean()) if (which == b).any() else None,
             "accuracy": float(correct[which == b].mean()) if (which == b).any() else None} for b in range(bins)]


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """ECE: the count-weighted mean |accuracy - confidence| over equal-width confidence bins."""
    n = len(y)
    return float(sum(b["n"] / n * abs(b["accuracy"] - b["confidence"]) for b in reliability(probs, y, bins)
                     if b["n"])) if n else 0.0


# -- the open-set detector ----------------------------------------------------------------------------------------

def fit_density(emb: np.ndarray, y: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Class means and the shared precision matrix (Ledoit-Wolf shrinkage) of L2-normalised embeddings."""
    x = l2_normalize(emb)
    means = np.stack([x[y == k].mean(0) if (y == k).any() else x.mean(0) for k in range(n_classes)])
    centred = x - means[y]
    cov = LedoitWolf(assume_centered=True).fit(centred).covariance_ if len(x) > 1 else np.eye(x.shape[1])
    # A floor on the diagonal: dead channels (a random-init network) would otherwise make it singular.
    cov = cov + np.eye(len(cov)) * (1e-3 * np.trace(cov) / len(cov) + 1e-9)
    return {"density_means": means.astype(np.float64), "density_precision": np.linalg.inv(cov)}


def fit_imagenet(emb: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> dict[str, np.ndarray]:
    """How much the training photos activate each ImageNet class: their mean ImageNet softmax, over its largest.

    A hard set ("the classes holding 99% of the mass") fails here: the backbone's softmax is spread so thinly that
    99% of the training photos' mass lies on 915 of the 1000 classes, and the other photos' mass falls inside it.
    Weighting each class by its share flags 98.6% of them (AUROC 0.9996) where that set flagged 24%."""
    mean = softmax(emb @ weight.T.astype(np.float64) + bias).mean(0)
    return {"imagenet_weight": weight.astype(np.float32), "imagenet_bias": bias.astype(np.float32),
            "imagenet_known": mean / mean.max()}


def class_concepts(emb: np.ndarray, y: np.ndarray, labels: list[str],
                   imagenet_head: tuple[np.ndarray, np.ndarray] | None) -> list[Concept] | None:
    """The classes' ImageNet concepts (:func:`training.concepts.find_concepts`) from the embeddings of their
    training views, or None (no ImageNet-1k classifier, or no distinct concepts)."""
    if imagenet_head is None or len(imagenet_head[1]) != 1000:
        return None
    w, b = imagenet_head
    return find_concepts((emb @ w.T.astype(np.float64) + b).argmax(1), y, labels)


def choose_scores(requested: str, has_imagenet_head: bool, has_concepts: bool = False) -> tuple[str, ...]:
    if requested == "auto":
        if has_concepts:
            return ("imagenet",)
        return ("imagenet", "density") if has_imagenet_head else ("density",)
    names = tuple(dict.fromkeys(s.strip() for s in requested.split(",") if s.strip()))
    if not names or set(names) - {"density", "imagenet"}:
        raise ValueError(f"--novelty-scores must be auto or a comma list of density, imagenet; not {requested!r}")
    if "imagenet" in names and not has_imagenet_head:
        raise ValueError("the imagenet novelty score needs a pretrained backbone with an ImageNet classifier "
                         "(efficientnet_lite0, resnet18, resnet50); use density")
    return names


def fit_detector(train_emb: np.ndarray, train_y: np.ndarray, val_emb: np.ndarray, n_classes: int,
                 imagenet_head: tuple[np.ndarray, np.ndarray] | None, cfg: OpenSetConfig,
                 labels: list[str] | None = None) -> tuple[NoveltyDetector, dict[str, Any]]:
    """Fit each chosen score on the training embeddings (every view of every training photo: ``train_emb`` and
    ``train_y`` may repeat a photo once per view), then scale and calibrate them.

    Returns the detector and its metadata block (``scores``, ``scales``, ``threshold``, ``concepts``, the
    acceptance reached)."""
    if not 0.5 <= cfg.accept < 1.0:
        raise ValueError(f"--novelty-accept must be in [0.5, 1), not {cfg.accept}")
    labels = labels or [str(k) for k in range(n_classes)]
    concepts = class_concepts(train_emb, train_y, labels, imagenet_head)
    scores = choose_scores(cfg.scores, imagenet_head is not None, concepts is not None)
    arrays: dict[str, np.ndarray] = {}
    if "density" in scores:
        arrays |= fit_density(train_emb, train_y, n_classes)
    if "imagenet" in scores:
        assert imagenet_head is not None
        arrays |= fit_imagenet(train_emb, *imagenet_head)
        if concepts is not None:
            arrays["imagenet_known"] = concept_mask(concepts)
    # Rounded as novelty.npz stores them (float32), so the threshold is calibrated on exactly what is served.
    arrays = {k: v.astype(np.float32).astype(np.float64) if v.dtype.kind == "f" else v for k, v in arrays.items()}
    detector = NoveltyDetector(scores, {s: 1.0 for s in scores}, 1.0, arrays)
    # The concept score is fitted to nothing but which concepts the classes are, so every photo the training data
    # has, its augmented (shrunk, recompressed, cropped) views too, calibrates it; the density score is fitted on
    # the training split, so only the held-out validation photos can.
    calibration = np.concatenate([val_emb, train_emb]) if scores == ("imagenet",) and concepts else val_emb
    raw = detector.raw_scores(calibration)
    # Each score in units of its own threshold, so that the largest of them is a fair combination; "higher":
    # a threshold is a real score, so at least `accept` of the photos are accepted even when they are few.
    detector.scales = {s: max(float(np.quantile(raw[s], cfg.accept, method="higher")), 1e-12) for s in scores}
    detector.threshold = max(float(np.quantile(detector.novelty(calibration), cfg.accept, method="higher")), 1e-12)
    val_novelty = detector.novelty(val_emb)
    imagenet = "the ImageNet classes the training photos activate"
    if concepts is not None:
        imagenet = ("the backbone's ImageNet probability mass on the classes' concepts (" +
                    ", ".join(f"{c.label}: {c.name.split(',')[0]}, {len(c.imagenet_classes)} ImageNet classes"
                              for c in concepts) + ")")
    decides = " and ".join({"density": "the distance to the training photos' class means (density)",
                            "imagenet": imagenet}[s] for s in scores)
    info = {
        "file": NOVELTY_FILE,
        "scores": list(scores),
        "scales": detector.scales,
        "threshold": detector.threshold,
        "known_if": "novelty <= 1 (novelty is the largest score over its scale, over the threshold)",
        "decides": decides,
        "concepts": [c.to_dict() for c in concepts] if concepts is not None else None,
        "accept_target": cfg.accept,
        "calibrated_on": "val and every training view" if calibration is not val_emb else "val",
        "val_accepted": float((val_novelty <= 1.0).mean()) if len(val_novelty) else None,
        "fitted_on": {"train": int(len(train_emb)), "val": int(len(val_emb))},
        "embedding": "mean over the spatial axes of the ONNX 'features' output",
        **({"imagenet_top_classes": [int(i) for i in np.argsort(arrays["imagenet_known"])[::-1][:10]]}
           if "imagenet" in scores and concepts is None else {}),
    }
    log.info("open-set detector: %s; %s of val accepted (target %s)", decides, info["val_accepted"], cfg.accept)
    return detector, info


def save_detector(detector: NoveltyDetector, folder: Path) -> None:
    """``novelty.npz``, floats stored as float32 (half the size; the scores are computed in float64 on load)."""
    arrays = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in detector.arrays.items()}
    with open(folder / NOVELTY_FILE, "wb") as f:
        np.savez(f, **arrays)


# -- open-set figures ---------------------------------------------------------------------------------------------

def open_set_metrics(known: np.ndarray, other: np.ndarray) -> dict[str, float | int | None]:
    """How well novelty separates in-distribution photos (``known``) from others: AUROC, FPR at 95% TPR (the share
    of in-distribution photos flagged when 95% of the others are), and the shares flagged at the threshold (1)."""
    result: dict[str, float | int | None] = {
        "n_in": int(len(known)), "n_out": int(len(other)),
        "flagged_in": float((known > 1).mean()) if len(known) else None,
        "flagged_out": float((other > 1).mean()) if len(other) else None,
        "auroc": None, "fpr_at_95_tpr": None,
    }
    if len(known) and len(other):
        y = np.r_[np.zeros(len(known)), np.ones(len(other))]
        s = np.r_[known, other]
        result["auroc"] = float(skm.roc_auc_score(y, s))
        cut = np.quantile(other, 0.05)  # 95% of the other photos score at least this
        result["fpr_at_95_tpr"] = float((known >= cut).mean())
    return result


def calibrate_and_fit(model: TransferModel, train: list[Features], val: Features, labels: list[str],
                      cfg: OpenSetConfig) -> tuple[NoveltyDetector, dict[str, Any]]:
    """After the head is trained: fold the validation-fitted temperature into it, fit the open-set detector.

    ``train`` holds the extractor's features of every training view (view 0 first), ``val`` its view-0 features.
    Returns the detector and the ``calibration`` and ``novelty`` blocks of the version's metadata."""
    val_logits = head_logits(model, val)
    temperature = fit_temperature(val_logits, val.y)
    apply_temperature(model, temperature)
    calibration = {
        "method": "temperature scaling of the head's logits, fitted on the val split (folded into the head)",
        "temperature": temperature,
        "val_ece_before": expected_calibration_error(softmax(val_logits), val.y),
        "val_ece_after": expected_calibration_error(softmax(val_logits / temperature), val.y),
    }
    log.info("temperature %.3f: val ECE %.4f -> %.4f", temperature, calibration["val_ece_before"],
             calibration["val_ece_after"])
    detector, info = fit_detector(np.concatenate([embeddings(model, v) for v in train]),
                                  np.concatenate([v.y for v in train]), embeddings(model, val), len(labels),
                                  model.imagenet_head, cfg, labels)
    return detector, {"calibration": calibration, "novelty": info}
