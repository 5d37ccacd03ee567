"""The review queue: photos the service was unsure of, kept for a person to label (``REVIEW_DIR``).

What is kept (:func:`keep_reason`): answers under the low-confidence score, answers "neither" (``known`` false),
photos a client flagged, and a sampled share of the confident rest. Only re-encoded pixels are kept (:func:`encode`:
JPEG, no metadata, at most :data:`STORED_MAX_SIDE` px), never the upload itself.

Layout, shared safely by several processes (replicas) on one local file system::

    REVIEW_DIR/.lock                 flock(2) held while an item is admitted (limits checked, oldest evicted)
    REVIEW_DIR/.tmp/<id>/            an item being written (image.jpg, item.json), fsynced, then renamed into items/
    REVIEW_DIR/items/<id>/           complete items only: a rename of a whole folder is atomic, so none is torn
    REVIEW_DIR/.trash/<id>/          evicted or decided items, renamed here first and then deleted

``<id>`` is ``<time in ns>-<random>-<bytes>``: names sort oldest first and carry their size, so admission lists one
folder under the lock and never reads a file. The limits (bytes and items) hold after every admission whatever the
number of writers, because admission and eviction happen under one exclusive lock. Leftovers of a crash (``.tmp``,
``.trash``) are never listed as items and are removed by :meth:`ReviewQueue.sweep`.

A reviewer's decision is claimed by renaming the item out of ``items/`` (two reviewers of one item: one wins) and
recorded by :func:`record_decision` in the feedback store's ``reviews.jsonl``, which retraining reads
(:func:`read_decisions`). No torch, no web framework.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from imgcls.filelock import exclusive
from imgcls.registry import now_iso

__all__ = ["REVIEWS_FILE", "STORED_MAX_SIDE", "VERDICTS", "Decision", "ReviewItem", "ReviewQueue", "encode",
           "keep_reason", "read_decisions", "record_decision"]

STORED_MAX_SIDE = 512  # twice the default model's resize size: enough to retrain on, small to keep
JPEG_QUALITY = 90
REVIEWS_FILE = "reviews.jsonl"  # in the feedback store
VERDICTS = ("label", "neither", "unusable")
_ID = re.compile(r"\d{20}-[0-9a-f]{8}-\d{1,12}")
_STALE_S = 600  # a .tmp or .trash entry older than this is a crash's leftover


def keep_reason(score: float, known: bool | None, flagged: bool, *, low_score: float, sample_share: float,
                draw: float) -> str | None:
    """Why an answer goes into the queue, or None. ``draw`` is uniform in [0, 1) (the caller's random source)."""
    if flagged:
        return "flagged"
    if known is False:
        return "neither"
    if score < low_score:
        return "low_confidence"
    if draw < sample_share:
        return "sampled"
    return None


def encode(img: Image.Image) -> bytes:
    """The pixels of ``img`` (RGB) as a JPEG of at most :data:`STORED_MAX_SIDE` px a side, without metadata."""
    img = img.copy()
    img.thumbnail((STORED_MAX_SIDE, STORED_MAX_SIDE), Image.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


@dataclass(frozen=True)
class ReviewItem:
    id: str
    record: dict[str, Any]  # what was answered: label, score, known, novelty, labels, model version, time, reason

    def public(self) -> dict[str, Any]:
        return {"id": self.id, **self.record}


def _size(item_id: str) -> int:
    return int(item_id.rsplit("-", 1)[1])


def _write_synced(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class ReviewQueue:
    """The queue under ``root``, at most ``max_bytes`` (image and record) and ``max_items`` items."""

    def __init__(self, root: Path, *, max_bytes: int, max_items: int) -> None:
        if max_bytes < 1 or max_items < 1:
            raise ValueError(f"the review queue needs positive limits (got {max_bytes} bytes, {max_items} items)")
        self.root, self.max_bytes, self.max_items = Path(root), max_bytes, max_items
        self.items_dir, self.tmp_dir, self.trash_dir = self.root / "items", self.root / ".tmp", self.root / ".trash"
        self.lock_file = self.root / ".lock"  # admissions and returns to the queue hold it (imgcls.filelock)
        for d in (self.items_dir, self.tmp_dir, self.trash_dir):
            d.mkdir(parents=True, exist_ok=True)

    def ids(self) -> list[str]:
        """Complete items, oldest first."""
        return sorted(n for n in os.listdir(self.items_dir) if _ID.fullmatch(n))

    def usage(self) -> tuple[int, int]:
        """(items, bytes) in the queue now."""
        ids = self.ids()
        return len(ids), sum(map(_size, ids))

    def add(self, jpeg: bytes, record: dict[str, Any]) -> str | None:
        """Admit one item, evicting the oldest as needed; its id, or None if it alone is over ``max_bytes``."""
        body = json.dumps(record, sort_keys=True).encode()
        size = len(jpeg) + len(body)
        if size > self.max_bytes:
            return None
        item_id = f"{time.time_ns():020d}-{os.urandom(4).hex()}-{size}"
        tmp = self.tmp_dir / item_id
        tmp.mkdir()
        _write_synced(tmp / "image.jpg", jpeg)
        _write_synced(tmp / "item.json", body)
        with exclusive(self.lock_file):
            ids = self.ids()
            used = sum(map(_size, ids))
            while ids and (len(ids) + 1 > self.max_items or used + size > self.max_bytes):
                oldest = ids.pop(0)
                used -= _size(oldest)
                self._discard(oldest)
            os.rename(tmp, self.items_dir / item_id)
        self._empty_trash()
        return item_id

    def get(self, item_id: str) -> ReviewItem | None:
        """The item's record, or None if there is no such item (any more)."""
        folder = self._folder(item_id)
        try:
            return ReviewItem(item_id, json.loads((folder / "item.json").read_bytes()))
        except (FileNotFoundError, NotADirectoryError):
            return None

    def image(self, item_id: str) -> bytes | None:
        try:
            return (self._folder(item_id) / "image.jpg").read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None

    def list(self, limit: int) -> list[ReviewItem]:
        """Up to ``limit`` items, oldest first (those are evicted next)."""
        out = []
        for item_id in self.ids():
            item = self.get(item_id)
            if item is not None:
                out.append(item)
                if len(out) >= limit:
                    break
        return out

    @contextmanager
    def claim(self, item_id: str) -> Iterator[tuple[ReviewItem, bytes] | None]:
        """Take an item out of the queue for a decision: yields (item, image) or None (no such item, or another
        reviewer took it). The item is deleted when the block ends normally and put back if it raises."""
        src = self._folder(item_id)
        claimed = self.trash_dir / f"claimed-{item_id}"
        try:
            os.rename(src, claimed)
        except (FileNotFoundError, NotADirectoryError, OSError):
            yield None
            return
        try:
            item = ReviewItem(item_id, json.loads((claimed / "item.json").read_bytes()))
            yield item, (claimed / "image.jpg").read_bytes()
        except BaseException:
            os.rename(claimed, src)  # the decision failed: the photo stays to be reviewed again
            raise
        shutil.rmtree(claimed, ignore_errors=True)

    def sweep(self) -> None:
        """Clean up after a crash: ``.tmp`` and ``.trash`` entries older than ten minutes are removed, except a claim
        whose decision never finished, which goes back into the queue (within the limits) to be reviewed again."""
        cutoff = time.time() - _STALE_S
        for d in (self.tmp_dir, self.trash_dir):
            for p in d.iterdir():
                try:
                    if p.stat().st_mtime >= cutoff:
                        continue
                except FileNotFoundError:
                    continue
                item_id = p.name.removeprefix("claimed-")
                if p.name.startswith("claimed-") and _ID.fullmatch(item_id):
                    with exclusive(self.lock_file):
                        count, used = self.usage()
                        if count < self.max_items and used + _size(item_id) <= self.max_bytes:
                            os.rename(p, self.items_dir / item_id)
                            continue
                shutil.rmtree(p, ignore_errors=True)

    def _folder(self, item_id: str) -> Path:
        if not _ID.fullmatch(item_id):
            return self.items_dir / "-"  # no such item; never a path outside the queue
        return self.items_dir / item_id

    def _discard(self, item_id: str) -> None:
        try:
            os.rename(self.items_dir / item_id, self.trash_dir / item_id)
        except FileNotFoundError:
            pass  # a reviewer claimed it meanwhile

    def _empty_trash(self) -> None:
        for p in self.trash_dir.iterdir():
            if not p.name.startswith("claimed-"):
                shutil.rmtree(p, ignore_errors=True)


@dataclass(frozen=True)
class Decision:
    """A reviewer's decision as retraining reads it back."""

    item: str
    verdict: str  # one of VERDICTS
    label: str | None  # the class, for verdict "label"
    sha256: str | None  # the stored feedback image's pixel hash (its file name), for verdict "label"
    answered: dict[str, Any]  # what the service had answered (label, score, known, version)
    outcome: str  # "stored", "duplicate", "conflict", or "recorded" (neither/unusable)


def record_decision(feedback_dir: Path, decision: Decision) -> None:
    """Append ``decision`` to ``feedback_dir/reviews.jsonl`` in one write (O_APPEND: lines from several processes
    do not interleave) and fsync it."""
    feedback_dir.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": now_iso(), **decision.__dict__}, sort_keys=True) + "\n"
    fd = os.open(feedback_dir / REVIEWS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def read_decisions(feedback_dir: Path) -> list[Decision]:
    """Every decision in ``feedback_dir/reviews.jsonl``; a torn last line (a crash mid-write) is skipped."""
    path = feedback_dir / REVIEWS_FILE
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            d = json.loads(line)
            out.append(Decision(d["item"], d["verdict"], d.get("label"), d.get("sha256"), d.get("answered") or {},
                                d.get("outcome", "")))
        except (ValueError, KeyError, TypeError):
            continue
    return out
