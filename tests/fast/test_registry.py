"""The registry: immutable versions with checksums, atomic promotion, rollback, clear errors."""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

import pytest

from imgcls.metadata import ModelCard
from imgcls.promotion import promote
from imgcls.registry import ModelError, Registry, verify
from tests.tiny_model import add_tiny_version


def add_version(reg: Registry, name: str, seed: int = 0) -> str:
    return add_tiny_version(reg, name, labels=("a", "b"), seed=seed)  # a real model: promote runs it


def test_add_records_sha256_and_makes_files_read_only(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    v = add_version(reg, "v1")
    meta = reg.metadata(v)
    onnx = (reg.resolve(v) / "model.onnx").read_bytes()
    assert meta["files"]["model.onnx"] == hashlib.sha256(onnx).hexdigest() and "reference.npz" in meta["files"]
    assert (reg.resolve(v) / "model.onnx").stat().st_mode & 0o222 == 0
    assert reg.versions() == ["v1"] and not list(tmp_path.glob(".staging-*"))


def test_promote_moves_current_and_logs_history_and_rolls_back(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    add_version(reg, "v1")
    add_version(reg, "v2", seed=1)
    assert reg.current() is None
    with pytest.raises(ModelError, match="no model has been promoted"):
        reg.resolve("current")
    promote(reg, "v1")
    promote(reg, "v2")
    assert reg.current() == "v2" and reg.resolve("current").name == "v2"
    promote(reg, "v1", reason="rollback")
    assert reg.current() == "v1"
    log = [json.loads(line) for line in (tmp_path / "promotions.jsonl").read_text().splitlines()]
    assert [(e["version"], e["previous"]) for e in log] == [("v1", None), ("v2", "v1"), ("v1", "v2")]


def test_promote_refuses_a_tampered_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    add_version(reg, "v1")
    promote(reg, "v1")
    add_version(reg, "v2")
    onnx = reg.resolve("v2") / "model.onnx"
    onnx.chmod(0o644)
    onnx.write_bytes(b"tampered")
    with pytest.raises(ModelError, match="sha256"):
        promote(reg, "v2")
    assert reg.current() == "v1"
    with pytest.raises(ModelError, match="sha256"):
        verify(reg.resolve("v2"))


def test_unknown_versions_are_named_errors(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    add_version(reg, "v1")
    with pytest.raises(ModelError, match="unknown model 'v9'.*v1"):
        promote(reg, "v9")


def test_resolve_accepts_folders_and_onnx_paths(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    add_version(reg, "v1")
    folder = reg.resolve("v1")
    assert reg.resolve(str(folder)) == folder == reg.resolve(str(folder / "model.onnx"))


def test_readers_never_see_a_torn_pointer(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for v in ("v1", "v2"):
        add_version(reg, v)
    promote(reg, "v1")
    seen: set[str | None] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(reg.current())

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(200):
        promote(reg, "v2" if i % 2 == 0 else "v1")
    stop.set()
    reader.join()
    assert seen <= {"v1", "v2"}


def test_public_metadata_drops_history_and_misclassified_without_changing_the_original() -> None:
    meta = {"version": "v1", "history": [{"epoch": 1}], "labels": ["a", "b"],
            "metrics": {"test": {"accuracy": 0.5, "misclassified": [{"path": "x"}]}, "val": {"accuracy": 0.6}}}
    card = ModelCard.from_dict(meta)
    assert card.public() == {"version": "v1", "labels": ["a", "b"], "metrics": {"test": {"accuracy": 0.5},
                                                                               "val": {"accuracy": 0.6}}}
    assert card.extra["history"] and card.metrics["test"]["misclassified"]  # the card itself is untouched


def test_a_card_keeps_unknown_keys_and_round_trips(tmp_path: Path) -> None:
    meta = {"version": "v1", "labels": ["a", "b"], "backbone": "tiny", "novelty": {"threshold": 1.0},
            "preprocessing": {"input_size": 32, "resize_size": 36, "mean": [0.5] * 3, "std": [0.5] * 3,
                              "layout": "NCHW", "dtype": "float32"},
            "someday": {"a new key": [1, 2]}, "files": {"model.onnx": "0" * 64}, "metrics": {}}
    card = ModelCard.from_dict(meta)
    assert card.preprocessing.input_size == 32 and card.novelty == {"threshold": 1.0} and card.backbone == "tiny"
    card.save(tmp_path)
    assert ModelCard.load(tmp_path).to_dict() == meta
    with pytest.raises(ModelError, match="no readable"):
        ModelCard.load(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="version or labels"):
        ModelCard.from_dict({"labels": ["a"]})


def test_a_missing_file_fails_verification_and_promotion(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    v = add_version(reg, "v1")
    (staging := reg.staging_dir()).joinpath("model.onnx").write_bytes(b"x")
    extra = reg.add(staging, ModelCard(version="v2", labels=["a"]))
    folder = reg.resolve(extra)
    folder.joinpath("model.onnx").unlink()
    with pytest.raises(ModelError, match="model.onnx is missing"):
        verify(folder)
    with pytest.raises(ModelError, match="missing"):
        promote(reg, extra)
    assert reg.current() is None and promote(reg, v) == "v1"
