"""Memory under large concurrent uploads: N clients each upload a ~9 MB JPEG to /classify at once; the server's
peak RSS (all its processes) against the limit the upload budget promises.

    python -m bench.bench_upload_memory [--clients 200] [--mb 9] [--budget-mb 128] [--baseline]

The limit: the server's idle RSS (after one warm-up upload) plus ``RSS_PER_BUDGET_BYTE`` (4) times
``UPLOAD_BUDGET_BYTES`` (service/upload_budget.py: the upload bytes held in memory at once). An upload's bytes are
held up to three times over while it is served (the body as read, BentoML's parse of it, the endpoint's read of its
file): 2.5-2.7x the budget above idle was measured with JPEG uploads; the limit leaves room for the allocator and
the waiting connections' buffers. Decoding is bounded separately (DECODE_THREADS, MAX_PIXELS). Every answer must be
200, or a JSON 4xx/503. ``--baseline`` first runs the same load with a budget larger than all the uploads together
(no bound), for comparison in the same run. Exits 1 if a request fails or the peak passes the limit. The server runs
a tiny real model (tests/tiny_model.py), so the figure is about uploads, not the network's weights.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Self

import httpx
import numpy as np
from PIL import Image

RSS_PER_BUDGET_BYTE = 4  # the documented bound: idle RSS + 4 x UPLOAD_BUDGET_BYTES


def big_jpeg(mb: float, seed: int = 0) -> bytes:
    """A JPEG of about ``mb`` MB: smooth colours plus strong noise, at quality 95 (noise keeps it from compressing)."""
    rng = np.random.default_rng(seed)
    side = int((mb * 1e6 / 0.9) ** 0.5)  # ~0.9 bytes per pixel at this noise and quality
    w, h = int(side * 1.33), int(side / 1.33)
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / w, y * 255 / h, (x + y) % 256], -1) + rng.normal(0, 40, (h, w, 3))
    buf = io.BytesIO()
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def tree_rss(pid: int) -> int:
    """Resident bytes of process ``pid`` and all its descendants (BentoML's workers run in sessions of their own)."""
    parents, rss = {}, {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            for line in Path(f"/proc/{entry}/status").read_text().splitlines():
                if line.startswith("PPid:"):
                    parents[int(entry)] = int(line.split()[1])
                elif line.startswith("VmRSS:"):
                    rss[int(entry)] = int(line.split()[1]) * 1024
        except (OSError, ValueError, IndexError):
            continue  # a process that ended meanwhile
    tree, grew = {pid}, True
    while grew:
        more = {p for p, parent in parents.items() if parent in tree} - tree
        tree |= more
        grew = bool(more)
    return sum(rss.get(p, 0) for p in tree)


class PeakRss:
    """Samples the RSS of a process tree every ``interval`` s in a thread; ``peak`` is the largest seen."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self.pid, self.interval, self.peak = pid, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            time.sleep(self.interval)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


async def upload_all(url: str, body: bytes, clients: int) -> list[tuple[int | None, str]]:
    """Every client posts ``body`` once, all at the same moment; (status, error code or text) of each."""
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=0)
    start = asyncio.Event()
    async with httpx.AsyncClient(base_url=url, timeout=600, limits=limits) as client:
        async def one() -> tuple[int | None, str]:
            await start.wait()
            try:
                r = await client.post("/classify", content=body, headers={"content-type": "image/jpeg"})
            except httpx.HTTPError as e:
                return None, f"{type(e).__name__}: {e}"
            if r.status_code == 200:
                return 200, ""
            try:
                payload = r.json()
                return r.status_code, payload["error"] if isinstance(payload.get("detail"), str) else "no detail"
            except (ValueError, KeyError, AttributeError):
                return r.status_code, f"not JSON: {r.text[:100]!r}"

        tasks = [asyncio.create_task(one()) for _ in range(clients)]
        await asyncio.sleep(0.2)
        start.set()
        return await asyncio.gather(*tasks)


def acceptable(status: int | None, error: str) -> bool:
    return status == 200 or (status is not None and (400 <= status < 500 or status == 503)
                             and not error.startswith(("not JSON", "no detail")))


def measure(workdir: Path, body: bytes, clients: int, budget: int, wait_s: float) -> dict:
    """One server, one warm-up upload, then the load: idle and peak RSS, answers."""
    from bench.tiny_server import serve_tiny

    log = workdir / f"server-{budget}.log"
    with serve_tiny(workdir / f"run-{budget}", log, UPLOAD_BUDGET_BYTES=str(budget), UPLOAD_WAIT_S=str(wait_s)) \
            as (url, pid):
        assert httpx.post(f"{url}/classify", content=body, headers={"content-type": "image/jpeg"},
                          timeout=120).status_code == 200
        time.sleep(0.5)
        idle = tree_rss(pid)
        t0 = time.perf_counter()
        with PeakRss(pid) as rss:
            answers = asyncio.run(upload_all(url, body, clients))
        elapsed = time.perf_counter() - t0
    counts = Counter(f"{s} {e}".strip() for s, e in answers)
    bad = [a for a in answers if not acceptable(*a)]
    return {"budget": budget, "idle": idle, "peak": rss.peak, "limit": idle + RSS_PER_BUDGET_BYTE * budget,
            "elapsed_s": elapsed, "answers": dict(counts), "failures": len(bad)}


def report(name: str, r: dict) -> str:
    mib = 1 << 20
    return (f"{name}: budget {r['budget'] / mib:.0f} MiB; idle RSS {r['idle'] / mib:.0f} MiB; peak RSS "
            f"{r['peak'] / mib:.0f} MiB; limit (idle + {RSS_PER_BUDGET_BYTE} x budget) {r['limit'] / mib:.0f} MiB; "
            f"peak/limit {r['peak'] / r['limit']:.2f}; {r['elapsed_s']:.1f} s; answers {r['answers']}; "
            f"failures {r['failures']}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--mb", type=float, default=9.0, help="size of each upload (under MAX_BODY_BYTES, 10 MiB)")
    p.add_argument("--budget-mb", type=float, default=128, help="UPLOAD_BUDGET_BYTES, in MiB")
    p.add_argument("--wait-s", type=float, default=30.0, help="UPLOAD_WAIT_S")
    p.add_argument("--baseline", action="store_true", help="first the same load without a bound, for comparison")
    p.add_argument("--json", type=Path, help="also write the figures here")
    args = p.parse_args()
    body = big_jpeg(args.mb)
    print(f"{args.clients} clients x {len(body) / 1e6:.1f} MB JPEG, at once, to /classify")
    results = {}
    with tempfile.TemporaryDirectory(prefix="upload-memory-") as tmp:
        if args.baseline:
            results["unbounded"] = measure(Path(tmp), body, args.clients, 2 * args.clients * len(body), args.wait_s)
            print(report("unbounded", results["unbounded"]), flush=True)
        results["bounded"] = measure(Path(tmp), body, args.clients, int(args.budget_mb * (1 << 20)), args.wait_s)
        print(report("bounded", results["bounded"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    r = results["bounded"]
    if "unbounded" in results:
        print(f"peak RSS above idle, bounded / unbounded: "
              f"{(r['peak'] - r['idle']) / max(1, results['unbounded']['peak'] - results['unbounded']['idle']):.2f}")
    sys.exit(0 if r["failures"] == 0 and r["peak"] <= r["limit"] else 1)


if __name__ == "__main__":
    main()
