"""The review queue (imgcls/review.py): which answers it keeps, its limits under concurrent writers in several
processes, crash leftovers, claims; and its endpoints in process on the tiny model (service/review.py)."""
from __future__ import annotations

import io
import json
import multiprocessing
import os
import time
from pathlib import Path

import pytest
from PIL import Image
from starlette.testclient import TestClient

from imgcls.filelock import exclusive
from imgcls.review import ReviewQueue, keep_reason, read_decisions
from tests import synthetic

REVIEW_TOKEN = "fast-review-token"
AUTH = {"authorization": f"Bearer {REVIEW_TOKEN}"}


def test_keep_reason_rules() -> None:
    rule = dict(low_score=0.8, sample_share=0.1)
    assert keep_reason(0.99, True, True, draw=0.9, **rule) == "flagged"
    assert keep_reason(0.99, False, False, draw=0.9, **rule) == "neither"
    assert keep_reason(0.79, True, False, draw=0.9, **rule) == "low_confidence"
    assert keep_reason(0.95, None, False, draw=0.05, **rule) == "sampled"
    assert keep_reason(0.95, True, False, draw=0.1, **rule) is None
    assert keep_reason(0.8, None, False, draw=0.5, **rule) is None


def _writer(root: str, n: int, seed: int, max_bytes: int, max_items: int) -> None:
    q = ReviewQueue(Path(root), max_bytes=max_bytes, max_items=max_items)
    for i in range(n):
        q.add(os.urandom(200 + (seed * 37 + i * 11) % 800), {"writer": seed, "i": i})


def _usage_locked(q: ReviewQueue) -> tuple[int, int]:
    with exclusive(q.lock_file):  # a consistent view: admissions happen under this lock
        return q.usage()


def test_limits_hold_under_concurrent_writers_in_several_processes(tmp_path: Path) -> None:
    max_bytes, max_items = 12_000, 15
    q = ReviewQueue(tmp_path, max_bytes=max_bytes, max_items=max_items)
    ctx = multiprocessing.get_context("spawn")  # no fork of a process that runs other tests' ONNX Runtime threads
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), 60, s, max_bytes, max_items)) for s in range(4)]
    for p in procs:
        p.start()
    seen = []
    while any(p.is_alive() for p in procs):
        seen.append(_usage_locked(q))
    for p in procs:
        p.join()
        assert p.exitcode == 0
    seen.append(_usage_locked(q))
    assert max(n for n, _ in seen) <= max_items and max(b for _, b in seen) <= max_bytes, max(seen)
    assert len(seen) > 5
    ids = q.ids()
    assert 0 < len(ids) <= max_items
    for i in ids:  # every listed item is whole: its image and record are there and the sizes add up
        item = q.get(i)
        assert item is not None and len(q.image(i)) + len(json.dumps(item.record, sort_keys=True)) == int(
            i.rsplit("-", 1)[1])
    last = {}
    for i in ids:  # oldest out first: what is left of each writer is its latest items, in order
        item = q.get(i).record
        assert item["i"] > last.get(item["writer"], -1)
        last[item["writer"]] = item["i"]
    assert max(last.values()) == 59
    assert not list(q.tmp_dir.iterdir()) and not list(q.trash_dir.iterdir())


def test_an_item_over_the_byte_limit_is_refused_and_crash_leftovers_are_never_items(tmp_path: Path) -> None:
    q = ReviewQueue(tmp_path, max_bytes=1000, max_items=5)
    assert q.add(b"x" * 1000, {}) is None and q.ids() == []
    torn = q.tmp_dir / f"{time.time_ns():020d}-deadbeef-10"
    torn.mkdir()
    (torn / "image.jpg").write_bytes(b"half")
    (q.items_dir / "not-an-item").mkdir()
    assert q.ids() == [] and q.list(10) == []
    old = time.time() - 3600
    os.utime(torn, (old, old))
    q.sweep()
    assert not torn.exists()


