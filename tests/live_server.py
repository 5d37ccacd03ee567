"""A server in a child process on a free port, whether a process still runs, and reading a server's Prometheus
metrics: what end-to-end tests and benchmarks share. Needs ``httpx`` and ``prometheus_client`` (both come with the
``serve`` extra)."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from imgcls.registry import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def alive(pid: int) -> bool:
    """The process runs (a zombie, dead but not yet reaped by its parent, does not)."""
    try:
        os.kill(pid, 0)
        return Path(f"/proc/{pid}/stat").read_text().split()[2] not in ("Z", "X")
    except (ProcessLookupError, FileNotFoundError):
        return False


@contextmanager
def server_process(cmd: list[str], port: int, env: dict[str, str] | None = None, log: Path | None = None,
                   probe: str = "/readyz", timeout: float = 120) -> Iterator[str]:
    """Start ``cmd`` (listening on ``port``), wait until ``probe`` answers 200, yield the URL; SIGTERM it after
    (SIGKILL if it has not ended 30 s later)."""
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=PROJECT_ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1",
                                 **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                tail = log.read_text()[-4000:] if log else ""
                raise RuntimeError(f"{cmd} exited {proc.returncode}:\n{tail}")
            try:
                if httpx.get(f"{url}{probe}", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{cmd} not ready in {timeout:.0f} s:\n{log.read_text()[-4000:] if log else ''}")
            time.sleep(0.2)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        if log:
            out.close()


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the values of the samples called ``name`` in Prometheus text whose labels include ``labels``
    (``name`` is a sample name: ``x_total``, ``x_count``, ``x_sum`` ...)."""
    return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))
