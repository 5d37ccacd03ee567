"""Honest evaluation of an exported model: ONNX Runtime on a held-out split, the same preprocessing as serving."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

import numpy as np
from sklearn import metrics as skm
from tqdm import tqdm

from imgcls.loader import preprocessed_batches
from imgcls.preprocess import Preprocess
from training.data import Sample

log = logging.getLogger(__name__)


def predict_samples(predict: Callable[[np.ndarray], np.ndarray], preprocess: Preprocess, samples: list[Sample],
                    desc: str = "evaluate") -> tuple[np.ndarray, np.ndarray, list[Path], dict[Path, str]]:
    """Probabilities for every readable sample; returns (probs, labels, paths, errors)."""
    paths = [p for p, _ in samples]
    probs, kept, errors = [], [], {}
    with tqdm(total=len(paths), desc=desc, unit="img", leave=False) as bar:
        for idx, batch, errs in preprocessed_batches(paths, preprocess):
            if batch is not None:
                probs.append(predict(batch))
                kept += idx
            errors.update({paths[i]: str(e) for i, e in errs.items()})
            bar.update(len(idx) + len(errs))
    if errors:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(errors), next(iter(errors.items())))
    return (np.concatenate(probs) if probs else np.zeros((0, 0)), np.asarray([samples[i][1] for i in kept]),
            [paths[i] for i in kept], errors)


def classification_metrics(y: np.ndarray, probs: np.ndarray, classes: list[str], paths: list[Path]) -> dict:
    """Accuracy, log-loss, ROC-AUC, confusion matrix, per-class precision/recall and the misclassified files."""
    labels = list(range(len(classes)))
    pred = probs.argmax(1)
    try:
        if len(classes) == 2:
            auc = float(skm.roc_auc_score(y, probs[:, 1]))
        else:
            auc = float(skm.roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=labels))
    except ValueError:  # a class absent from this split
        auc = None
    precision, recall, f1, support = skm.precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    wrong = np.flatnonzero(pred != y)
    return {
        "n": int(len(y)),
        "accuracy": float((pred == y).mean()),
        "log_loss": float(skm.log_loss(y, np.clip(probs, 1e-15, 1.0), labels=labels)),
        "roc_auc": auc,
        "confusion_matrix": skm.confusion_matrix(y, pred, labels=labels).tolist(),
        "per_class": {c: {"precision": float(precision[i]), "recall": float(recall[i]), "f1": float(f1[i]),
                          "support": int(support[i])} for i, c in enumerate(classes)},
        "misclassified": [{"path": str(paths[i]), "label": classes[y[i]], "predicted": classes[pred[i]],
                           "score": float(probs[i, pred[i]])} for i in wrong],
    }


def evaluate_onnx(model_dir: Path, samples: list[Sample], classes: list[str], device: str = "auto",
                  meta: dict | None = None, variant: str = "fp32") -> dict:
    """Load a version folder (its ``variant``) in ONNX Runtime and compute :func:`classification_metrics`."""
    from imgcls.onnx_model import OnnxClassifier

    model = OnnxClassifier(model_dir, device=device, metadata=meta, variant=variant)
    if model.labels != classes:
        mapping = {c: i for i, c in enumerate(model.labels)}
        missing = [c for c in classes if c not in mapping]
        if missing:
            raise ValueError(f"the data's classes {missing} are not among the model's labels {model.labels}")
        samples = [(p, mapping[classes[l]]) for p, l in samples]
    probs, y, paths, errors = predict_samples(model.predict, model.preprocess, samples)
    if not len(y):
        raise ValueError(f"none of the {len(samples)} images could be read, e.g. {next(iter(errors.items()), '')}")
    result = classification_metrics(y, probs, model.labels, paths)
    result["skipped"] = {str(p): e for p, e in errors.items()}
    result["model"], result["variant"] = model.version, model.variant
    return result
