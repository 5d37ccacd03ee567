"""The training pipeline: data -> cached features -> head -> ONNX export -> evaluation -> registry version."""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from imgcls.metadata import ModelCard
from imgcls.reference import write_reference
from imgcls.registry import HEAD_FILE, ONNX_FILE, Registry, new_version, now_iso
from training.checkpoint import CHECKPOINT_FILE, save_checkpoint
from training.concepts import concept_mask
from training.data import Dataset, Sample
from training.evaluate import evaluate_onnx, evaluate_shifted
from training.export import export_onnx, head_weights, parity_batch
from training.features import FeatureExtractor
from training.fit import FitConfig, fit
from training.models import create_model
from training.openset import OpenSetConfig, calibrate_and_fit, class_concepts, embeddings, save_detector
from training.report import write_report
from training.variants import build_variants

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    backbone: str = "efficientnet_lite0"
    weights: Path | None = None
    random_init: bool = False
    unfreeze_last_block: bool = False
    aug_views: int = 2  # augmented views per training image, besides the plain one
    dropout: float = 0.2
    concept_head: bool = True  # where the classes are ImageNet concepts, the head also weighs the backbone's view
    fit: FitConfig = field(default_factory=FitConfig)
    open_set: OpenSetConfig = field(default_factory=OpenSetConfig)


def limit_per_class(ds: Dataset, n: int | None) -> Dataset:
    """At most ``n`` files per class in each split (deterministic: the first by file name)."""
    if not n:
        return ds
    splits = {}
    for s, items in ds.splits.items():
        kept: list[Sample] = []
        for label in range(len(ds.classes)):
            kept += sorted((x for x in items if x[1] == label), key=lambda x: x[0].name)[:n]
        splits[s] = kept
    return Dataset(ds.root, ds.layout, ds.classes, splits, ds.ignored)


def train(ds: Dataset, cfg: TrainConfig, registry: Registry, *, cache_dir: Path | None = None,
          parent: str | None = None, sources: dict | None = None, ood: Path | None = None,
          shifted: list[Path] | None = None) -> tuple[str, dict]:
    """Train, export and evaluate a model on ``ds``; add it to ``registry`` as a new (unpromoted) version.

    ``parent`` and ``sources`` (where a retrain's data came from) are recorded in the version's metadata; ``ood``,
    a folder of photos of none of the classes, adds open-set figures to the test metrics; ``shifted``, labelled
    folders of the classes from other sources, adds their figures (``metrics.shifted``)."""
    for split in ("train", "val", "test"):
        if not ds.splits.get(split):
            raise ValueError(f"the {split} split of {ds.root} is empty")
    torch.set_num_threads(os.cpu_count() or 1)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    torch.manual_seed(cfg.fit.seed)  # the new head's initial weights: --seed makes a run reproducible
    model = create_model(cfg.backbone, len(ds.classes), weights=cfg.weights, random_init=cfg.random_init,
                         dropout=cfg.dropout, unfreeze_last_block=cfg.unfreeze_last_block)
    # Only fixed, known weights make features cacheable (random and scratch backbones differ every run).
    extractor = FeatureExtractor(model, cache_dir if model.pretrained else None,
                                 frozen_dir=cache_dir.parent / "frozen" if cache_dir else None)
    views = extractor.extract_views(ds.splits["train"], range(cfg.aug_views + 1), "train features")
    val = extractor.extract(ds.splits["val"], 0, "val features")
    timings["features_s"] = time.perf_counter() - t0
    concepts = None
    if cfg.concept_head:
        concepts = class_concepts(np.concatenate([embeddings(model, v) for v in views]),
                                  np.concatenate([v.y for v in views]), ds.classes, model.imagenet_head)
    if concepts is not None:
        torch.manual_seed(cfg.fit.seed)
        model.use_concepts(np.stack([concept_mask([c]) for c in concepts]))

    t1 = time.perf_counter()
    history = fit(model, views, val, cfg.fit)
    detector, open_set_meta = calibrate_and_fit(model, views, val, ds.classes, cfg.open_set)
    timings["fit_s"] = time.perf_counter() - t1

    staging = registry.staging_dir()
    try:
        t2 = time.perf_counter()
        check_paths = [p for p, _ in ds.splits["val"][:: max(1, len(ds.splits["val"]) // 16)]][:16]
        parity = parity_batch(check_paths, model.preprocess)
        export_info = export_onnx(model, staging / ONNX_FILE, parity)
        save_checkpoint(model, staging / CHECKPOINT_FILE, pretrained=model.pretrained)
        head = head_weights(model)
        if head is not None:
            np.savez(staging / HEAD_FILE, **head)
        save_detector(detector, staging)
        timings["export_s"] = time.perf_counter() - t2

        version = new_version(cfg.backbone)
        meta = {
            "version": version,
            "created_at": now_iso(),
            "labels": ds.classes,
            "preprocessing": model.preprocess.to_dict(),
            "backbone": cfg.backbone,
            "weights": model.weights_id,
            "pretrained": model.pretrained,
            "unfreeze_last_block": model.unfreeze_last_block,
            "head": {"kind": "linear + concepts" if concepts else "linear",
                     "concepts": [c.to_dict() for c in concepts] if concepts else None},
            "outputs": {"probabilities": "softmax over labels", "features": "last convolutional feature map"},
            "data": {"root": ds.root, "layout": ds.layout, "manifest_sha256": ds.manifest_hash(),
                     "counts": ds.counts(), **({"sources": sources} if sources else {})},
            "training": {**asdict(cfg), "weights": str(cfg.weights) if cfg.weights else None,
                         "epochs_run": len(history), "parent": parent,
                         "torch": torch.__version__, "python": platform.python_version()},
            "history": history,
            "export": export_info,
            **open_set_meta,
        }
        t3 = time.perf_counter()
        meta["metrics"] = {
            "val": _summary(evaluate_onnx(staging, ds.splits["val"], ds.classes, device="cpu", meta=meta)),
            "test": evaluate_onnx(staging, ds.splits["test"], ds.classes, device="cpu", meta=meta, ood=ood),
        }
        if shifted:
            meta["metrics"]["shifted"] = evaluate_shifted(staging, shifted, device="cpu", meta=meta)
        timings["evaluate_s"] = time.perf_counter() - t3
        t5 = time.perf_counter()
        meta["variants"] = build_variants(staging, meta, ds.splits["train"], ds.splits["test"])
        timings["variants_s"] = time.perf_counter() - t5
        t4 = time.perf_counter()
        cams = [next(p for p, l in ds.splits["test"] if l == k) for k in range(len(ds.classes))][:4]
        write_report(staging / "report", meta, history, model, cams)
        timings["report_s"] = time.perf_counter() - t4
        timings["total_s"] = time.perf_counter() - t0
        meta["timings"] = {k: round(v, 2) for k, v in timings.items()}
        test = meta["metrics"]["test"]
        log.info("%s: test accuracy %.4f, log-loss %.4f (%d images) in %.0f s", version, test["accuracy"],
                 test["log_loss"], test["n"], timings["total_s"])
        meta["reference"] = write_reference(staging, parity, ModelCard.from_dict(meta))  # promote and serve re-run it
        card = ModelCard.from_dict(meta)
        registry.add(staging, card)
        meta = card.to_dict()  # with the checksums
    except BaseException:
        registry.discard(staging)
        raise
    return version, meta


def _summary(m: dict) -> dict:
    return {k: m[k] for k in ("n", "accuracy", "log_loss", "roc_auc")}
