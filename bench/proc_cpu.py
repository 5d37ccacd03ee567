"""CPU time of a server's whole process tree, read from ``/proc``: what a benchmark charges a server for its load.

A server is found by a tag in its environment (every child inherits it), so a tree of worker processes counts in
full however it was spawned. Linux only.
"""
from __future__ import annotations

import os
from pathlib import Path

TAG = "BENCH_CPU_TAG"
_TICK = os.sysconf("SC_CLK_TCK")


def _tagged(pid_dir: Path, marker: bytes) -> bool:
    try:
        return marker in (pid_dir / "environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False


def _ticks(pid_dir: Path) -> int | None:
    """utime + stime of the process, and of its children that have ended and been waited for."""
    try:
        fields = (pid_dir / "stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # fields[0] is field 3 of proc(5) (state): utime, stime, cutime, cstime are fields 14-17
    return sum(int(f) for f in fields[11:15])


def tree_ticks(tag: str) -> dict[int, int]:
    """CPU ticks so far of every live process whose environment holds ``BENCH_CPU_TAG=tag``."""
    marker = f"{TAG}={tag}".encode()
    out = {}
    for pid_dir in Path("/proc").iterdir():
        if pid_dir.name.isdigit() and _tagged(pid_dir, marker):
            ticks = _ticks(pid_dir)
            if ticks is not None:
                out[int(pid_dir.name)] = ticks
    return out


def cpu_seconds_between(before: dict[int, int], after: dict[int, int]) -> float:
    """The tree's CPU seconds from ``before`` to ``after`` (processes that ended in between count through their
    parent's waited-for children time, or not at all)."""
    return sum(t - before.get(pid, 0) for pid, t in after.items()) / _TICK
