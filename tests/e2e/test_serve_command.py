"""``imgcls serve`` starts the real BentoML service (``bentoml serve``, options passed through) on the tiny model;
its /metrics text reads with the one Prometheus parser the tests and benchmarks share."""
from __future__ import annotations

from pathlib import Path

import httpx

from imgcls.registry import Registry
from tests import synthetic
from tests.conftest import PY, child_env
from tests.live_server import free_port, metric, server_process


def test_imgcls_serve_passes_host_and_port_to_bentoml(tiny_registry: Path, tmp_path: Path) -> None:
    port = free_port()
    cmd = [PY, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    env = child_env(ARTIFACTS_DIR=str(tiny_registry), BENTOML_DISABLE_GPU_ALLOCATION="1")
    with server_process(cmd, port, env, tmp_path / "serve.log", timeout=120) as url:
        assert url == f"http://127.0.0.1:{port}"
        for label in synthetic.CLASSES:
            r = httpx.post(f"{url}/classify", content=synthetic.image_bytes(label, 90_000),
                           headers={"Content-Type": "image/jpeg"}, timeout=30)
            assert r.status_code == 200, r.text
            assert r.json()["label"] == label
            assert r.json()["model"]["version"] == Registry(tiny_registry).current()
        text = httpx.get(f"{url}/metrics", timeout=10).text
    assert metric(text, "imgcls_predictions_total") == len(synthetic.CLASSES)
    assert metric(text, "imgcls_predictions_total", label="red") == 1
    assert metric(text, "imgcls_model_batch_size_count") >= 1
