"""What the review queue costs the request path: the same server and photos with the queue off, and on with every
answer kept (``REVIEW_SAMPLE=1``, the worst case: each request hands its photo to the writer), in the same run.

    python -m bench.bench_review [--artifacts DIR] [--clients 16] [--requests 600] [--rounds 3]

Prints requests/s and p50/p99 latency of both, and the ratios on/off of the median round (rounds alternate the
order). Also how many photos the queue kept and dropped (the writer's hand-off is bounded: a busy writer drops).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import httpx

from bench.common import load, test_photos
from imgcls.registry import Registry
from tests.live_server import free_port, metric, server_process


def serve_and_load(env: dict[str, str], bodies: list[bytes], clients: int, requests: int, name: str) -> dict:
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"bench_review_{name}.log"
    cmd = [sys.executable, "-m", "cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
    with server_process(cmd, port, env, log) as url:
        load(url, bodies[:64], clients, 128)  # warm-up
        before = httpx.get(f"{url}/metrics").text
        result = load(url, bodies, clients, requests)
        after = httpx.get(f"{url}/metrics").text
    for key, series in (("queued", "imgcls_review_queued_total"), ("dropped", "imgcls_review_dropped_total")):
        result[key] = metric(after, series) - metric(before, series)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=600)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    registry = Registry(args.artifacts)
    bodies = [path.read_bytes() for path in test_photos()]
    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        base = {"ARTIFACTS_DIR": str(registry.root), "MODEL_POLL_S": "0", "BENTOML_DISABLE_GPU_ALLOCATION": "1"}
        settings = {"off": base, "on": {**base, "REVIEW_DIR": str(Path(tmp) / "queue"), "REVIEW_SAMPLE": "1",
                                        "REVIEW_MAX_ITEMS": "500"}}
        for r in range(args.rounds):
            row = {}
            for name in (("off", "on") if r % 2 == 0 else ("on", "off")):
                row[name] = serve_and_load(settings[name], bodies, args.clients, args.requests, name)
            row["rps_on_vs_off"] = row["on"]["rps"] / row["off"]["rps"]
            row["p50_on_vs_off"] = row["on"]["p50_ms"] / row["off"]["p50_ms"]
            rounds.append(row)
            print(f"round {r + 1}: off {row['off']['rps']:.1f} req/s (p50 {row['off']['p50_ms']:.1f} ms), on "
                  f"{row['on']['rps']:.1f} req/s (p50 {row['on']['p50_ms']:.1f} ms), queued {row['on']['queued']:.0f}"
                  f", dropped {row['on']['dropped']:.0f}: on/off {row['rps_on_vs_off']:.3f}", flush=True)
    median = sorted(rounds, key=lambda row: row["rps_on_vs_off"])[len(rounds) // 2]
    print(f"median round: queue on / off throughput {median['rps_on_vs_off']:.3f}, p50 latency "
          f"{median['p50_on_vs_off']:.3f}, p99 {median['on']['p99_ms'] / median['off']['p99_ms']:.3f} "
          f"({args.clients} clients, {args.requests} requests, every answer offered to the queue)")
    if args.json:
        args.json.write_text(json.dumps({"rounds": rounds, "median": median}, indent=2) + "\n")


if __name__ == "__main__":
    main()
