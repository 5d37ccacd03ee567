"""Honest evaluation of an exported model: ONNX Runtime on a held-out split, the same preprocessing as serving."""
from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

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


def ood_samples(folder: Path | str) -> list[Sample]:
    """Every image file under ``folder`` (recursively): photos of none of the model's classes."""
    from training.data import IMAGE_SUFFIXES

    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"--ood folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith("."))
    if not files:
        raise ValueError(f"--ood folder {root} holds no images")
    return [(p, 0) for p in files]


def _with_novelty(model, novelty: list[np.ndarray]) -> Callable[[np.ndarray], np.ndarray]:
    """``model.predict`` that also collects each batch's novelty (when the version has a detector)."""
    def predict(batch: np.ndarray) -> np.ndarray:
        out = model.classify(batch)
        if out.novelty is not None:
            novelty.append(out.novelty)
        return out.probabilities
    return predict


def evaluate_onnx(model_dir: Path, samples: list[Sample], classes: list[str], device: str = "auto",
                  meta: dict | None = None, variant: str = "fp32", ood: Path | str | None = None,
                  keep_paths: bool = False) -> dict:
    """Load a version folder (its ``variant``) in ONNX Runtime and compute :func:`classification_metrics` on
    ``samples``, the expected calibration error, and (for a version with an open-set detector) the share of
    ``samples`` flagged as unknown; with ``ood`` (a folder of photos of other things) also AUROC, FPR at 95% TPR and
    the share flagged."""
    from imgcls.metadata import ModelCard
    from imgcls.onnx_model import OnnxClassifier
    from training.openset import expected_calibration_error, open_set_metrics, reliability, uncalibrated

    model = OnnxClassifier(model_dir, device=device, card=None if meta is None else ModelCard.from_dict(meta),
                           variant=variant)
    if model.labels != classes:
        mapping = {c: i for i, c in enumerate(model.labels)}
        missing = [c for c in classes if c not in mapping]
        if missing:
            raise ValueError(f"the data's classes {missing} are not among the model's labels {model.labels}")
        samples = [(p, mapping[classes[l]]) for p, l in samples]
    novelty: list[np.ndarray] = []
    probs, y, paths, errors = predict_samples(_with_novelty(model, novelty), model.preprocess, samples)
    if not len(y):
        raise ValueError(f"none of the {len(samples)} images could be read, e.g. {next(iter(errors.items()), '')}")
    result = classification_metrics(y, probs, model.labels, paths)
    result["skipped"] = {str(p): e for p, e in errors.items()}
    if keep_paths:  # in the order of open_set.novelty.in
        result["scored_paths"] = [str(p) for p in paths]
    result["model"], result["variant"] = model.version, model.variant
    result["ece"] = expected_calibration_error(probs, y)
    result["reliability"] = reliability(probs, y)
    temperature = (model.card.extra.get("calibration") or {}).get("temperature")
    if temperature:
        result["temperature"] = temperature
        before = uncalibrated(probs, temperature)
        result["ece_uncalibrated"] = expected_calibration_error(before, y)
        result["reliability_uncalibrated"] = reliability(before, y)
    if model.detector is not None:
        known = np.concatenate(novelty) if novelty else np.zeros(0)
        other = np.zeros(0)
        if ood is not None:
            other_novelty: list[np.ndarray] = []
            predict_samples(_with_novelty(model, other_novelty), model.preprocess, ood_samples(ood), desc="ood")
            other = np.concatenate(other_novelty) if other_novelty else other
        detector = {k: model.card.novelty.get(k) for k in ("scores", "accept_target", "val_accepted")}
        result["open_set"] = {**open_set_metrics(known, other), "ood": str(ood) if ood is not None else None,
                              "detector": detector,
                              "novelty": {"in": [round(float(v), 5) for v in known],
                                          "out": [round(float(v), 5) for v in other]}}
    return result


def evaluate_shifted(model_dir: Path, folders: list[Path | str], device: str = "auto", variant: str = "fp32",
                     meta: dict | None = None) -> list[dict]:
    """For each labelled folder of photos from another source than the training data (any layout the training
    data may have, every image scored): accuracy, log-loss, expected calibration error and the share answered
    "neither" (``known: false``), which for photos of the model's own classes is always wrong."""
    from training.data import create_dataset

    out = []
    for folder in folders:
        ds = create_dataset(folder)
        samples = ds.select("all")
        if not samples:
            raise ValueError(f"--shifted folder {folder} holds no labelled images")
        r = evaluate_onnx(model_dir, samples, ds.classes, device=device, meta=meta, variant=variant, keep_paths=True)
        novelty = (r.get("open_set") or {}).get("novelty", {}).get("in", [])
        out.append({"data": str(folder), "n": r["n"], "accuracy": r["accuracy"], "log_loss": r["log_loss"],
                    "ece": r["ece"], "answered_neither": (r.get("open_set") or {}).get("flagged_in"),
                    "model": r["model"], "variant": r["variant"], "misclassified": r["misclassified"],
                    "neither": [p for p, v in zip(r["scored_paths"], novelty) if v > 1]})
    return out


def shifted_lines(shifted: list[dict]) -> list[str]:
    """One line per shifted folder, as ``evaluate`` prints them and the reports show them."""
    return [f"{s['data']}: accuracy {s['accuracy']:.4f}, log-loss {s['log_loss']:.4f}, ECE {s['ece']:.4f}, "
            + (f"answered neither {s['answered_neither']:.2%}" if s["answered_neither"] is not None
               else "no open-set detector") + f" (n={s['n']})" for s in shifted]