def test_a_claim_is_taken_once_and_put_back_when_the_decision_fails(tmp_path: Path) -> None:
    q = ReviewQueue(tmp_path, max_bytes=10_000, max_items=5)
    item_id = q.add(b"jpeg", {"label": "red"})
    with pytest.raises(RuntimeError):
        with q.claim(item_id) as claimed:
            assert claimed[1] == b"jpeg"
            with q.claim(item_id) as again:
                assert again is None  # a second reviewer of the same item gets nothing
            raise RuntimeError("feedback store full")
    assert q.ids() == [item_id]
    with q.claim(item_id) as claimed:
        assert claimed[0].record == {"label": "red"}
    assert q.ids() == [] and q.get(item_id) is None
    with q.claim("../../etc") as claimed:
        assert claimed is None
    # A reviewer's process that died mid-decision: after ten minutes its claim goes back into the queue.
    abandoned = q.add(b"jpeg2", {"label": "blue"})
    os.rename(q.items_dir / abandoned, q.trash_dir / f"claimed-{abandoned}")
    q.sweep()
    assert q.ids() == []
    old = time.time() - 3600
    os.utime(q.trash_dir / f"claimed-{abandoned}", (old, old))
    q.sweep()
    assert q.ids() == [abandoned] and q.image(abandoned) == b"jpeg2"


@pytest.fixture(scope="module")
def review_api(tiny_registry: Path, tmp_path_factory):
    """The service with a review queue that keeps every answer (REVIEW_SAMPLE=1)."""
    root = tmp_path_factory.mktemp("review")
    settings = {"MODEL_POLL_S": "0", "ARTIFACTS_DIR": str(tiny_registry), "FEEDBACK_DIR": str(root / "feedback"),
                "REVIEW_DIR": str(root / "queue"), "REVIEW_TOKEN": REVIEW_TOKEN, "REVIEW_SAMPLE": "1",
                "REFUSAL_BURST": "1000", "BENTOML_DO_NOT_TRACK": "true"}
    mp = pytest.MonkeyPatch()
    for k, v in settings.items():
        mp.setenv(k, v)
    from service.service import ImageClassifier

    with TestClient(ImageClassifier.to_asgi(), raise_server_exceptions=False) as client:
        client.root = root
        yield client
    mp.undo()


def _queued(client, n: int) -> list[dict]:
    deadline = time.monotonic() + 20
    while True:
        items = client.get("/review/items", headers=AUTH).json()["items"]
        if len(items) >= n or time.monotonic() > deadline:
            return items
        time.sleep(0.05)


def _error(r, status: int, reason: str) -> None:
    assert r.status_code == status, r.text
    assert r.json()["error"] == reason and r.json()["detail"]


def test_review_endpoints_need_the_token(review_api) -> None:
    _error(review_api.get("/review/items"), 401, "unauthorized")
    _error(review_api.get("/review/items", headers={"authorization": "Bearer wrong"}), 401, "unauthorized")
    page = review_api.get("/review")
    assert page.status_code == 200 and "Review queue" in page.text


