"""The tiny model trained by the real pipeline: what the registry holds for it, and the training CLI around it."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from imgcls.registry import Registry
from tests.conftest import TINY_CLASSES, TINY_NOT_AN_IMAGE, TINY_PER_SPLIT, TINY_TRUNCATED


def test_tiny_model_is_registered_with_metadata_report_and_metrics(tiny_registry: Path, tiny_data: Path) -> None:
    reg = Registry(tiny_registry)
    meta = reg.metadata("current")
    assert meta["labels"] == TINY_CLASSES and meta["backbone"] == "tiny" and not meta["pretrained"]
    assert meta["preprocessing"]["input_size"] == 32
    assert len(meta["data"]["manifest_sha256"]) == 64
    assert meta["export"]["max_abs_diff_probabilities"] <= 1e-4
    test = meta["metrics"]["test"]
    n_test = TINY_PER_SPLIT["test"] * len(TINY_CLASSES)
    assert test["n"] == n_test and test["accuracy"] >= 0.9 and test["log_loss"] < 0.5
    assert sum(map(sum, test["confusion_matrix"])) == n_test
    assert list(test["skipped"]) == [str(tiny_data / TINY_NOT_AN_IMAGE)]
    assert test["skipped"][str(tiny_data / TINY_NOT_AN_IMAGE)].startswith("not_an_image")
    assert meta["data"]["counts"]["train"] == {c: TINY_PER_SPLIT["train"] + (c == "red") for c in TINY_CLASSES}
    assert str(tiny_data / TINY_TRUNCATED) not in json.dumps(meta["metrics"])  # skipped while extracting features
    for name in ("report.md", "learning_curves.png", "confusion_matrix.png", "class_activation_maps.png"):
        assert (reg.resolve("current") / "report" / name).stat().st_size > 0, name
    assert (reg.resolve("current") / "head.npz").is_file()


def test_onnx_has_a_dynamic_batch_axis_and_feature_map_output(tiny_registry: Path) -> None:
    session = ort.InferenceSession(str(Registry(tiny_registry).resolve("current") / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    for n in (1, 3):
        probs, fmap = session.run(None, {"input": np.zeros((n, 3, 32, 32), np.float32)})
        assert probs.shape == (n, len(TINY_CLASSES)) and np.allclose(probs.sum(1), 1, atol=1e-5)
        assert fmap.shape == (n, 32, 8, 8)
