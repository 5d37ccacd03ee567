"""Retraining's rules without training: the promotion decision, feedback files as samples, the feedback folder."""
from __future__ import annotations

from pathlib import Path

import pytest

from imgcls.registry import default_feedback_dir
from training.data import DataError
from training.retrain import decide, feedback_samples


def test_decision_rule_accuracy_first_then_log_loss() -> None:
    base = {"accuracy": 0.90, "log_loss": 0.30}
    assert decide(base, {"accuracy": 0.95, "log_loss": 0.50}).promote  # better accuracy wins despite log-loss
    assert not decide(base, {"accuracy": 0.85, "log_loss": 0.01}).promote
    assert decide(base, {"accuracy": 0.90, "log_loss": 0.30}).promote  # a tie is "at least as good"
    assert not decide(base, {"accuracy": 0.90, "log_loss": 0.31}).promote
    assert not decide(base, {"accuracy": 0.94, "log_loss": 0.10}, min_gain=0.05).promote
    assert decide(base, {"accuracy": 0.95, "log_loss": 0.10}, min_gain=0.05).promote  # 0.90 + 0.05 in floats
    assert not decide(base, {"accuracy": 0.90, "log_loss": 0.10}, min_gain=0.01).promote
    assert "log-loss" in decide(base, {"accuracy": 0.90, "log_loss": 0.31}).reason


def test_feedback_folder_default_is_one_definition(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("FEEDBACK_DIR", raising=False)
    assert default_feedback_dir(tmp_path) == tmp_path / "feedback"
    monkeypatch.setenv("FEEDBACK_DIR", str(tmp_path / "elsewhere"))
    assert default_feedback_dir(tmp_path) == tmp_path / "elsewhere"


def test_feedback_files_become_samples_and_unknown_labels_are_refused(tmp_path: Path) -> None:
    for label, names in {"dog": ["b.img", ".a.img.tmp"], "cat": ["c.img", "a.img"]}.items():
        (tmp_path / label).mkdir()
        for name in names:
            (tmp_path / label / name).write_bytes(b"x")
    samples = feedback_samples(tmp_path, ["cat", "dog"])
    assert samples == [(tmp_path / "cat" / "a.img", 0), (tmp_path / "cat" / "c.img", 0), (tmp_path / "dog" / "b.img", 1)]
    assert feedback_samples(tmp_path / "absent", ["cat"]) == []
    with pytest.raises(DataError, match="labels \\['dog'\\]"):
        feedback_samples(tmp_path, ["cat"])
