"""Labelled images sent to POST /feedback, stored so that they cannot be abused.

- Only pixels are kept: the upload is decoded and re-encoded (JPEG, quality 95, no metadata), so bytes appended
  to an image (HTML, ZIP, ...) and its EXIF never reach the disk. Files are named by the sha256 of the decoded
  pixels, so the same picture sent as PNG and as JPEG, or with junk appended, is one image.
- A total quota (bytes and files): over it, :class:`~imgcls.errors.ImgclsError` 507.
- The same image under two labels is a conflict: recorded in ``conflicts.jsonl`` (409), never stored under the
  second label; retraining skips every conflicted image and reports how many it skipped.
- :class:`RateLimiter`: a token bucket per client (429 with ``Retry-After``; the service's refusal throttle uses
  its :meth:`RateLimiter.delay`).

Layout: ``FEEDBACK_DIR/<label>/<pixel sha256>.jpg`` (write-then-rename), ``FEEDBACK_DIR/conflicts.jsonl``.
No torch, no web framework: retraining reads the same folder through :func:`conflicted_hashes`.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from imgcls.errors import ImgclsError
from imgcls.filelock import exclusive
from imgcls.images import DEFAULT_MAX_PIXELS_FULL, decode_image
from imgcls.registry import now_iso, write_atomic

__all__ = ["CONFLICTS_FILE", "JPEG_QUALITY", "STORED_MAX_SIDE", "FeedbackStore", "RateLimiter", "Stored",
           "conflicted_hashes", "pixel_sha256"]

CONFLICTS_FILE = "conflicts.jsonl"
STORED_MAX_SIDE = 2048  # far above any model's input; bounds each stored file (~1-2 MB) and retraining's decode
JPEG_QUALITY = 95


def pixel_sha256(img: Image.Image) -> str:
    """The identity of an image's content: sha256 over its mode, size and decoded pixels."""
    h = hashlib.sha256(f"{img.mode} {img.width}x{img.height}\n".encode())
    h.update(img.tobytes())
    return h.hexdigest()


def conflicted_hashes(root: Path) -> set[str]:
    """Pixel hashes recorded as conflicts in ``root/conflicts.jsonl``, plus any name stored under two labels
    (older stores kept the same image under both)."""
    found: set[str] = set()
    path = root / CONFLICTS_FILE
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                found.add(json.loads(line)["sha256"])
            except (ValueError, KeyError, TypeError):
                continue  # a torn last line from a crash: the next record is still read
    seen: dict[str, str] = {}
    for label, stem in _stored(root):
        if seen.setdefault(stem, label) != label:
            found.add(stem)
    return found


def _label_dirs(root: Path) -> list[Path]:
    """The store's label folders (hidden entries are the store's own files)."""
    if not root.is_dir():
        return []
    return [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]


def _stored_files(root: Path) -> list[Path]:
    """Every stored image; hidden files are in-flight writes."""
    return [p for d in _label_dirs(root) for p in sorted(d.iterdir()) if p.is_file() and not p.name.startswith(".")]


def _stored(root: Path) -> list[tuple[str, str]]:
    """(label, name without extension) of every stored image."""
    return [(p.parent.name, p.stem) for p in _stored_files(root)]


def _remove_orphans(root: Path) -> None:
    """Delete the temporary files of writers that died before renaming them (``.<sha>.<pid>.<thread>.tmp``,
    left by a SIGKILL or power loss); a live process's are kept: two workers may share the store."""
    if not root.is_dir():
        return
    for tmp in root.glob("*/.*.tmp"):
        try:
            pid = int(tmp.name.split(".")[2])
        except (IndexError, ValueError):
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except PermissionError:
            pass  # another user's live process


@dataclass(frozen=True)
class Stored:
    path: Path
    sha256: str
    label: str
    duplicate: bool

    def to_json(self) -> dict[str, Any]:
        return {"stored": str(self.path), "sha256": self.sha256, "label": self.label, "duplicate": self.duplicate}


