"""Valid-request latency and server memory while clients loop expensive images.

    python -m bench.bench_abuse --artifacts DIR [--seconds 30] [--abusers 4]

Phases, same server, same run: (1) quiet: one client loops valid photos; (2) the same client while ``--abusers``
clients loop the issue's 1.9 kB lossless WebP of 7000x7000; (3) the same with the costliest WebP still under the
full-decode pixel limit. Prints valid p50/p99 per phase, the ratio to quiet, and the server tree's peak RSS.
Target: p99 within 3x of quiet and the server under 1.5 GB. Each abuser connects from an address of its own
(127.0.0.2, ...), so the server's per-client refusal throttle (``service/throttle.py``) sees four clients; the
valid client is 127.0.0.1.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import math
import os
import sys
import time
from pathlib import Path

from PIL import Image

from bench.common import DATA, pct
from bench.soak import find_server_pid, tree_rss_mb
from imgcls.images import DEFAULT_MAX_PIXELS_FULL
from tests.live_server import free_port
from tests.live_server import server_process as server


def webp(side: int) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (10, 20, 30)).save(buf, "WEBP", lossless=True)
    return buf.getvalue()


async def phase(url: str, pid: int, seconds: float, valid: list[bytes], abuse: bytes | None, abusers: int) -> dict:
    import aiohttp

    latencies: list[float] = []
    abuse_status: dict[int, int] = {}
    failed, peak = 0, tree_rss_mb(pid)
    end = time.monotonic() + seconds

    async def valid_client(session: aiohttp.ClientSession) -> None:
        nonlocal failed
        i = 0
        while time.monotonic() < end:
            t = time.perf_counter()
            async with session.post(f"{url}/classify", data=valid[i % len(valid)],
                                    headers={"Content-Type": "image/jpeg"}) as r:
                await r.read()
                failed += r.status != 200
            latencies.append(time.perf_counter() - t)
            i += 1

    async def abuser(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < end:
            async with session.post(f"{url}/classify", data=abuse, headers={"Content-Type": "image/webp"}) as r:
                await r.read()
                abuse_status[r.status] = abuse_status.get(r.status, 0) + 1

    async def watch() -> None:
        nonlocal peak
        while time.monotonic() < end:
            peak = max(peak, tree_rss_mb(pid))
            await asyncio.sleep(0.25)

    def session(address: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120),
                                     connector=aiohttp.TCPConnector(local_addr=(address, 0)))

    # Each abuser is a client of its own (127.0.0.2, .3, ...: all loopback), as the server's per-client limits see it.
    sessions = [session(f"127.0.0.{1 + i}") for i in range(1 + (abusers if abuse else 0))]
    jobs = [valid_client(sessions[0]), watch()] + [abuser(s) for s in sessions[1:]]
    try:
        await asyncio.gather(*jobs)
    finally:
        for s in sessions:
            await s.close()
    return {"requests": len(latencies), "failed": failed, "p50_ms": pct(latencies, 50), "p99_ms": pct(latencies, 99),
            "peak_rss_mb": peak, "abuse_status": abuse_status}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, required=True)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--abusers", type=int, default=4)
    args = p.parse_args()
    photos = sorted((DATA / "test").glob("*/*.jpg"))[:50]
    if not photos:
        sys.exit(f"no photos under {DATA / 'test'}")
    valid = [path.read_bytes() for path in photos]
    under = math.isqrt(DEFAULT_MAX_PIXELS_FULL)
    bombs = {"7000x7000 lossless WebP (issue)": webp(7000),
             f"{under}x{under} lossless WebP (at the limit)": webp(under)}
    port = free_port()
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    log = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-abuse-{port}.log"
    with server(cmd, port, {"ARTIFACTS_DIR": str(args.artifacts), "BENTOML_DISABLE_GPU_ALLOCATION": "1"}, log) as url:
        pid = find_server_pid(port)
        quiet = asyncio.run(phase(url, pid, args.seconds, valid, None, 0))
        print(f"quiet: valid p50 {quiet['p50_ms']:.1f} ms, p99 {quiet['p99_ms']:.1f} ms, "
              f"{quiet['requests']} requests, peak RSS {quiet['peak_rss_mb']:.0f} MB", flush=True)
        for name, body in bombs.items():
            r = asyncio.run(phase(url, pid, args.seconds, valid, body, args.abusers))
            print(f"{args.abusers} clients looping a {len(body)} B {name}: valid p50 {r['p50_ms']:.1f} ms, "
                  f"p99 {r['p99_ms']:.1f} ms ({r['p99_ms'] / quiet['p99_ms']:.2f}x quiet; target <= 3x), "
                  f"{r['failed']} valid failed, peak RSS {r['peak_rss_mb']:.0f} MB (target < 1536), "
                  f"abusive answers {r['abuse_status']}", flush=True)


if __name__ == "__main__":
    main()
