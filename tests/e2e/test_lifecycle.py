"""The server's processes: SIGTERM lets an in-flight request finish; a killed parent leaves no worker behind.
With one worker and with two. On the tiny ONNX model (tests/tiny_model.py): no photos needed."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from PIL import Image

from bench.fuzz import log_problems
from imgcls.registry import Registry
from tests.conftest import PY, ROOT, child_env
from tests.live_server import alive, free_port
from tests.tiny_model import add_tiny_version


def png() -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").convert("RGB").save(buf, "PNG")
    return buf.getvalue()


WORKERS = (1, 2)  # the worker processes `bentoml serve` starts (WORKERS)


def start(registry: Path, log: Path, workers: int = 1) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([PY, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT,
                            env=child_env(ARTIFACTS_DIR=str(registry), BENTOML_DISABLE_GPU_ALLOCATION="1",
                                          WORKERS=str(workers)),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def descendants(pid: int) -> list[int]:
    rows = [line.split() for line in subprocess.run(["ps", "-eo", "pid=,ppid="], capture_output=True,
                                                     text=True).stdout.splitlines()]
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        kids = [int(p) for p, pp in rows if int(pp) == parent]
        found += kids
        todo += kids
    return found


@pytest.mark.parametrize("workers", WORKERS)
def test_sigterm_finishes_the_request_in_flight(tmp_path: Path, workers: int) -> None:
    reg = Registry(tmp_path / "artifacts")
    add_tiny_version(reg, promote=True)
    proc, url = start(reg.root, tmp_path / "server.log", workers)
    body, answer = png(), {}

    def slow_body():
        for i in range(0, len(body), max(1, len(body) // 10)):
            yield body[i:i + max(1, len(body) // 10)]
            time.sleep(0.3)

    def send() -> None:
        answer["r"] = httpx.post(f"{url}/classify", content=slow_body(), headers={"Content-Type": "image/png"},
                                 timeout=60)

    client = threading.Thread(target=send)
    client.start()
    time.sleep(1.0)  # the upload is under way
    os.kill(proc.pid, signal.SIGTERM)  # as a container runtime stops PID 1
    client.join(60)
    assert answer["r"].status_code == 200, answer["r"].text
    assert proc.wait(60) is not None
    # A stopping server closes its socket before its workers stop: no worker may take that for its server's death.
    assert not log_problems((tmp_path / "server.log").read_text(errors="replace"))


@pytest.mark.parametrize("workers", WORKERS)
def test_killing_the_parent_leaves_no_worker(tmp_path: Path, workers: int) -> None:
    reg = Registry(tmp_path / "artifacts")
    add_tiny_version(reg, promote=True)
    proc, url = start(reg.root, tmp_path / "server.log", workers)
    children = descendants(proc.pid)
    assert len(children) >= workers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    deadline = time.monotonic() + 45  # a graceful stop
    while any(alive(w) for w in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = [w for w in children if alive(w)]
    commands = {w: Path(f"/proc/{w}/cmdline").read_bytes().replace(b"\0", b" ")[:160] for w in left}
    for w in left:
        os.kill(w, signal.SIGKILL)
    assert not left, f"workers outlived the killed server: {commands}"
