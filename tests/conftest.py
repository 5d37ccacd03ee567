"""Shared fixtures: the real data (read in place), the real CLI, a real model, a real server on a free port."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pytest

from bench.common import free_port, server

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "catsdogs"
PY = sys.executable
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"{DATA} is absent: the licensed photos are read in place")


def child_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "PYTHONUNBUFFERED": "1", **extra}
    if "DATA_DIR" not in extra:  # tests name their data explicitly
        env.pop("DATA_DIR", None)
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


@contextmanager
def serve(artifacts: Path, log_path: Path, ready: bool = True, **env: str) -> Iterator[str]:
    """``bentoml serve service.service:ImageClassifier`` on a free port; yields its base URL; SIGTERM at the end.

    ``ready=False`` waits only for /livez (a server that has no model yet)."""
    port = free_port()
    cmd = [PY, "-m", "bentoml", "serve", "service.service:ImageClassifier", "--host", "127.0.0.1", "--port", str(port)]
    with server(cmd, port, {**child_env(ARTIFACTS_DIR=str(artifacts), BENTOML_DISABLE_GPU_ALLOCATION="1", **env)},
                log_path, probe="/readyz" if ready else "/livez", timeout=90) as url:
        yield url


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A registry holding one EfficientNet-Lite0 model trained by the real CLI on 150 real photos per class
    and split, promoted to current. Returns the registry folder."""
    if not DATA.is_dir():
        pytest.skip(f"{DATA} is absent: the licensed photos are read in place")
    artifacts = tmp_path_factory.mktemp("artifacts")
    run_cli("train", "--data", str(DATA), "--limit-per-class", "150", "--epochs", "30", artifacts=artifacts)
    return artifacts
