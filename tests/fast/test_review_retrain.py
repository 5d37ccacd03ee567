"""Retraining learns from the review page: the reviewed photos go into the candidate's train split, and its report
says, for the reviewed photos the base gets wrong, how many the candidate gets right (tiny model, synthetic data).

The retrain runs as the command a user runs, in its own process: feature extraction forks DataLoader workers, and a
fork of this test process (which holds other tests' in-process services and their ONNX Runtime threads) can hang."""
from __future__ import annotations

import json
from pathlib import Path

from imgcls.feedback import FeedbackStore
from imgcls.registry import Registry
from imgcls.review import Decision, record_decision
from tests import synthetic
from tests.conftest import run_cli
from training.retrain import learned_from_review, reviewed_samples


def _review(feedback: Path, store: FeedbackStore, data: bytes, label: str, answered: str, item: str) -> None:
    stored = store.add(data, label)
    record_decision(feedback, Decision(item, "label", label, stored.sha256, {"label": answered, "score": 0.5},
                                       "stored"))


def test_reviewed_samples_are_the_labelled_decisions_in_train(tmp_path: Path) -> None:
    feedback = tmp_path / "feedback"
    store = FeedbackStore(feedback)
    _review(feedback, store, synthetic.image_bytes("red", 1), "red", "green", "a")  # answered wrongly when served
    _review(feedback, store, synthetic.image_bytes("blue", 2), "blue", "blue", "b")
    other = store.add(synthetic.image_bytes("green", 3), "green")  # POST /feedback, not reviewed
    record_decision(feedback, Decision("c", "neither", None, None, {"label": "red"}, "recorded"))
    train = [(p, 0) for p in sorted(feedback.glob("*/*.jpg"))]
    samples, served_wrong = reviewed_samples(feedback, train)
    assert len(samples) == 2 and other.path not in [p for p, _ in samples] and served_wrong == 1
    base = {"n": 2, "misclassified": [{"path": "a"}, {"path": "b"}]}
    cand = {"n": 2, "misclassified": [{"path": "b"}]}
    assert learned_from_review(base, cand, 1) == {"n": 2, "answered_wrong_when_served": 1, "base_wrong": 2,
                                                  "candidate_right_of_base_wrong": 1, "candidate_wrong": 1}


def test_retrain_reports_what_it_learned_from_the_reviewed_photos(tiny_copy: Path, tiny_data: Path) -> None:
    feedback = tiny_copy / "feedback"
    store = FeedbackStore(feedback)
    for i, label in enumerate(synthetic.CLASSES * 2):
        _review(feedback, store, synthetic.image_bytes(label, 700 + i), label, synthetic.CLASSES[0], f"item{i}")
    out = run_cli("retrain", "--data", str(tiny_data), "--feedback", str(feedback), "--epochs", "5",
                  artifacts=tiny_copy).stdout
    (folder,) = (tiny_copy / "retrain").iterdir()
    report = json.loads((folder / "report.json").read_text())
    r = report["reviewed"]
    assert r["n"] == 2 * len(synthetic.CLASSES) == report["data"]["feedback"]["used"]
    assert r["answered_wrong_when_served"] == 2 * (len(synthetic.CLASSES) - 1)
    assert 0 <= r["candidate_right_of_base_wrong"] <= r["base_wrong"] <= r["n"]
    md = (Path(report["report_dir"]) / "report.md").read_text()
    assert f"Reviewed photos (labelled on the review page, in the candidate's train split): {r['n']}" in md
    assert "reviewed photos" in report["summary"] and "reviewed photos" in out
    assert report["candidate"]["version"] in Registry(tiny_copy).versions()
