"""HTTP serving against the in-process pipeline and a naive torch server, on the project's test photos.

    python -m bench.bench_serving [--model current] [--clients 16] [--requests 1500] [--rounds 3] [--json FILE]

Prints: throughput with N concurrent clients (our BentoML service; the
in-process pipeline, decode threads + ONNX Runtime, at each batch size in --batch-sizes, compared at its best; the
naive FastAPI + torch eager server) and unloaded single-request latency against in-process latency.
Targets: HTTP >= 0.8 x in-process at its best batch size, >= 2 x naive; unloaded p50 <= in-process p50 + 10 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import load, pct, test_photos
from imgcls.images import decode_image
from imgcls.loader import preprocessed_batches
from imgcls.onnx_model import OnnxClassifier
from imgcls.registry import Registry
from tests.live_server import free_port, metric, server_process

SERVICES = {"http": "service.service:ImageClassifier"}


def in_process_latency(model: OnnxClassifier, bodies: list[bytes]) -> list[float]:
    times = []
    for body in bodies:
        start = time.perf_counter()
        model.classify(model.preprocess(decode_image(body, draft_size=model.preprocess.resize_size))[None])
        times.append(time.perf_counter() - start)
    return times


def in_process_throughput(model: OnnxClassifier, paths: list[Path], batch_size: int, total: int) -> float:
    """Images/s of decode + preprocess (threads, prefetching) + ONNX Runtime at ``batch_size``."""
    paths = (paths * (total // len(paths) + 1))[:total]
    start = time.perf_counter()
    for _, batch, _ in preprocessed_batches(paths, model.preprocess, batch_size=batch_size, workers=2):
        model.classify(batch)  # what the service computes: probabilities and novelty
    return total / (time.perf_counter() - start)


def serve_and_load(target: str, name: str, env: dict[str, str], bodies: list[bytes], clients: int,
                   requests: int) -> dict:
    """Start ``imgcls serve target``, warm it up, time 100 lone requests, then ``requests`` from ``clients``."""
    port = free_port()
    log = Path(tempfile.gettempdir()) / f"bench_serving_{name}.log"
    cmd = [sys.executable, "-m", "cli", "serve", target, "--host", "127.0.0.1", "--port", str(port)]
    with server_process(cmd, port, env, log) as url:
        load(url, bodies[:64], clients, 128)  # warm-up
        unloaded = []
        with httpx.Client() as c:
            for body in bodies[:100]:
                start = time.perf_counter()
                c.post(f"{url}/classify", content=body, headers={"Content-Type": "image/jpeg"}).raise_for_status()
                unloaded.append(time.perf_counter() - start)
        before = httpx.get(f"{url}/metrics").text
        http = load(url, bodies, clients, requests)
        after = httpx.get(f"{url}/metrics").text
    batches = metric(after, "imgcls_model_batch_size_count") - metric(before, "imgcls_model_batch_size_count")
    images = metric(after, "imgcls_model_batch_size_sum") - metric(before, "imgcls_model_batch_size_sum")
    return {"service": target, **http, "mean_batch_size": images / batches, "unloaded_p50_ms": pct(unloaded, 50)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="current")
    p.add_argument("--artifacts", type=Path)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=1500, help="per measurement (longer runs: steadier figures)")
    p.add_argument("--batch-sizes", default="1,4,8,16,32", help="in-process batch sizes to try")
    p.add_argument("--rounds", type=int, default=3, help="measure everything this many times (alternating the "
                   "order of the servers); the round with the median ratio is reported")
    p.add_argument("--skip-naive", action="store_true")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    registry = Registry(args.artifacts)
    model_dir = registry.resolve(args.model)
    paths = test_photos()
    bodies = [path.read_bytes() for path in paths]
    model = OnnxClassifier(model_dir, device="auto")
    model.warmup()
    results: dict = {"model": model.version, "providers": model.providers, "cpus": os.cpu_count(),
                     "clients": args.clients}

    env = {"ARTIFACTS_DIR": str(registry.root), "MODEL": str(model_dir), "MODEL_POLL_S": "0",
           "BENTOML_DISABLE_GPU_ALLOCATION": "1"}
    names = list(SERVICES)
    rounds: list[dict] = []
    for r in range(args.rounds):  # each round measures everything once; the median round's figures are reported
        row: dict = {}
        for name in (names if r % 2 == 0 else names[::-1]):
            row[name] = serve_and_load(SERVICES[name], name, env, bodies, args.clients, args.requests)
        by_size = {int(b): in_process_throughput(model, paths, int(b), args.requests)
                   for b in args.batch_sizes.split(",")}
        best = max(by_size, key=by_size.get)
        row["in_process"] = {"batch_size": best, "images_per_s": by_size[best], "images_per_s_by_batch_size": by_size}
        row["http_vs_in_process"] = row[names[0]]["rps"] / by_size[best]
        rounds.append(row)
        print(f"round {r + 1}: " + ", ".join(f"{n} {row[n]['rps']:.1f} req/s" for n in names)
              + f", in-process {by_size[best]:.1f} img/s (batch {best}): ratio {row['http_vs_in_process']:.2f}",
              flush=True)
    median = sorted(rounds, key=lambda row: row["http_vs_in_process"])[len(rounds) // 2]
    results.update({name: median[name] for name in names})
    in_process_latency(model, bodies[:10])
    local = in_process_latency(model, bodies[:100])
    results["in_process"] = {**median["in_process"], "p50_ms": pct(local, 50)}
    results["rounds"] = [{"http_vs_in_process": row["http_vs_in_process"], **{n: row[n]["rps"] for n in names},
                          "in_process": row["in_process"]["images_per_s"]} for row in rounds]
    by_size, best = results["in_process"]["images_per_s_by_batch_size"], results["in_process"]["batch_size"]

    if not args.skip_naive:
        port = free_port()
        with server_process([sys.executable, "-m", "bench.naive_server", str(model_dir), str(port)], port) as url:
            load(url, bodies[:16], args.clients, 32)
            results["naive"] = load(url, bodies, args.clients, args.requests // 2)

    local_ips = results["in_process"]["images_per_s"]
    main_name = next(name for name in SERVICES if name in results)
    rps = results[main_name]["rps"]
    results["ratios"] = {"http_vs_in_process": rps / local_ips,  # of the median round
                         "unloaded_p50_minus_in_process_ms": results[main_name]["unloaded_p50_ms"] - pct(local, 50)}
    if "naive" in results:
        results["ratios"]["http_vs_naive"] = rps / results["naive"]["rps"]
    print(f"model {model.version} on {model.providers[0]}, {os.cpu_count()} CPUs, {args.clients} clients")
    for name in (n for n in SERVICES if n in results):
        r = results[name]
        print(f"HTTP {name:12} {r['rps']:8.1f} req/s  (mean model batch {r['mean_batch_size']:.1f}, failures "
              f"{r['failures']}, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms; {r['service']})")
    print(f"in-process        {local_ips:8.1f} img/s  (best batch size {best}; by size: "
          + ", ".join(f"{b}: {v:.0f}" for b, v in by_size.items()) + ")")
    if "naive" in results:
        print(f"naive torch HTTP  {results['naive']['rps']:8.1f} req/s  (failures {results['naive']['failures']})")
    print(f"unloaded latency  p50 {results[main_name]['unloaded_p50_ms']:.1f} ms over HTTP vs "
          f"{pct(local, 50):.1f} ms in-process")
    for k, v in results["ratios"].items():
        print(f"{k:34} {v:.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
