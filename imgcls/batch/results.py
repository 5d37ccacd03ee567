"""The batch job's results file: append-only JSONL (or CSV), locked, fsynced per batch, torn tail dropped on start.

Crash safety: rows are appended, flushed and fsynced one batch at a time. On start the job drops a torn last line
(left by a kill in the middle of a write), reads the paths already in the output and skips them, so re-running the
same command after a crash or SIGKILL ends with exactly one row per input.
"""
from __future__ import annotations

import csv
import fcntl
import io
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from imgcls.batch.inputs import BatchError
from imgcls.batch.rows import FIELDS

__all__ = ["Outcome", "ResultsFile", "drop_torn_tail"]


def drop_torn_tail(f: IO[bytes]) -> int:
    """Truncate a file opened for update to its last complete line (ending in a newline); returns bytes dropped.

    A job killed in the middle of a write leaves at most one partial line at the end; it is dropped and its inputs
    are classified again."""
    end = f.seek(0, os.SEEK_END)
    pos = end
    while pos > 0:
        step = min(pos, 1 << 16)
        f.seek(pos - step)
        newline = f.read(step).rfind(b"\n")
        if newline >= 0:
            pos = pos - step + newline + 1
            break
        pos -= step
    if pos < end:
        f.truncate(pos)
        f.flush()
        os.fsync(f.fileno())
    f.seek(0, os.SEEK_END)
    return end - pos


@dataclass(frozen=True)
class Outcome:
    """What the results file says about one input (kept small: a file may hold millions of rows)."""

    label: str | None
    error: str | None


class ResultsFile:
    """The append-only output (JSONL, or CSV when the name ends in ``.csv``), locked against a second writer."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self.csv = self.path.suffix.lower() == ".csv"
        self.dropped_bytes = 0
        self.done: dict[str, Outcome] = {}  # what the file holds, by path
        self.versions: set[str] = set()  # model versions of the rows in the file
        self._f: IO[bytes] | None = None

    def __enter__(self) -> ResultsFile:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+b")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            raise BatchError(f"{self.path} is being written by another batch job") from None
        self._f = f
        try:
            self.dropped_bytes = drop_torn_tail(f)
            for row in self._read_rows():
                self._note(row)
            if self.csv and f.tell() == 0:
                self._append(_csv_line(FIELDS))
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._f is not None:
            self._f.close()  # closing also releases the lock
            self._f = None

    def _read_rows(self) -> Iterator[dict[str, Any]]:
        assert self._f is not None
        self._f.seek(0)
        text = io.TextIOWrapper(self._f, encoding="utf-8", errors="surrogateescape", newline="")
        try:
            if self.csv:
                reader = csv.DictReader(text)
                if reader.fieldnames is not None and tuple(reader.fieldnames) != FIELDS:
                    raise BatchError(f"{self.path} has columns {reader.fieldnames}, not a results file of this job "
                                     f"({', '.join(FIELDS)}); choose another --output")
                for row in reader:
                    yield {k: (v if v != "" else None) for k, v in row.items()}
            else:
                for n, line in enumerate(text, 1):
                    try:
                        row = json.loads(line)
                    except ValueError:
                        row = None
                    if not isinstance(row, dict) or not isinstance(row.get("path"), str):
                        raise BatchError(f"{self.path}:{n} is not a result row of this job; choose another --output")
                    yield row
        finally:
            text.detach()  # keep self._f open
            self._f.seek(0, os.SEEK_END)

    def write(self, rows: list[dict[str, Any]]) -> None:
        """Append ``rows`` and make them durable (flush + fsync) before returning."""
        if rows:
            self._append("".join(_csv_line(_csv_values(r)) if self.csv else json.dumps(r) + "\n" for r in rows))
            for row in rows:
                self._note(row)

    def _note(self, row: dict[str, Any]) -> None:
        self.done[row["path"]] = Outcome(row.get("label"), row.get("error"))
        self.versions.add(str(row.get("model_version")))

    def _append(self, text: str) -> None:
        assert self._f is not None
        self._f.write(text.encode("utf-8", "surrogateescape"))  # file names that are not UTF-8 round-trip
        self._f.flush()
        os.fsync(self._f.fileno())


def _csv_values(row: dict[str, Any]) -> list[Any]:
    probs = row["probabilities"]
    return [row["path"], row["label"], row["score"], row.get("known"), row.get("novelty"),
            json.dumps(probs) if probs is not None else None, row["model_version"], row["error"], row["detail"]]


def _csv_line(values: Iterable[Any]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerow(["" if v is None else v for v in values])
    return out.getvalue()
