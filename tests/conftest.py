"""Shared fixtures: the real data (read in place), the real CLI, a real model, a real server on a free port."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "catsdogs"
PY = sys.executable
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent: the licensed photos are read in place")


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1", **extra}
    env.pop("DATA_DIR", None) if "DATA_DIR" not in extra else None
    return env


def run_cli(*args: str, artifacts: Path | None = None, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    """``python -m training [--artifacts DIR] ARGS...`` as a user runs it."""
    cmd = [PY, "-m", "training", *(["--artifacts", str(artifacts)] if artifacts else []), *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env(**env), timeout=1200)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return proc


def photos(label: str, n: int) -> list[Path]:
    return sorted((DATA / "test" / label).glob("*.jpg"))[-n:]  # the end of the list: unseen by the 150-per-class model


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of a Prometheus sample's values whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(rf"^{name}(?:{{(.*)}})? ([0-9.e+-]+)$", line)
        if m and all(f'{k}="{v}"' in (m.group(1) or "") for k, v in labels.items()):
            total += float(m.group(2))
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serve(artifacts: Path, log_path: Path, ready: bool = True, **env: str) -> Iterator[str]:
    """``bentoml serve service.service:ImageClassifier`` on a free port; yields its base URL; SIGTERM at the end."""
    import httpx

    port = free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [PY, "-m", "bentoml", "serve", "service.service:ImageClassifier", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env=child_env(ARTIFACTS_DIR=str(artifacts), BENTOML_DISABLE_GPU_ALLOCATION="1", **env),
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"server exited {proc.returncode}:\n{log_path.read_text()[-4000:]}")
            try:
                status = httpx.get(f"{url}/readyz" if ready else f"{url}/livez", timeout=2).status_code
                if status == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"server not ready in 90 s:\n{log_path.read_text()[-4000:]}")
            time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A registry holding one EfficientNet-Lite0 model trained by the real CLI on 150 real photos per class
    and split, promoted to current. Returns the registry folder."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent: the licensed photos are read in place")
    artifacts = tmp_path_factory.mktemp("artifacts")
    run_cli("train", "--data", str(DATA), "--limit-per-class", "150", "--epochs", "30", artifacts=artifacts)
    return artifacts


test_env = child_env  # old name, still imported (aliased) by some test modules
