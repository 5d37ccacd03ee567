"""Shared fixtures and helpers.

Fast tier (``tests/fast``, ``make test-fast``): ``tiny_registry``, a tiny CNN trained in seconds on synthetic
images through the real pipeline (``training.train.train``: export with parity check, evaluation, registry).
End-to-end tier (the rest, ``make test``): the real photos read in place, the real CLI, EfficientNet, a real server.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from imgcls.promotion import promote
from imgcls.registry import PROJECT_ROOT as ROOT
from imgcls.registry import Registry
from tests import synthetic
from tests.live_server import free_port, metric, server_process
from training.data import SHARED_DATA as DATA

__all__ = ["DATA", "PY", "ROOT", "child_env", "metric", "needs_data", "photos", "run_cli", "serve"]

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


@contextmanager
def serve(artifacts: Path, log_path: Path, ready: bool = True, **env: str) -> Iterator[str]:
    """``imgcls serve`` (bentoml serve service.service:ImageClassifier) on a free port; yields its base URL;
    SIGTERM at the end.

    ``ready=False`` waits only for /livez (a server that has no model yet)."""
    port = free_port()
    cmd = [PY, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(cmd, port, {**child_env(ARTIFACTS_DIR=str(artifacts), BENTOML_DISABLE_GPU_ALLOCATION="1",
                                                **env)},
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


# -- the fast tier's model -----------------------------------------------------------------------------------------

TINY_CLASSES = list(synthetic.CLASSES)
TINY_PER_SPLIT = {"train": 12, "val": 6, "test": 6}  # images per class
TINY_NOT_AN_IMAGE = Path("test") / "blue" / "notes.jpg"  # in tiny_data: a text file named .jpg, skipped with a reason
TINY_TRUNCATED = Path("train") / "red" / "half.jpg"  # in tiny_data: a JPEG cut to a third, skipped


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Synthetic split folders (:data:`TINY_PER_SPLIT` images of each of :data:`TINY_CLASSES`), plus a text file
    named ``.jpg`` in test and a truncated JPEG in train. Read-only by convention: copy it to change it."""
    root = synthetic.write_split_folders(tmp_path_factory.mktemp("tiny-data"), TINY_PER_SPLIT)
    (root / TINY_NOT_AN_IMAGE).write_text("not an image\n")
    data = synthetic.image_bytes("red", 99, size=(80, 60))
    (root / TINY_TRUNCATED).write_bytes(data[: len(data) // 3])
    return root


@pytest.fixture(scope="session")
def tiny_registry(tiny_data: Path, tmp_path_factory) -> Path:
    """A registry folder whose ``current`` is a tiny random-init CNN (backbone ``tiny``, 32x32 input) trained on
    ``tiny_data`` through the real :func:`training.train.train` (features, head, ONNX export with its parity
    check, evaluation, report, ``Registry.add``), then promoted. Do not change it: use ``tiny_copy``."""
    from training.data import create_dataset
    from training.fit import FitConfig
    from training.train import TrainConfig, train

    root = tmp_path_factory.mktemp("tiny-registry")
    registry = Registry(root)
    cfg = TrainConfig(backbone="tiny", random_init=True, aug_views=1, fit=FitConfig(epochs=15, lr=0.1, seed=0))
    version, _ = train(create_dataset(tiny_data), cfg, registry, cache_dir=root / "cache" / "features")
    promote(registry, version, reason="tiny_registry fixture")
    return root


@pytest.fixture
def tiny_copy(tiny_registry: Path, tmp_path: Path) -> Path:
    """A private copy of ``tiny_registry`` that a test may promote in, add to or break."""
    return Path(shutil.copytree(tiny_registry, tmp_path / "registry", symlinks=True))
