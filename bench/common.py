"""What the benchmarks share: the project's test photos, a load generator, percentiles. Servers on free ports and
metrics come from :mod:`tests.live_server`."""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from training.data import SHARED_DATA as DATA


def test_photos() -> list[Path]:
    photos = sorted((DATA / "test").glob("*/*.jpg"))
    if not photos:
        sys.exit(f"no photos under {DATA / 'test'}: the benchmarks read the project's test photos in place")
    return photos


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
