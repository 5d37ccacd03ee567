"""The model registry in ``artifacts/``: immutable version folders and an atomically moved ``current`` pointer.

Layout::

    artifacts/models/<version>/model.onnx     the exported model (one file)
    artifacts/models/<version>/model.int8.onnx, model.fp16.onnx   optional variants (training/variants.py)
    artifacts/models/<version>/head.npz       the linear head's weights, for class activation maps
    artifacts/models/<version>/metadata.json  labels, preprocessing, backbone, data hash, metrics, sha256s
    artifacts/current                         the promoted version's name (replaced by write-then-rename)
    artifacts/promotions.jsonl                every promotion, appended (durably) before the pointer moves
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from imgcls.errors import ModelError
from imgcls.metadata import METADATA_FILE, ModelCard

__all__ = ["DEFAULT_ROOT", "HEAD_FILE", "ONNX_FILE", "PROJECT_ROOT", "VARIANT_FILES", "ModelError", "Registry",
           "default_feedback_dir", "new_version", "now_iso", "sha256_file", "verify", "write_atomic"]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
ONNX_FILE, HEAD_FILE = "model.onnx", "head.npz"
# The same network at other precisions; a version holds a variant only when it passed the accuracy rule.
VARIANT_FILES = {"fp32": ONNX_FILE, "int8": "model.int8.onnx", "fp16": "model.fp16.onnx"}


DEFAULT_ROOT = PROJECT_ROOT / "artifacts"  # the programs' default (their ARTIFACTS_DIR setting overrides it)


def default_feedback_dir(root: Path | str) -> Path:
    """Where the service stores POST /feedback images and retraining reads them, unless told otherwise
    (FEEDBACK_DIR): ``<root>/feedback`` for the registry folder ``root``."""
    return Path(root) / "feedback"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that readers see the old or the new content, never a torn file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def verify(model_dir: Path) -> ModelCard:
    """Check the version's files against the sha256s in its metadata; return its card."""
    card = ModelCard.load(model_dir)
    for name, expected in (card.files or {}).items():
        path = model_dir / name
        if not path.is_file():
            raise ModelError(f"{model_dir}: {name} is missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ModelError(f"{model_dir}: {name} sha256 {actual[:12]}... does not match metadata {expected[:12]}...")
    if ONNX_FILE not in (card.files or {}):
        raise ModelError(f"{model_dir}: metadata records no sha256 for {ONNX_FILE}")
    return card


class Registry:
    """Model versions under ``root`` (default :data:`DEFAULT_ROOT`, ``./artifacts`` of the checkout)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else DEFAULT_ROOT
        self.models = self.root / "models"
        self.pointer = self.root / "current"

    def versions(self) -> list[str]:
        if not self.models.is_dir():
            return []
        return sorted(p.name for p in self.models.iterdir() if (p / METADATA_FILE).is_file())

    def current(self) -> str | None:
        try:
            return self.pointer.read_text().strip() or None
        except FileNotFoundError:
            return None

    def resolve(self, ref: str = "current") -> Path:
        """``current``, a version name, a version folder or an ``.onnx`` file inside one, as a version folder."""
        if ref == "current":
            version = self.current()
            if version is None:
                raise ModelError(f"no model has been promoted in {self.root}; train one: python -m training train")
            ref = version
        if (self.models / ref / METADATA_FILE).is_file():
            return self.models / ref
        path = Path(ref)
        if path.suffix == ".onnx":
            path = path.parent
        if (path / METADATA_FILE).is_file():
            return path
        known = ", ".join(self.versions()[-5:]) or "none"
        raise ModelError(f"unknown model {ref!r} (not a version in {self.models}, nor a version folder); "
                         f"recent: {known}")

    def card(self, ref: str = "current") -> ModelCard:
        """The description of version ``ref`` (not verified against its files: :func:`verify` does that)."""
        return ModelCard.load(self.resolve(ref))

    def metadata(self, ref: str = "current") -> dict[str, Any]:
        """The same as a plain document (``metadata.json``), for reports and tools."""
        return self.card(ref).to_dict()

    def add(self, staging: Path, card: ModelCard) -> str:
        """Record checksums in ``card``, write it into ``staging`` and move the folder in as a new version."""
        version = card.version
        card.files = {p.name: sha256_file(p) for p in sorted(staging.iterdir()) if p.is_file()}
        card.save(staging)
        for p in staging.rglob("*"):  # versions are immutable: read-only files
            if p.is_file():
                p.chmod(stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH)
        staging.chmod(0o755)
        self.models.mkdir(parents=True, exist_ok=True)
        os.rename(staging, self.models / version)
        return version

    def staging_dir(self) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(dir=self.root, prefix=".staging-"))

    def discard(self, staging: Path) -> None:
        shutil.rmtree(staging, ignore_errors=True)

    def set_current(self, ref: str, reason: str = "manual") -> str:
        """Point ``current`` at a version of this registry whose files match their checksums (atomically), and log
        it. Only :func:`imgcls.promotion.promote` calls this: it also makes the version reproduce its reference
        batch first. Rolling back is promoting an older version."""
        model_dir = self.resolve(ref)
        if model_dir.parent != self.models:
            raise ModelError(f"{model_dir} is not a version of this registry ({self.models})")
        verify(model_dir)
        previous = self.current()
        # The log is written ahead, durably: a process killed between the two steps leaves a last entry whose
        # pointer move did not happen (its "previous" is still current), never a pointer move that no entry records.
        entry = {"time": now_iso(), "version": model_dir.name, "previous": previous, "reason": reason}
        with open(self.root / "promotions.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")
            f.flush()
            os.fsync(f.fileno())
        write_atomic(self.pointer, model_dir.name + "\n")
        return model_dir.name


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_version(backbone: str) -> str:
    """A sortable, unique version name: UTC time, backbone and a short random suffix."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{backbone}-{os.urandom(2).hex()}"

