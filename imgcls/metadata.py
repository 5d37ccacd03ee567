"""One typed description of a model version (its ``metadata.json``), read and written here only.

Like timm's ``PretrainedCfg``: the facts code acts on are typed fields (version, labels, preprocessing, backbone,
checksums, metrics, the open-set detector, the reference batch); every other key the trainer records (data,
training settings, history, timings, ...) is kept in ``extra`` exactly as read, so a round trip loses nothing.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from imgcls.errors import ModelError
from imgcls.preprocess import Preprocess

__all__ = ["METADATA_FILE", "ModelCard"]
METADATA_FILE = "metadata.json"


@dataclass
class ModelCard:
    """A model version's description. ``files`` (file name -> sha256) is None while a version is being built."""

    version: str
    labels: list[str]
    preprocessing: Preprocess | None = None  # None only in hand-made test versions that are never run
    backbone: str = ""
    files: dict[str, str] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)  # split -> figures (accuracy, log_loss, ...)
    novelty: dict[str, Any] | None = None  # the open-set detector's settings (imgcls.novelty); None: none fitted
    reference: dict[str, Any] | None = None  # the reference batch's summary (imgcls.reference)
    extra: dict[str, Any] = field(default_factory=dict)  # every other key, as read

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        """The card of a metadata document (raises :class:`ModelError` without a version or labels)."""
        try:
            known = {f.name for f in fields(cls)} - {"extra"}
            card = cls(version=str(d["version"]), labels=[str(x) for x in d["labels"]])
        except (KeyError, TypeError) as e:
            raise ModelError(f"metadata without a version or labels: {e}") from e
        if d.get("preprocessing") is not None:
            card.preprocessing = Preprocess.from_dict(d["preprocessing"])
        card.backbone = str(d.get("backbone") or "")
        card.files = dict(d["files"]) if d.get("files") is not None else None
        card.metrics = dict(d.get("metrics") or {})
        card.novelty, card.reference = d.get("novelty"), d.get("reference")
        card.extra = {k: v for k, v in d.items() if k not in known}
        return card

    def to_dict(self) -> dict[str, Any]:
        """The metadata document (what ``metadata.json`` holds)."""
        out: dict[str, Any] = {"version": self.version, "labels": list(self.labels)}
        if self.preprocessing is not None:
            out["preprocessing"] = self.preprocessing.to_dict()
        if self.backbone:
            out["backbone"] = self.backbone
        out.update(self.extra)
        out["metrics"] = self.metrics
        for name in ("novelty", "reference", "files"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    @classmethod
    def load(cls, model_dir: Path | str) -> ModelCard:
        """Read ``model_dir/metadata.json`` (raises :class:`ModelError` when it is missing or unreadable)."""
        path = Path(model_dir) / METADATA_FILE
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            raise ModelError(f"{model_dir}: no readable {METADATA_FILE}: {e}") from e

    def save(self, model_dir: Path | str) -> None:
        """Write ``model_dir/metadata.json``."""
        (Path(model_dir) / METADATA_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    def public(self) -> dict[str, Any]:
        """The document without the bulky parts (per-epoch history, misclassified files), as ``GET /model`` and
        ``show`` print it."""
        out = {k: v for k, v in self.to_dict().items() if k != "history"}
        out["metrics"] = {split: {k: v for k, v in m.items() if k != "misclassified"} if isinstance(m, dict) else m
                          for split, m in self.metrics.items()}
        return out
