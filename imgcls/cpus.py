"""How many CPUs this process may use (:func:`usable_cpus`)."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["usable_cpus"]


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (``taskset``), within a cgroup v2 CPU quota (a container's
    ``--cpus``) where there is one."""
    cpus = len(os.sched_getaffinity(0))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()
        if quota != "max":
            cpus = min(cpus, max(1, int(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cpus