def test_answers_are_queued_as_reencoded_pixels_and_decisions_become_feedback(review_api) -> None:
    img = Image.new("RGB", (120, 90), (200, 30, 30))
    buf = io.BytesIO()
    img.save(buf, "PNG")
    secret = b"<html>appended junk that must never be stored</html>"
    uploads = [buf.getvalue() + secret, synthetic.image_bytes("green", 7), synthetic.image_bytes("blue", 8)]
    answers = [review_api.post("/classify", files={"image": ("x", d, "image/png")}).json() for d in uploads]
    flagged = review_api.post("/classify?flag=true", files={"image": ("x", synthetic.image_bytes("red", 9))})
    assert flagged.status_code == 200, flagged.text
    items = _queued(review_api, 4)
    assert len(items) == 4
    assert [i["label"] for i in items[:3]] == [a["label"] for a in answers]
    assert {i["reason"] for i in items[:3]} <= {"sampled", "low_confidence", "neither"}
    assert items[3]["reason"] == "flagged"
    assert items[0]["model"]["version"] == answers[0]["model"]["version"] and items[0]["time"]
    stored = review_api.get(f"/review/items/{items[0]['id']}/image", headers=AUTH)
    assert stored.headers["content-type"] == "image/jpeg" and secret not in stored.content
    assert Image.open(io.BytesIO(stored.content)).size == (120, 90)
    cam = review_api.get(f"/review/items/{items[0]['id']}/cam", headers=AUTH)
    assert cam.status_code == 200 and cam.content.startswith(b"\x89PNG")

    post = lambda item, body: review_api.post(f"/review/items/{item['id']}", headers=AUTH,  # noqa: E731
                                              content=json.dumps(body))
    _error(post(items[0], {"verdict": "maybe"}), 422, "bad_verdict")
    _error(post(items[0], {"verdict": "label", "label": "purple"}), 422, "unknown_label")
    _error(review_api.post(f"/review/items/{items[0]['id']}", headers=AUTH, content=b"{"), 400, "bad_json")
    _error(review_api.post(f"/review/items/{items[0]['id']}", headers=AUTH, content=b" " * 5000), 413,
           "body_too_large")
    ok = post(items[0], {"verdict": "label", "label": "red"})
    assert ok.status_code == 200 and ok.json()["outcome"] == "stored", ok.text
    sha = ok.json()["sha256"]
    assert (review_api.root / "feedback" / "red" / f"{sha}.jpg").is_file()
    _error(post(items[0], {"verdict": "label", "label": "red"}), 404, "not_found")  # it left the queue
    assert post(items[1], {"verdict": "neither"}).json()["outcome"] == "recorded"
    assert post(items[2], {"verdict": "unusable"}).json()["outcome"] == "recorded"
    # The same pixels labelled otherwise through POST /feedback's store: a conflict, recorded, and the item is gone.
    again = review_api.post("/classify?flag=1", files={"image": ("x", buf.getvalue(), "image/png")})
    assert again.status_code == 200
    latest = [i for i in _queued(review_api, 2) if i["id"] != items[3]["id"]][-1]
    _error(post(latest, {"verdict": "label", "label": "green"}), 409, "label_conflict")
    assert latest["id"] not in [i["id"] for i in _queued(review_api, 1)]
    assert (review_api.root / "feedback" / "conflicts.jsonl").read_text().count(sha) == 1
    decisions = read_decisions(review_api.root / "feedback")
    assert [(d.verdict, d.label, d.outcome) for d in decisions] == [
        ("label", "red", "stored"), ("neither", None, "recorded"), ("unusable", None, "recorded"),
        ("label", "green", "conflict")]
    assert decisions[0].sha256 == sha and decisions[0].answered["label"] == answers[0]["label"]
    metrics = review_api.get("/metrics").text
    assert 'imgcls_score_count{version="' in metrics and "imgcls_low_confidence_total" in metrics
    assert 'imgcls_review_decisions_total{verdict="neither"}' in metrics


def test_the_queue_is_off_by_default(tiny_registry: Path, monkeypatch) -> None:
    for k, v in {"MODEL_POLL_S": "0", "ARTIFACTS_DIR": str(tiny_registry), "REVIEW_TOKEN": REVIEW_TOKEN}.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("REVIEW_DIR", raising=False)
    from service.service import ImageClassifier

    with TestClient(ImageClassifier.to_asgi(), raise_server_exceptions=False) as client:
        _error(client.get("/review/items", headers=AUTH), 403, "review_disabled")


def test_an_overlong_parameter_value_is_a_400_not_a_500(review_api) -> None:
    """BentoML's parser calls json.loads on each value: an integer of 5,000 digits would escape from it as a 500."""
    img = synthetic.image_bytes("red", 11)
    for name in ("flag", "k"):
        _error(review_api.post(f"/classify?{name}={'9' * 5000}", content=img, headers={"content-type": "image/jpeg"}),
               400, "bad_parameter")
        _error(review_api.post("/classify", files={"image": ("x.jpg", img, "image/jpeg")}, data={name: "9" * 5000}),
               400, "bad_parameter")
    assert review_api.post("/classify?flag=false&k=1", content=img, headers={"content-type": "image/jpeg"}).is_success
