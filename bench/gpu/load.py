"""HTTP load from several processes (one asyncio loop each): at thousands of requests/s one Python loop is the
bottleneck, not the server.

    python -m bench.gpu.load --url URL --photos DIR --clients 256 --requests 20000 --processes 8

Each process runs ``clients / processes`` keep-alive connections posting raw JPEG bodies to ``/classify`` (until
``--requests`` are done or ``--seconds`` have passed) and reports every latency; the figures are computed over all
of them, over the wall time from the first start to the last end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def bodies(photos: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted(photos.rglob("*.jpg"))]


async def _one_process(url: str, data: list[bytes], clients: int, total: int, offset: int, seconds: float) -> dict:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    counter = iter(range(total))
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        async def client() -> None:
            for i in counter:
                start = time.perf_counter()
                if start > deadline:
                    break
                async with session.post(f"{url}/classify", data=data[(offset + i) % len(data)],
                                        headers={"Content-Type": "image/jpeg"}) as r:
                    await r.read()
                latencies.append(time.perf_counter() - start)
                statuses[r.status] = statuses.get(r.status, 0) + 1

        start = time.time()
        await asyncio.gather(*(client() for _ in range(clients)))
    return {"start": start, "end": time.time(), "latencies": latencies, "statuses": statuses}


def run(url: str, photos: Path, clients: int, requests: int, processes: int, seconds: float = 600) -> dict:
    """Load ``url`` from ``processes`` child processes until ``requests`` are done or ``seconds`` have passed;
    p50/p99 over every request, requests/s over the wall time."""
    processes = max(1, min(processes, clients))
    procs = []
    for k in range(processes):
        share_clients = clients // processes + (k < clients % processes)
        share = requests // processes + (k < requests % processes)
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "bench.gpu.load", "--child", "--url", url, "--photos", str(photos),
             "--clients", str(share_clients), "--requests", str(share), "--offset", str(k * 7919),
             "--seconds", str(seconds)],
            stdout=subprocess.PIPE))
    parts = []
    for p in procs:
        out, _ = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"a load process exited {p.returncode}")
        parts.append(json.loads(out))
    wall = max(x["end"] for x in parts) - min(x["start"] for x in parts)
    lat = np.concatenate([np.asarray(x["latencies"]) for x in parts]) * 1000
    statuses: dict[str, int] = {}
    for x in parts:
        for s, n in x["statuses"].items():
            statuses[str(s)] = statuses.get(str(s), 0) + n
    return {"clients": clients, "requests": int(lat.size), "processes": processes, "seconds": round(wall, 3),
            "rps": round(lat.size / wall, 1), "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p99_ms": round(float(np.percentile(lat, 99)), 2), "statuses": statuses,
            "non_200": sum(n for s, n in statuses.items() if s != "200")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.load", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True)
    p.add_argument("--photos", type=Path, required=True)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--processes", type=int, default=4)
    p.add_argument("--seconds", type=float, default=600, help="stop starting requests after this long")
    p.add_argument("--offset", type=int, default=0)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = asyncio.run(_one_process(args.url, bodies(args.photos), args.clients, args.requests, args.offset,
                                          args.seconds))
        json.dump(result, sys.stdout)
    else:
        print(json.dumps(run(args.url, args.photos, args.clients, args.requests, args.processes, args.seconds),
                         indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
