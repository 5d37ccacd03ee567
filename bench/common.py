"""What the benchmarks share: the project's test photos, a load generator, percentiles. Servers on free ports and
metrics come from :mod:`imgcls.live_server`."""
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


def load(url: str, bodies: list[bytes], clients: int, total: int) -> dict:
    """``clients`` concurrent keep-alive connections post raw JPEG bodies until ``total`` requests are done.

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
                    async with session.post(f"{url}/classify", data=bodies[i % len(bodies)],
                                            headers={"Content-Type": "image/jpeg"}) as r:
                        await r.read()
                        failures += r.status != 200
                    latencies.append(time.perf_counter() - start)

            start = time.perf_counter()
            await asyncio.gather(*(client() for _ in range(clients)))
            return time.perf_counter() - start

    wall = asyncio.run(run())
    return {"requests": total, "failures": failures, "seconds": wall, "rps": total / wall,
            "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99)}


def pct(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q))
