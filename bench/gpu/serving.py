"""The HTTP section of the GPU run: ``imgcls serve`` on the device under load, with GPU and CPU utilisation sampled
while it runs. Used by :mod:`bench.gpu.bench`."""
from __future__ import annotations

import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from tests.live_server import free_port, server_process

__all__ = ["Sampler", "http", "wait_for_model"]


class Sampler:
    """Samples GPU utilisation (nvidia-smi, every 200 ms) and the machine's CPU utilisation (/proc/stat)."""

    def __init__(self) -> None:
        self.gpu: list[float] = []
        self._smi: subprocess.Popen | None = None

    def __enter__(self) -> Sampler:
        self.cpu_start = _cpu_times()
        if shutil.which("nvidia-smi"):
            self._smi = subprocess.Popen(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                          "-lms", "200"], stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._read, daemon=True).start()
        return self

    def _read(self) -> None:
        assert self._smi is not None and self._smi.stdout is not None
        for line in self._smi.stdout:
            try:
                self.gpu.append(float(line.strip()))
            except ValueError:
                pass

    def __exit__(self, *exc: object) -> None:
        busy0, total0 = self.cpu_start
        busy1, total1 = _cpu_times()
        self.cpu_util = (busy1 - busy0) / max(1, total1 - total0)
        if self._smi is not None:
            self._smi.terminate()
            self._smi.wait(5)

    def figures(self) -> dict[str, Any]:
        return {"gpu_util_mean_pct": round(float(np.mean(self.gpu)), 1) if self.gpu else None,
                "gpu_util_max_pct": max(self.gpu) if self.gpu else None, "gpu_samples": len(self.gpu),
                "cpu_util_pct_of_all_cores": round(100 * self.cpu_util, 1)}


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def http(artifacts: Path, device: str, photos: Path, clients: list[int], requests: int, seconds: float,
         processes: int, log_tail: Path, server_env: dict[str, str]) -> dict[str, Any]:
    """``imgcls serve`` with ``DEVICE=device``; refuses to measure unless ``/model`` reports the CUDA provider in
    use (on CUDA); then JPEG -> label under each number of clients (``requests`` or ``seconds``, what ends first)."""
    import httpx

    from bench.gpu import load
    from imgcls.onnx_model import providers_for

    providers_for(device)  # DEVICE=cuda with a CPU build of onnxruntime: the server would never come up
    port = free_port()
    env = {"ARTIFACTS_DIR": str(artifacts), "DEVICE": device, "MODEL_POLL_S": "0", **server_env}
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    out: dict[str, Any] = {"server_env": env, "loads": []}
    log = Path("/tmp/gpu-bench/server.log")  # one line per request: only its tail comes back
    log.parent.mkdir(parents=True, exist_ok=True)
    try:
        with server_process(cmd, port, env, log, probe="/livez", timeout=60) as url:
            wait_for_model(url, timeout=180)
            runtime = httpx.get(f"{url}/model", timeout=30).json().get("runtime", {})
            out["model_runtime"] = runtime
            if device == "cuda" and "CUDAExecutionProvider" not in runtime.get("providers", []):
                raise RuntimeError(f"/model reports providers {runtime.get('providers')}: CUDA is not in use")
            load.run(url, photos, min(16, clients[0]), max(200, requests // 10), processes, seconds / 3)  # warm-up
            for c in clients:
                with Sampler() as sampler:
                    figures = load.run(url, photos, c, requests, processes, seconds)
                out["loads"].append({**figures, **sampler.figures()})
        return out
    finally:
        if log.is_file():
            log_tail.write_bytes(log.read_bytes()[-200_000:])


def wait_for_model(url: str, timeout: float) -> None:
    """Until ``/readyz`` answers 200; stops at once when ``/model`` says loading the model failed (a server whose
    model cannot start on the device keeps answering 503, which would otherwise cost the whole timeout)."""
    import httpx

    deadline = time.monotonic() + timeout
    while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
        answer = httpx.get(f"{url}/model", timeout=10)
        if answer.status_code == 503 and "none loaded yet" not in answer.text:
            raise RuntimeError(f"the server could not load its model: {answer.text[:2000]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server had no model after {timeout:.0f} s: {answer.text[:2000]}")
        time.sleep(0.5)
