"""Putting answered photos into the review queue (imgcls/review.py) without slowing the request path.

:meth:`ReviewRecorder.offer` decides from the answer alone (:func:`imgcls.review.keep_reason`) and hands a kept
photo's upload bytes to one writer thread through a queue of :data:`PENDING` slots; when they are all taken the photo
is dropped and counted (``imgcls_review_dropped_total``), never waited for. The writer decodes the upload again,
re-encodes its pixels (:func:`imgcls.review.encode`) and admits them; the raw upload never reaches the disk.
"""
from __future__ import annotations

import logging
import queue
import random
import threading
import time
from typing import Any

from imgcls.images import decode_image
from imgcls.registry import now_iso
from imgcls.review import STORED_MAX_SIDE, ReviewQueue, encode, keep_reason
from service.config import Config
from service.metrics import REVIEW_DROPPED, REVIEW_QUEUED
from service.schemas import Classification

__all__ = ["PENDING", "ReviewRecorder"]
log = logging.getLogger("imgcls.review")
PENDING = 8  # uploads held for the writer at most (each at most MAX_BODY_BYTES)
SWEEP_S = 600  # how often the writer cleans up after crashed writers and reviewers (ReviewQueue.sweep)


class ReviewRecorder:
    """Offers answers to the review queue under ``config.review_dir``; one daemon writer thread."""

    def __init__(self, config: Config) -> None:
        assert config.review_dir is not None
        self.config = config
        self.queue = ReviewQueue(config.review_dir, max_bytes=config.review_max_bytes,
                                 max_items=config.review_max_items)
        self.queue.sweep()
        self._pending: queue.Queue[tuple[bytes, dict[str, Any]]] = queue.Queue(maxsize=PENDING)
        self._random = random.Random()
        threading.Thread(target=self._write_loop, name="review-writer", daemon=True).start()

    def offer(self, data: bytes, answer: Classification, flagged: bool) -> str | None:
        """Queue the photo if the answer calls for review; the reason, or None. Never blocks."""
        reason = keep_reason(answer.score, answer.known, flagged, low_score=self.config.low_confidence,
                             sample_share=self.config.review_sample, draw=self._random.random())
        if reason is None:
            return None
        record = {"reason": reason, "time": now_iso(), "label": answer.label, "score": answer.score,
                  "known": answer.known, "novelty": answer.novelty, "model": answer.model.model_dump(),
                  "probabilities": [p.model_dump() for p in answer.probabilities]}
        try:
            self._pending.put_nowait((data, record))
        except queue.Full:
            REVIEW_DROPPED.inc()
            return None
        return reason

    def _write_loop(self) -> None:
        swept = time.monotonic()
        while True:
            data, record = self._pending.get()
            try:
                if time.monotonic() - swept > SWEEP_S:
                    swept = time.monotonic()
                    self.queue.sweep()
                img = decode_image(data, draft_size=STORED_MAX_SIDE, max_pixels=self.config.max_pixels,
                                   max_pixels_full=self.config.max_pixels_full)
                if self.queue.add(encode(img), record) is None:
                    REVIEW_DROPPED.inc()
                else:
                    REVIEW_QUEUED.labels(reason=record["reason"]).inc()
            except Exception:  # noqa: BLE001 - a failed write loses one queued photo, never the writer
                REVIEW_DROPPED.inc()
                log.exception("review queue: could not store a photo")
            finally:
                del data
