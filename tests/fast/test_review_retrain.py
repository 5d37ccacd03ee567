"""Which photos retraining counts as reviewed (``reviews.jsonl`` decisions with a stored label, in the candidate's
train split) and the figures its report gives for them. A whole retrain with reviewed photos, report included, runs
in tests/e2e/test_review_loop.py (in process here it would fork DataLoader workers from a process holding other
tests' ONNX Runtime threads, which hung 2 runs in 3; as a subprocess it costs 10-20 s of the fast tier)."""
from __future__ import annotations

from pathlib import Path

from imgcls.feedback import FeedbackStore
from imgcls.review import Decision, record_decision
from tests import synthetic
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

