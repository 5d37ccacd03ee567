"""Feedback that cannot be abused: pixels only, a quota, conflicts kept out of retraining, a rate limit,
strict bearer tokens. Fast: synthetic images, no server."""
from __future__ import annotations

import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.errors import ImgclsError
from imgcls.feedback import CONFLICTS_FILE, FeedbackStore, RateLimiter, pixel_sha256
from imgcls.images import ImageError, decode_image
from service.auth import bearer_matches, parse_bearer
from training.data import Dataset
from training.retrain import assemble, feedback_samples


def photo(seed: int, size: tuple[int, int] = (80, 60), fmt: str = "JPEG", **kw) -> bytes:
    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def test_only_pixels_are_stored(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    exif = Image.Exif()
    exif[0x010E] = "<script>alert(1)</script>"  # ImageDescription
    jpeg = photo(1, exif=exif)
    payload = b"<html><script>x</script></html>PK\x03\x04zip-bytes"
    stored = store.add(jpeg + payload, "cat")
    data = stored.path.read_bytes()
    assert stored.path == tmp_path / "cat" / f"{stored.sha256}.jpg" and not stored.duplicate
    assert b"<html>" not in data and b"PK\x03\x04" not in data and b"script" not in data
    assert stored.sha256 == pixel_sha256(decode_image(jpeg))  # named by the upload's pixels
    assert decode_image(data).size == (80, 60)
    # The same pixels without the junk, or as a PNG, are the same image: a duplicate, not a second file.
    assert store.add(jpeg, "cat").duplicate
    png = io.BytesIO()
    decode_image(jpeg).save(png, "PNG")
    assert store.add(png.getvalue(), "cat").duplicate
    assert len(list((tmp_path / "cat").iterdir())) == 1


def test_bad_uploads_are_image_errors_and_store_nothing(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    for bad in (b"not an image", photo(2)[:200]):
        with pytest.raises(ImageError):
            store.add(bad, "cat")
    big = io.BytesIO()
    Image.new("L", (5000, 4000)).save(big, "PNG")
    with pytest.raises(ImageError) as e:
        store.add(big.getvalue(), "cat")
    assert e.value.status == 413
    assert not tmp_path.exists() or not any(tmp_path.rglob("*.jpg"))


def test_quota_in_files_and_bytes(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path, max_files=2)
    store.add(photo(1), "cat")
    store.add(photo(2), "dog")
    with pytest.raises(ImgclsError) as e:
        store.add(photo(3), "cat")
    assert (e.value.status, e.value.reason) == (507, "feedback_quota")
    assert store.add(photo(1), "cat").duplicate  # a duplicate costs nothing
    # A new store counts what is on disk.
    reopened = FeedbackStore(tmp_path, max_bytes=store.bytes + 10)
    assert (reopened.files, reopened.bytes) == (2, store.bytes)
    with pytest.raises(ImgclsError, match="full"):
        reopened.add(photo(4), "cat")


def test_conflicting_labels_are_recorded_and_left_out_of_retraining(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    a = store.add(photo(1), "cat")
    store.add(photo(2), "dog")
    with pytest.raises(ImgclsError) as e:
        store.add(photo(1), "dog")
    assert (e.value.status, e.value.reason) == (409, "label_conflict")
    assert not (tmp_path / "dog" / f"{a.sha256}.jpg").exists()
    records = [json.loads(line) for line in (tmp_path / CONFLICTS_FILE).read_text().splitlines()]
    assert records[0]["sha256"] == a.sha256 and records[0]["labels"] == ["cat", "dog"]
    with pytest.raises(ImgclsError):  # once in conflict, the first label is refused too
        FeedbackStore(tmp_path).add(photo(1), "cat")
    samples = feedback_samples(tmp_path, ["cat", "dog"])
    assert [(p.parent.name, label) for p, label in samples] == [("dog", 1)]


def test_older_stores_with_one_image_under_two_labels_are_conflicts(tmp_path: Path) -> None:
    for label in ("cat", "dog"):
        (tmp_path / label).mkdir(parents=True)
        (tmp_path / label / "abc.img").write_bytes(photo(1))
    (tmp_path / "dog" / "def.img").write_bytes(photo(2))
    assert [p.name for p, _ in feedback_samples(tmp_path, ["cat", "dog"])] == ["def.img"]


def test_retraining_drops_feedback_whose_pixels_are_an_evaluation_photo(tmp_path: Path) -> None:
    data = tmp_path / "data"
    splits: dict[str, list] = {}
    for split, seeds in (("train", (10, 11)), ("val", (12, 13)), ("test", (14, 15))):
        for label, seed in enumerate(seeds):
            path = data / split / f"{seed}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(photo(seed))
            splits.setdefault(split, []).append((path, label))
    original = Dataset(str(data), "split-folders", ["cat", "dog"], splits)
    store = FeedbackStore(tmp_path / "feedback")
    store.add((data / "test" / "14.jpg").read_bytes() + b"junk", "cat")  # an exam photo, bytes changed
    store.add(photo(20), "dog")
    ds, sources = assemble(original, [], feedback_samples(tmp_path / "feedback", ["cat", "dog"]), ["cat", "dog"])
    fb = sources["feedback"]
    assert (fb["found"], fb["used"], fb["dropped"]["in_eval_split"]) == (2, 1, 1)
    assert len(ds.splits["train"]) == 3


def test_concurrent_adds_of_one_image_store_one_file(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path)
    data = photo(5)
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(store.add(data, "cat"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(not r.duplicate for r in results) == 1 and store.files == 1


def test_processes_sharing_a_store_see_each_others_images_conflicts_and_quota(tmp_path: Path) -> None:
    """The service's workers each open the store: what one stores, the others see (duplicates, conflicts, quota),
    and two processes adding at once store each image once."""
    import multiprocessing

    one = FeedbackStore(tmp_path, max_files=3)
    two = FeedbackStore(tmp_path, max_files=3)
    first = one.add(photo(1), "cat")
    assert two.add(photo(1), "cat").duplicate and not first.duplicate
    with pytest.raises(ImgclsError) as conflict:
        two.add(photo(1), "dog")
    assert conflict.value.status == 409
    with pytest.raises(ImgclsError):
        one.add(photo(1), "cat")  # recorded as a conflict by the other process: refused here too
    one.add(photo(2), "dog")
    two.add(photo(3), "dog")
    with pytest.raises(ImgclsError) as full:
        one.add(photo(4), "dog")
    assert full.value.status == 507 and (one.files, two.files) == (3, 3)

    shared = tmp_path / "shared"
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_add_in_a_process, [(shared, 5 + i % 3) for i in range(12)])
    assert sorted(set(results)) == [False, True] and results.count(False) == 3
    assert FeedbackStore(shared).files == len(list(shared.glob("*/*.jpg"))) == 3


def _add_in_a_process(root: Path, seed: int) -> bool:
    return FeedbackStore(root).add(photo(seed), "cat").duplicate


def test_rate_limiter_token_bucket() -> None:
    limiter = RateLimiter(rate=2.0, burst=3)
    for _ in range(3):
        limiter.check("a", now=100.0)
    with pytest.raises(ImgclsError) as e:
        limiter.check("a", now=100.0)
    assert (e.value.status, e.value.reason, e.value.headers) == (429, "rate_limited", {"Retry-After": "1"})
    limiter.check("b", now=100.0)  # per client
    limiter.check("a", now=100.5)  # refilled at 2/s
    with pytest.raises(ImgclsError):
        limiter.check("a", now=100.5)


def test_rate_limiter_memory_is_bounded() -> None:
    limiter = RateLimiter(rate=1.0, burst=1, max_clients=100)
    for i in range(1000):
        limiter.check(f"client-{i}", now=0.0)
    assert len(limiter._buckets) == 100


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer s3cret", "s3cret"),
    ("bearer s3cret", "s3cret"),  # the scheme is case-insensitive (RFC 7235)
    ("Bearer abc-._~+/DEF==", "abc-._~+/DEF=="),
    ("s3cret", None),  # the review's finding: no scheme
    ("Bearers3cret", None),
    ("Bearer  s3cret", None),
    ("Bearer s3cret ", None),
    (" Bearer s3cret", None),
    ("Bearer ", None),
    ("Bearer", None),
    ("Basic s3cret", None),
    ("Bearer s3cret extra", None),
    ("Bearer s3c\x00ret", None),
    ("", None),
    (None, None),
])
def test_parse_bearer_is_strict(header: str | None, token: str | None) -> None:
    assert parse_bearer(header) == token


def test_bearer_matches() -> None:
    assert bearer_matches("Bearer s3cret", "s3cret")
    assert not bearer_matches("s3cret", "s3cret")
    assert not bearer_matches("Bearer s3cre", "s3cret")
    assert not bearer_matches("Bearer x", "")  # an unset token opens nothing
