"""Soak: steady load with 10% bad inputs and some large images; server memory and latency per minute.

    python -m bench.soak --artifacts DIR [--minutes 30] [--rps 20] [--bad 0.1]     # starts the server itself
    python -m bench.soak --url http://127.0.0.1:3000 --pid PID [...]                 # a running server

Requests are sent open-loop at ``--rps`` (a slow server does not slow the load down). Valid inputs are the
project's test photos (synthetic pictures without them), plus 2% large valid images (a 12 MP JPEG, a 15 MP PNG of
39 MB: a server started here takes bodies up to 64 MB so that it decodes it);
bad inputs are mutated, truncated, non-image and oversized files. Each minute prints the RSS of the server's
whole process tree (the median and the peak of samples every 5 s) and p50/p99 of the valid requests.
Target: growth of the median RSS from minute 5 to the last < 10%.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import time
from pathlib import Path

import numpy as np

from bench.common import DATA, pct
from bench.fuzz import _picture, _save, bombs, mutate, seed_images
from tests.live_server import free_port
from tests.live_server import server_process as server

PAGE = os.sysconf("SC_PAGE_SIZE")
RSS_EVERY_S = 5.0


def tree_rss_mb(root: int) -> float:
    """Resident memory of ``root`` and all its descendants, from /proc (Linux)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    tree, frontier = {root}, [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in tree:
                tree.add(child)
                frontier.append(child)
    total = 0
    for pid in tree:
        try:
            total += int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total / 2**20


def find_server_pid(port: int) -> int:
    """The ``bentoml serve`` process started with ``--port port`` (the root of the server's tree)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"serve" in args and b"--port" in args and str(port).encode() in args:
                return int(entry)
    raise RuntimeError(f"no server process found for port {port}")


def inputs(seed: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """(valid, large valid, bad) request bodies."""
    rng = np.random.default_rng(seed)
    photos = sorted((DATA / "test").glob("*/*.jpg"))
    valid = [p.read_bytes() for p in photos] or [_save(_picture(rng, 320, 240), "JPEG") for _ in range(50)]
    large = [_save(_picture(rng, 4000, 3000), "JPEG", quality=90), _save(_picture(rng, 3900, 3900), "PNG")]
    r = random.Random(seed)
    seeds = list(seed_images(seed).values())
    bad = [mutate(r, r.choice(seeds + valid[:20]), seeds) for _ in range(300)]
    bad += [b"not an image at all", b"", valid[0][: len(valid[0]) // 2], *bombs(seed).values()]
    return valid, large, bad


async def load(url: str, pid: int, minutes: float, rps: float, bad_share: float, seed: int) -> list[dict]:
    import aiohttp

    valid, large, bad = inputs(seed)
    rng = random.Random(seed)
    records: list[tuple[float, str, int, float]] = []  # (done at, kind, status, seconds)
    rss: list[tuple[float, float]] = []  # (at, MB), every RSS_EVERY_S
    rows: list[dict] = []
    start = time.monotonic()
    end = start + minutes * 60

    async def one(session: aiohttp.ClientSession, kind: str, body: bytes) -> None:
        t = time.monotonic()
        try:
            async with session.post(f"{url}/classify", data=body, headers={"Content-Type": "image/jpeg"}) as r:
                await r.read()
                status = r.status
        except (aiohttp.ClientError, asyncio.TimeoutError):
            status = 0
        records.append((time.monotonic(), kind, status, time.monotonic() - t))

    def report(minute: int) -> None:
        lo, hi = start + (minute - 1) * 60, start + minute * 60
        done = [r for r in records if lo <= r[0] < hi]
        ok = [r[3] for r in done if r[1] == "valid" and r[2] == 200]
        sampled = [mb for at, mb in rss if lo <= at < hi] or [tree_rss_mb(pid)]
        # The median of the minute's samples: one sample lands on a large decode now and then (+100 MB for a
        # moment); growth is judged on what memory settles back to. The peak is reported beside it.
        row = {"minute": minute, "requests": len(done), "rss_mb": round(float(np.median(sampled)), 1),
               "rss_max_mb": round(max(sampled), 1),
               "valid_p50_ms": round(pct(ok, 50), 1) if ok else None,
               "valid_p99_ms": round(pct(ok, 99), 1) if ok else None,
               "valid_failed": sum(r[1] != "bad" and r[2] != 200 for r in done),
               "bad_4xx": sum(r[1] == "bad" and 400 <= r[2] < 500 for r in done),
               "5xx_or_dropped": sum(r[2] >= 500 or r[2] == 0 for r in done)}
        rows.append(row)
        print("  ".join(f"{k} {v}" for k, v in row.items()), flush=True)

    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(limit=256)) as session:
        tasks: set[asyncio.Task] = set()
        i, minute = 0, 1
        while (now := time.monotonic()) < end:
            if not rss or now - rss[-1][0] >= RSS_EVERY_S:
                rss.append((now, tree_rss_mb(pid)))
            if now >= start + minute * 60:
                report(minute)
                minute += 1
            due = start + i / rps
            if due > now:
                await asyncio.sleep(min(due - now, 0.05))
                continue
            roll = rng.random()
            if roll < bad_share:
                kind, body = "bad", rng.choice(bad)
            elif roll < bad_share + 0.02:
                kind, body = "large", rng.choice(large)
            else:
                kind, body = "valid", rng.choice(valid)
            task = asyncio.create_task(one(session, kind, body))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        await asyncio.gather(*tasks)
        if minute <= minutes:
            report(minute)
    return rows


def growth(rows: list[dict], base_minute: int = 5) -> tuple[int, float]:
    """(the minute compared from, RSS growth from it to the last minute); from minute 1 in runs under 6 minutes."""
    base = base_minute if len(rows) > base_minute else 1
    first, last = rows[base - 1]["rss_mb"], rows[-1]["rss_mb"]
    return base, (last - first) / first


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, help="start a server on this registry")
    p.add_argument("--url")
    p.add_argument("--pid", type=int, help="the running server's root process (with --url)")
    p.add_argument("--minutes", type=float, default=30)
    p.add_argument("--rps", type=float, default=20)
    p.add_argument("--bad", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    if bool(args.artifacts) == bool(args.url) or (args.url and not args.pid):
        p.error("give --artifacts DIR, or --url and --pid")

    def run(url: str, pid: int) -> list[dict]:
        print(f"soak: {args.minutes:g} min at {args.rps:g} req/s, {args.bad:.0%} bad inputs, server pid {pid}",
              flush=True)
        print(f"rss at start: {tree_rss_mb(pid):.1f} MB", flush=True)
        return asyncio.run(load(url, pid, args.minutes, args.rps, args.bad, args.seed))

    if args.url:
        rows = run(args.url, args.pid)
    else:
        port = free_port()
        cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1",
               "--port", str(port)]
        # The 15 MP PNG is 39 MB: a body limit above it, so that it is decoded (the memory this soak watches)
        # rather than refused unread by the default 10 MB limit. Its load stands for many clients from one
        # address: no refusal throttle.
        env = {"ARTIFACTS_DIR": str(args.artifacts), "BENTOML_DISABLE_GPU_ALLOCATION": "1",
               "MAX_BODY_BYTES": str(64 << 20), "REFUSAL_RATE": "0"}
        log = Path(os.environ.get("TMPDIR", "/tmp")) / f"soak-server-{port}.log"
        with server(cmd, port, env, log) as url:
            rows = run(url, find_server_pid(port))
        print(f"server log: {log}")
    base, g = growth(rows)
    failed = sum(r["valid_failed"] + r["5xx_or_dropped"] for r in rows)
    print(f"RSS minute {base} -> {len(rows)}: {rows[base - 1]['rss_mb']} -> {rows[-1]['rss_mb']} MB "
          f"({g:+.1%}; target < +10% from minute 5); failed valid requests and 5xx: {failed}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "growth": g, "from_minute": base}, indent=2) + "\n")


if __name__ == "__main__":
    main()
