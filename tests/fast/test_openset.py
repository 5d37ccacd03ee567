"""The open-set detector and temperature scaling: fast tests on synthetic features, and one end to end through the
real CLI, ONNX model and batch job on generated images (no licensed data needed)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imgcls.novelty import NoveltyDetector
from tests.conftest import ROOT
from training.openset import (
    OpenSetConfig,
    apply_temperature,
    choose_scores,
    expected_calibration_error,
    fit_detector,
    fit_temperature,
    open_set_metrics,
    save_detector,
    softmax,
    uncalibrated,
)


def clusters(rng: np.random.Generator, n: int, dim: int = 32, classes: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Non-negative embeddings (like pooled ReLU features) around one direction per class."""
    y = rng.integers(0, classes, n)
    centres = np.abs(rng.normal(size=(classes, dim))) * 2
    return np.abs(centres[y] + rng.normal(scale=0.3, size=(n, dim))), y


def test_density_detector_accepts_the_target_share_of_val_and_flags_other_data() -> None:
    rng = np.random.default_rng(0)
    x, y = clusters(rng, 1200)
    train, val, test = slice(0, 600), slice(600, 900), slice(900, 1200)
    other = np.abs(rng.normal(size=(300, 32))) * 2  # directions none of the classes has
    detector, info = fit_detector(x[train], y[train], x[val], 3, None, OpenSetConfig(accept=0.95))
    assert info["scores"] == ["density"] and info["val_accepted"] == pytest.approx(0.95, abs=0.01)
    known, unknown = detector.novelty(x[test]), detector.novelty(other)
    assert 0.85 <= (known <= 1).mean() <= 1.0
    assert (unknown > 1).mean() > 0.95
    m = open_set_metrics(known, unknown)
    assert m["auroc"] > 0.98 and m["fpr_at_95_tpr"] < 0.1 and m["n_in"] == 300 and m["n_out"] == 300


def test_imagenet_score_uses_the_classes_the_training_data_activates() -> None:
    rng = np.random.default_rng(1)
    n_imagenet = 50
    weight, bias = 10.0 * np.eye(n_imagenet), np.zeros(n_imagenet)  # ImageNet class j fires on channel j

    def looks_like(classes: np.ndarray) -> np.ndarray:
        return np.abs(np.eye(n_imagenet)[classes] + rng.normal(scale=0.2, size=(len(classes), n_imagenet)))

    # training images look like ImageNet classes 0-4; the other photos like classes 20-49
    train, val, other = looks_like(rng.integers(0, 5, 400)), looks_like(rng.integers(0, 5, 200)), \
        looks_like(rng.integers(20, 50, 200))
    y = rng.integers(0, 2, 400)
    detector, info = fit_detector(train, y, val, 2, (weight, bias), OpenSetConfig(scores="imagenet"))
    assert info["scores"] == ["imagenet"] and set(info["imagenet_top_classes"][:5]) == set(range(5))
    assert (detector.novelty(other) > 1).mean() > (detector.novelty(val) > 1).mean() + 0.5


def test_auto_uses_both_scores_with_an_imagenet_head_and_density_without() -> None:
    assert choose_scores("auto", True) == ("imagenet", "density")
    assert choose_scores("auto", False) == ("density",)
    assert choose_scores("density", True) == ("density",)
    with pytest.raises(ValueError, match="ImageNet classifier"):
        choose_scores("imagenet", False)
    with pytest.raises(ValueError, match="novelty-scores"):
        choose_scores("mahalanobis", True)


def test_tiny_val_and_dead_channels_do_not_crash(tmp_path: Path) -> None:
    """A random-init network: many channels always zero, two val images."""
    rng = np.random.default_rng(2)
    x = np.zeros((6, 64))
    x[:, :3] = rng.random((6, 3))
    detector, info = fit_detector(x[:4], np.array([0, 0, 1, 1]), x[4:], 2, None, OpenSetConfig())
    assert np.isfinite(detector.novelty(x)).all() and info["val_accepted"] == 1.0
    save_detector(detector, tmp_path)
    again = NoveltyDetector.load(tmp_path, info)
    assert np.allclose(again.novelty(x), detector.novelty(x))


def test_temperature_scaling_fixes_overconfidence_and_keeps_the_argmax() -> None:
    rng = np.random.default_rng(3)
    n = 2000
    y = rng.integers(0, 2, n)
    true_logit = rng.normal(scale=2.0, size=n)  # the real evidence
    p1 = 1 / (1 + np.exp(-true_logit))
    y = (rng.random(n) < p1).astype(int)
    logits = np.stack([np.zeros(n), true_logit * 4], 1)  # four times overconfident
    t = fit_temperature(logits[:1000], y[:1000])
    assert 3.0 < t < 5.5
    before, after = softmax(logits[1000:]), softmax(logits[1000:] / t)
    assert expected_calibration_error(after, y[1000:]) < expected_calibration_error(before, y[1000:]) / 2
    assert np.allclose(uncalibrated(after, t), before, atol=1e-6)

    head = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(8, 3))
    model = torch.nn.Module()
    model.head = head
    features = torch.randn(5, 8)
    with torch.no_grad():
        raw = head.eval()(features)
        apply_temperature(model, 2.5)
        assert torch.allclose(head(features), raw / 2.5, atol=1e-6)


def test_novelty_scoring_imports_no_torch() -> None:
    code = "import sys, imgcls.novelty, imgcls.onnx_model; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_retrain_refuses_a_candidate_whose_open_set_rejection_drops_more_than_allowed() -> None:
    from training.retrain import Decision, open_set_gate

    better = Decision(True, "candidate accuracy 0.9950 >= base 0.9900 + min-gain 0.0000")
    base = {"open_set": {"flagged_out": 0.99}}
    refused = open_set_gate(better, base, {"open_set": {"flagged_out": 0.975}}, max_drop=0.01)
    assert not refused.promote and "open-set rejection fell" in refused.reason and "97.50%" in refused.reason
    kept = open_set_gate(better, base, {"open_set": {"flagged_out": 0.982}}, max_drop=0.01)
    assert kept.promote and "98.20%" in kept.reason
    assert open_set_gate(better, {}, {"open_set": {"flagged_out": 0.5}}, max_drop=0.01).promote  # base flags none
    worse = Decision(False, "candidate accuracy lower")
    assert not open_set_gate(worse, base, {"open_set": {"flagged_out": 1.0}}, max_drop=0.01).promote
