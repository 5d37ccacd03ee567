"""Workloads that tests/e2e/test_crash_safety.py kills with SIGKILL: ``python -m tests.crash_child KIND ROOT``.

Each prints ``ACK <what>`` (flushed) at the moment the real program would acknowledge it: the service answers
``201`` when :meth:`FeedbackStore.add` returns, ``training promote`` prints its line when
:func:`imgcls.promotion.promote` returns. ``CRASH_AT=<op>:<n>`` kills the process with SIGKILL right after its
n-th call of ``os.<op>`` (``fsync``, ``replace``, ``write``): a crash at an exact step, where a kill at a random
moment would hit the few microseconds between two steps only by luck.
"""
from __future__ import annotations

import functools
import os
import signal
import sys
from pathlib import Path


def crash_after(op: str, n: int) -> None:
    real = getattr(os, op)
    calls = 0

    @functools.wraps(real)
    def wrapper(*args, **kwargs):
        nonlocal calls
        result = real(*args, **kwargs)
        calls += 1
        if calls == n:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(os, op, wrapper)


def feedback(root: Path, start: int) -> None:
    from imgcls.feedback import FeedbackStore
    from tests import synthetic

    store = FeedbackStore(root)
    labels = list(synthetic.CLASSES)
    for i in range(start, start + 10_000):
        label = labels[i % len(labels)]
        stored = store.add(synthetic.image_bytes(label, i, size=(64, 48)), label)
        print(f"ACK {label} {stored.sha256}", flush=True)


def promote(root: Path, versions: list[str]) -> None:
    from imgcls.promotion import promote as promote_version
    from imgcls.registry import Registry

    registry = Registry(root)
    for _ in range(10_000):  # each time the version after the current one: every promotion moves the pointer
        following = versions[(versions.index(registry.current()) + 1) % len(versions)]
        version = promote_version(registry, following, reason="crash test")
        print(f"ACK {version}", flush=True)


def main() -> None:
    kind, root = sys.argv[1], Path(sys.argv[2])
    if os.environ.get("CRASH_AT"):
        op, n = os.environ["CRASH_AT"].split(":")
        crash_after(op, int(n))
    print("READY", flush=True)
    if kind == "feedback":
        feedback(root, int(sys.argv[3]))
    elif kind == "promote":
        promote(root, sys.argv[3:])
    else:
        raise SystemExit(f"unknown workload {kind!r}")


if __name__ == "__main__":
    main()
