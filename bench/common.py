"""What the benchmarks share: the project's test photos, servers on free ports, a load generator, percentiles."""
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

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "catsdogs"


def test_photos() -> list[Path]:
    photos = sorted((DATA / "test").glob("*/*.jpg"))
    if not photos:
        sys.exit(f"no photos under {DATA / 'test'}: the benchmarks read the project's test photos in place")
    return photos


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def server(cmd: list[str], port: int, env: dict[str, str] | None = None, log: Path | None = None,
           probe: str = "/readyz", timeout: float = 120) -> Iterator[str]:
    """Start ``cmd`` (listening on ``port``), wait until ``probe`` answers 200, yield the URL, SIGTERM it after."""
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
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


def load(url: str, bodies: list[bytes], clients: int, total: int, path: str = "/classify",
         field: str | None = None) -> dict:
    """``clients`` concurrent keep-alive connections post raw JPEG bodies until ``total`` requests are done.

    ``path``: the endpoint; ``field``: post each photo as a multipart file in that form field instead.

    One asyncio loop (aiohttp) generates the load, so the client takes little of the CPU it shares with the server.
    """
    import asyncio

    import aiohttp

    latencies: list[float] = []
    failures = 0

    async def run() -> float:
        counter = iter(range(total))
        connector = aiohttp.TCPConnector(limit=clients)
        async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as session:
            async def client() -> None:
                nonlocal failures
                for i in counter:
                    start = time.perf_counter()
                    async with session.post(f"{url}{path}", **_upload(bodies[i % len(bodies)], field)) as r:
                        await r.read()
                        failures += r.status != 200
                    latencies.append(time.perf_counter() - start)

            start = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            return time.perf_counter() - start

    wall = asyncio.run(run())
    return {"requests": total, "failures": failures, "seconds": wall, "rps": total / wall,
            "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99)}


def _upload(body: bytes, field: str | None) -> dict:
    """aiohttp ``post`` arguments for one JPEG: a raw body, or a multipart form with the file in ``field``."""
    import aiohttp

    if field is None:
        return {"data": body, "headers": {"Content-Type": "image/jpeg"}}
    form = aiohttp.FormData()
    form.add_field(field, body, filename="photo.jpg", content_type="image/jpeg")
    return {"data": form}


def pct(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))


def metric(text: str, name: str) -> float:
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.M))