class FeedbackStore:
    """Feedback images under ``root`` with a quota of ``max_bytes`` and ``max_files``.

    Safe for several threads and several processes (the service's workers) on one store: each addition holds
    ``root/.lock`` (flock) while it checks the images already stored, the conflicts and the usage on disk. The usage
    is kept in ``root/.usage.json`` and counted afresh whenever a store is opened."""

    def __init__(self, root: Path, *, max_bytes: int = 1 << 30, max_files: int = 20_000,
                 max_pixels: int = DEFAULT_MAX_PIXELS_FULL) -> None:
        self.root, self.max_bytes, self.max_files, self.max_pixels = Path(root), max_bytes, max_files, max_pixels
        self._lock = threading.Lock()
        self._conflicts: set[str] = set()
        self._conflicts_read = 0  # bytes of conflicts.jsonl already in self._conflicts
        with self._locked():
            _remove_orphans(self.root)
            stored = _stored_files(self.root)
            self._save_usage(len(stored), sum(p.stat().st_size for p in stored))
            self._conflicts = conflicted_hashes(self.root)
            conflicts = self.root / CONFLICTS_FILE
            self._conflicts_read = conflicts.stat().st_size if conflicts.is_file() else 0

    @property
    def files(self) -> int:
        return self._usage()[0]

    @property
    def bytes(self) -> int:
        return self._usage()[1]

    def add(self, data: bytes, label: str) -> Stored:
        """Decode ``data`` (any format :func:`decode_image` reads; ``ImageError`` for bad input), store its pixels
        under ``label``. Raises :class:`~imgcls.errors.ImgclsError` 409 for a conflicting label, 507 over the quota."""
        # Full decode (no JPEG draft): the name must be the hash of the full-size pixels, which retraining
        # recomputes for its evaluation files to keep the candidate from training on its exam.
        img = decode_image(data, max_pixels=self.max_pixels, max_pixels_full=self.max_pixels)
        digest = pixel_sha256(img)
        img.thumbnail((STORED_MAX_SIDE, STORED_MAX_SIDE), Image.BILINEAR)
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=JPEG_QUALITY, subsampling=0)
        encoded = buf.getvalue()
        with self._locked():
            self._read_new_conflicts()
            labels = self._labels_of(digest)
            known = labels[0] if labels else None
            if digest in self._conflicts or any(other != label for other in labels):
                self._record_conflict(digest, [known, label] if known else [label])
                raise ImgclsError(409, "label_conflict", f"this image was already labelled {known!r}; "
                                      f"recorded as a conflict, not stored, and left out of retraining")
            folder = self.root / label
            path = folder / f"{digest}.jpg"
            if known == label:
                return Stored(path, digest, label, True)
            files, size = self._usage()
            if files + 1 > self.max_files or size + len(encoded) > self.max_bytes:
                raise ImgclsError(507, "feedback_quota", f"the feedback store is full ({files} files, "
                                      f"{size} bytes; limits {self.max_files} files, {self.max_bytes} bytes)")
            folder.mkdir(parents=True, exist_ok=True)
            tmp = folder / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
            with open(tmp, "wb") as f:
                f.write(encoded)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
            self._save_usage(files + 1, size + len(encoded))
            return Stored(path, digest, label, False)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """This process's threads one at a time, then every process's (flock on ``root/.lock``)."""
        with self._lock:
            self.root.mkdir(parents=True, exist_ok=True)
            with exclusive(self.root / ".lock"):
                yield

    def _labels_of(self, digest: str) -> list[str]:
        """The labels this image is stored under, on disk now (by any process)."""
        return [d.name for d in _label_dirs(self.root) if (d / f"{digest}.jpg").is_file()]

    def _usage(self) -> tuple[int, int]:
        try:
            usage = json.loads((self.root / ".usage.json").read_text())
            return int(usage["files"]), int(usage["bytes"])
        except (OSError, ValueError, KeyError, TypeError):
            return 0, 0  # only before the first open has counted it

    def _save_usage(self, files: int, size: int) -> None:
        write_atomic(self.root / ".usage.json", json.dumps({"files": files, "bytes": size}))

    def _read_new_conflicts(self) -> None:
        """Add the conflicts other processes recorded since this one last looked (whole lines only)."""
        try:
            with open(self.root / CONFLICTS_FILE, "rb") as f:
                f.seek(self._conflicts_read)
                data = f.read()
        except FileNotFoundError:
            return
        end = data.rfind(b"\n") + 1
        for line in data[:end].splitlines():
            try:
                self._conflicts.add(json.loads(line)["sha256"])
            except (ValueError, KeyError, TypeError):
                continue
        self._conflicts_read += end

    def _record_conflict(self, digest: str, labels: list[str]) -> None:
        self._conflicts.add(digest)
        with open(self.root / CONFLICTS_FILE, "a") as f:
            f.write(json.dumps({"time": now_iso(), "sha256": digest, "labels": labels}) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._conflicts_read = (self.root / CONFLICTS_FILE).stat().st_size


class RateLimiter:
    """A token bucket per client key: ``rate`` requests per second on average, bursts of ``burst``.

    At most ``max_clients`` buckets are kept (least recently used dropped first), so memory stays bounded
    whatever the number of clients; a dropped bucket comes back full, which only errs towards allowing."""

    def __init__(self, rate: float, burst: int, max_clients: int = 10_000) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError(f"rate must be > 0 and burst >= 1 (got {rate}, {burst})")
        self.rate, self.burst, self.max_clients = rate, float(burst), max_clients
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._lock = threading.Lock()

    def check(self, key: str, now: float | None = None) -> None:
        """Take one token for ``key`` or raise :class:`~imgcls.errors.ImgclsError` 429 with the seconds to wait."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens = self._tokens(key, now)
            if tokens < 1:
                self._buckets[key] = (tokens, now)
                wait = math.ceil((1 - tokens) / self.rate)
                raise ImgclsError(429, "rate_limited", f"too many requests from this client; retry in {wait} s",
                                      {"Retry-After": str(wait)})
            self._take(key, tokens, now)

    def delay(self, key: str, max_delay_s: float, now: float | None = None) -> float:
        """Take one token for ``key``, borrowing it when none is left: the seconds until it would have been there
        (at most ``max_delay_s``: a flood beyond that borrows no further). The refusal throttle holds answers so."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens = max(self._tokens(key, now), 1 - max_delay_s * self.rate)
            self._take(key, tokens, now)
        return max(0.0, round((1 - tokens) / self.rate, 6))  # rounded: no sleeps of 1e-17 s

    def _tokens(self, key: str, now: float) -> float:
        """``key``'s tokens now (its bucket taken out; a new client's is full)."""
        tokens, at = self._buckets.pop(key, (self.burst, now))
        return min(self.burst, tokens + (now - at) * self.rate)

    def _take(self, key: str, tokens: float, now: float) -> None:
        self._buckets[key] = (tokens - 1, now)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)
