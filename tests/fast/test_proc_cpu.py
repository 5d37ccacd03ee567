"""bench/proc_cpu.py: a server's process tree is found by its tag and charged the CPU it spent."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

from bench.proc_cpu import TAG, cpu_seconds_between, tree_ticks

BURN = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass\ntime.sleep(30)"


def test_a_tagged_child_and_its_own_child_are_charged_their_cpu() -> None:
    tag = uuid.uuid4().hex
    # the parent burns 0.3 s of CPU and starts a child that burns 0.3 s more: both carry the tag by inheritance
    parent_code = f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', {BURN!r}])\n{BURN}"
    proc = subprocess.Popen([sys.executable, "-c", parent_code], env={**os.environ, TAG: tag})
    try:
        deadline = time.monotonic() + 20  # counted from nothing: all the CPU both processes spent since they started
        while cpu_seconds_between({}, tree_ticks(tag)) < 0.6 and time.monotonic() < deadline:
            time.sleep(0.05)
        after = tree_ticks(tag)
        assert len(after) == 2  # the parent and its child, nothing else
        assert 0.6 <= cpu_seconds_between({}, after) < 1.5
        assert tree_ticks(uuid.uuid4().hex) == {}  # another tag finds nothing
    finally:
        for pid in tree_ticks(tag):
            os.kill(pid, 9)
        proc.wait()
