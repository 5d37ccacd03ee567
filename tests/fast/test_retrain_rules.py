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


def test_feedback_folder_default_is_one_definition(tmp_path: Path) -> None:
    """The library's default; FEEDBACK_DIR is read by the programs (the service's Config, retrain's --feedback)."""
    from service.config import Config

    assert default_feedback_dir(tmp_path) == tmp_path / "feedback"
    assert Config.from_env({"ARTIFACTS_DIR": str(tmp_path)}).feedback_dir == tmp_path / "feedback"
    assert Config.from_env({"ARTIFACTS_DIR": str(tmp_path), "FEEDBACK_DIR": "/x"}).feedback_dir == Path("/x")


def test_feedback_files_become_samples_and_unknown_labels_are_refused(tmp_path: Path) -> None:
    for label, names in {"dog": ["b.img", ".a.img.tmp"], "cat": ["c.img", "a.img"]}.items():
        (tmp_path / label).mkdir()
        for name in names:
            (tmp_path / label / name).write_bytes(b"x")
    samples = feedback_samples(tmp_path, ["cat", "dog"])
    assert samples == [(tmp_path / "cat" / "a.img", 0), (tmp_path / "cat" / "c.img", 0),
                       (tmp_path / "dog" / "b.img", 1)]
    assert feedback_samples(tmp_path / "absent", ["cat"]) == []
    with pytest.raises(DataError, match="labels \\['dog'\\]"):
        feedback_samples(tmp_path, ["cat"])


def test_shifted_gate_refuses_a_candidate_that_says_neither_more_often_on_photos_from_elsewhere() -> None:
    from training.retrain import Decision, shifted_gate

    ok = Decision(True, "candidate accuracy 0.99 >= base 0.98")
    base = [{"data": "imagenet", "answered_neither": 0.02}, {"data": "lowres", "answered_neither": 0.01}]
    worse = [{"data": "imagenet", "answered_neither": 0.05}, {"data": "lowres", "answered_neither": 0.01}]
    within = [{"data": "imagenet", "answered_neither": 0.025}, {"data": "lowres", "answered_neither": 0.0}]
    refused = shifted_gate(ok, base, worse, max_rise=0.01)
    assert not refused.promote and "neither for 5.00% of the photos in imagenet" in refused.reason
    kept = shifted_gate(ok, base, within, max_rise=0.01)
    assert kept.promote and "2.50% of imagenet (base 2.00%)" in kept.reason
    no_detector = [{"data": "imagenet", "answered_neither": None}, {"data": "lowres", "answered_neither": None}]
    assert shifted_gate(ok, no_detector, within, max_rise=0.01).promote is False
    assert shifted_gate(Decision(False, "worse"), base, base, 0.01) == Decision(False, "worse")
