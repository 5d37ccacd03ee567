"""This service against its peers, side by side: the same photos, load generator, model and CPU, in one run.

    python -m bench.bench_peers [--model current] [--artifacts DIR] [--duration 20] [--clients 16,64] [--rounds 1]
                                [--peers service-fp32,service-int8,bentoml-example,litserve,rayserve,torchserve]
                                [--json bench/results/peers.json]

Each server starts in turn as a subprocess, is warmed up, answers one non-image (its status is recorded), then
takes ``--duration`` seconds of load from ``bench.common.load`` at each client count: multipart uploads of the
project's test photos in the form field ``image``. Every peer but TorchServe serves the version's ``model.onnx``
with the project's decoding and preprocessing (ONNX Runtime threads = cores, batches of up to 32 within 5 ms);
TorchServe runs the version's torch checkpoint in its image-classifier handler. On a shared machine use
``--rounds 3``: each server runs that many times, in alternating order, and its median round is reported.
``--json`` also draws a chart beside the JSON file (``bench/plot_peers.py``).
Target (printed): this service >= 2x the best peer's requests/s at equal or lower p99. Also printed: the in-process
ceiling, this project's pipeline with no HTTP at all (measured last, in the same run), against the best peer: no
server with this model on this machine can pass it.
"""
from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import load, test_photos
from imgcls.registry import PROJECT_ROOT as ROOT
from imgcls.registry import Registry
from tests.live_server import free_port
from tests.live_server import server_process as server

FIELD = "image"  # every server takes the photo as this multipart form field
TORCHSERVE_DIR = ROOT / "bench" / "peers" / "torchserve"
TARGET_RATIO = 2.0


@dataclass
class Launch:
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    probe: str = "/readyz"


@dataclass(frozen=True)
class Peer:
    name: str
    framework: str  # the distribution whose version the results record
    model_file: str  # what it runs
    path: str  # the endpoint the photos are posted to
    launch: Callable[[Path, int, Path], Launch]  # (model version folder, port, scratch folder)
    ours: bool = False


def _service(variant: str) -> Callable[[Path, int, Path], Launch]:
    def launch(model_dir: Path, port: int, _: Path) -> Launch:
        env = {"ARTIFACTS_DIR": str(model_dir.parent.parent), "MODEL": str(model_dir), "MODEL_VARIANT": variant,
               "MODEL_POLL_S": "0", "BENTOML_DISABLE_GPU_ALLOCATION": "1"}
        return Launch([sys.executable, "-m", "cli", "serve",
                       "--host", "127.0.0.1", "--port", str(port)], env)
    return launch


def _peer_env(model_dir: Path, port: int) -> dict[str, str]:
    return {"PEER_MODEL_DIR": str(model_dir), "PEER_PORT": str(port), "PYTHONPATH": str(ROOT)}


def _bentoml_example(model_dir: Path, port: int, _: Path) -> Launch:
    return Launch([sys.executable, "-m", "bentoml", "serve", "bench.peers.bentoml_example:BentoExample",
                   "--host", "127.0.0.1", "--port", str(port)],
                  {**_peer_env(model_dir, port), "BENTOML_DISABLE_GPU_ALLOCATION": "1"})


def _litserve(model_dir: Path, port: int, _: Path) -> Launch:
    return Launch([sys.executable, "-m", "bench.peers.litserve_server"], _peer_env(model_dir, port), "/health")


def _rayserve(model_dir: Path, port: int, _: Path) -> Launch:
    return Launch([sys.executable, "-m", "bench.peers.rayserve_server"],
                  {**_peer_env(model_dir, port), "RAY_USAGE_STATS_ENABLED": "0"}, "/classify")


def _torchserve(model_dir: Path, port: int, scratch: Path) -> Launch:
    """Archive the version's checkpoint + metadata with the handler, and a config on free ports."""
    bin_dir = Path(sys.executable).parent
    store = scratch / "model-store"
    store.mkdir()
    subprocess.run([str(bin_dir / "torch-model-archiver"), "--model-name", "imgcls", "--version", "1.0",
                    "--handler", str(TORCHSERVE_DIR / "handler.py"),
                    "--serialized-file", str(model_dir / "checkpoint.pt"),
                    "--extra-files", str(model_dir / "metadata.json"), "--export-path", str(store)], check=True)
    config = scratch / "config.properties"
    config.write_text((TORCHSERVE_DIR / "config.properties").read_text() + "\n".join([
        f"inference_address=http://127.0.0.1:{port}", f"management_address=http://127.0.0.1:{free_port()}",
        f"metrics_address=http://127.0.0.1:{free_port()}", f"model_store={store}", "load_models=imgcls.mar", ""]))
    return Launch([str(bin_dir / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth",
                   "--ts-config", str(config), "--model-store", str(store)],
                  # Idle OpenMP threads sleep, as the ONNX peers' intra-op threads do (allow_spinning=0): with
                  # spinning, 2 torch threads on 2 busy cores took 8 s for one image instead of 0.2 s.
                  # TMPDIR: its launcher keeps a pid file there and refuses to start while that pid lives (the
                  # previous TorchServe's JVM, still exiting, or another user's).
                  {"PYTHONPATH": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", "TMPDIR": str(scratch),
                   "LOG_LOCATION": str(scratch / "logs"), "METRICS_LOCATION": str(scratch / "logs")}, "/ping")


PEERS = [
    Peer("service-fp32", "bentoml", "model.onnx", "/classify", _service("fp32"), ours=True),
    Peer("service-int8", "bentoml", "model.int8.onnx", "/classify", _service("int8"), ours=True),
    Peer("bentoml-example", "bentoml", "model.onnx", "/classify", _bentoml_example),
    Peer("litserve", "litserve", "model.onnx", "/classify", _litserve),
    Peer("rayserve", "ray", "model.onnx", "/classify", _rayserve),
    Peer("torchserve", "torchserve", "checkpoint.pt (torch eager)", "/predictions/imgcls", _torchserve),
]


def non_image_answer(url: str) -> dict:
    """What the server answers to bytes that are not an image, uploaded as a JPEG."""
    r = httpx.post(url, files={FIELD: ("not-an-image.jpg", b"not an image", "image/jpeg")}, timeout=60)
    return {"status": r.status_code, "body": r.text[:200]}


def wait_until_serving(url: str, body: bytes, timeout: float = 120) -> None:
    """Some servers are 'up' before their model is: post a real photo until it gets a 200."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.post(url, files={FIELD: ("photo.jpg", body, "image/jpeg")}, timeout=60)
            if r.status_code == 200:
                return
            detail = f"{r.status_code} {r.text[:200]}"
        except httpx.TransportError as e:
            detail = repr(e)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} never answered a photo with 200: {detail}")
        time.sleep(0.5)


def measure(peer: Peer, model_dir: Path, bodies: list[bytes], clients: list[int], duration: float,
            logs: Path) -> dict:
    """Start ``peer``, record its non-image status and its load results at each client count."""
    result: dict = {"name": peer.name, "framework": f"{peer.framework} {importlib.metadata.version(peer.framework)}",
                    "model_file": peer.model_file, "request": f"POST {peer.path}, multipart field '{FIELD}'"}
    if peer.ours and peer.name.endswith("int8") and not (model_dir / "model.int8.onnx").is_file():
        return {**result, "available": False, "reason": f"{model_dir.name} has no model.int8.onnx"}
    scratch = Path(tempfile.mkdtemp(prefix=f"peer-{peer.name}-"))
    port = free_port()
    try:
        launch = peer.launch(model_dir, port, scratch)
        started = time.monotonic()
        with server(launch.cmd, port, launch.env, logs / f"{peer.name}.log", probe=launch.probe,
                    timeout=300) as base:
            url = base + peer.path
            wait_until_serving(url, bodies[0])
            result["startup_s"] = time.monotonic() - started
            if peer.ours:
                info = httpx.get(f"{base}/model", timeout=30).json()
                result["served_model"] = {k: info[k] for k in ("version", "variant", "runtime") if k in info}
                # A service that ignores MODEL_VARIANT would serve fp32 under the int8 name: say so.
                result["variant_confirmed"] = peer.name.split("-")[1] in json.dumps(info)
            result["non_image"] = non_image_answer(url)
            rps = load(base, bodies, clients[0], 4 * clients[0], path=peer.path, field=FIELD)["rps"]  # warm-up
            for n in clients:
                total = max(2 * n, round(rps * duration))
                run = load(base, bodies, n, total, path=peer.path, field=FIELD)
                result[f"clients_{n}"] = run
                rps = run["rps"]
                print(f"  {peer.name:16} {n:3} clients: {run['rps']:7.1f} req/s  p50 {run['p50_ms']:7.1f} ms  "
                      f"p99 {run['p99_ms']:7.1f} ms  failures {run['failures']}", flush=True)
        return {**result, "available": True}
    except Exception as e:  # noqa: BLE001 - one peer failing to start must not lose the others' figures
        print(f"  {peer.name}: FAILED {e}", file=sys.stderr, flush=True)
        return {**result, "available": False, "reason": f"{type(e).__name__}: {str(e)[-2000:]}"}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def median_round(rounds: list[dict], clients: list[int]) -> dict:
    """One peer's rounds as one result: at each client count the round with the (lower) median requests/s (its
    latencies with it), and every round's requests/s beside it."""
    ran = [r for r in rounds if r.get("available")]
    if not ran:
        return rounds[-1]
    merged = {**ran[-1], "rounds": len(ran)}
    for n in clients:
        runs = sorted((r[f"clients_{n}"] for r in ran), key=lambda run: run["rps"])
        merged[f"clients_{n}"] = {**runs[(len(runs) - 1) // 2], "rounds_rps": [run["rps"] for run in runs]}
    return merged


def target_checks(peers: list[dict], clients: list[int]) -> list[dict]:
    """For each client count and variant of ours: the ratio to the best peer's requests/s, and both p99s."""
    checks = []
    for n in clients:
        key = f"clients_{n}"
        others = [p for p in peers if p.get("available") and not p["name"].startswith("service-") and key in p]
        if not others:
            continue
        best = max(others, key=lambda p: p[key]["rps"])
        for ours in (p for p in peers if p.get("available") and p["name"].startswith("service-") and key in p):
            ratio = ours[key]["rps"] / best[key]["rps"]
            checks.append({"clients": n, "service": ours["name"], "best_peer": best["name"], "ratio": ratio,
                           "p99_ms": ours[key]["p99_ms"], "best_peer_p99_ms": best[key]["p99_ms"],
                           "met": ratio >= TARGET_RATIO and ours[key]["p99_ms"] <= best[key]["p99_ms"]})
    return checks


def in_process_ceiling(model_dir: Path, batch_sizes: tuple[int, ...] = (8, 16, 32)) -> dict:
    """The most any HTTP server could serve with this model on this machine: the project's decoding, preprocessing
    and ONNX Runtime (the variant ``auto`` picks, as the service does) with no HTTP at all, at its best batch size."""
    from bench.bench_serving import in_process_throughput
    from imgcls.onnx_model import OnnxClassifier

    model = OnnxClassifier(model_dir, device="auto")
    model.warmup()
    by_size = {b: in_process_throughput(model, test_photos(), b, 1500) for b in batch_sizes}
    best = max(by_size, key=by_size.get)
    return {"variant": model.variant, "batch_size": best, "images_per_s": by_size[best],
            "images_per_s_by_batch_size": by_size}


def table(peers: list[dict], clients: list[int]) -> str:
    """The results as a markdown table."""
    head = "| server | model | " + " | ".join(f"req/s @{n} | p50 / p99 ms @{n}" for n in clients) + \
        " | non-image |\n|---|---|" + "---|---|" * len(clients) + "---|\n"
    rows = []
    for p in peers:
        if not p.get("available"):
            rows.append(f"| {p['name']} ({p['framework']}) | {p['model_file']} | " + "n/a | " * 2 * len(clients)
                        + f"not run: {p['reason'][:80]} |")
            continue
        cells = [f"{p[f'clients_{n}']['rps']:.1f} | {p[f'clients_{n}']['p50_ms']:.0f} / "
                 f"{p[f'clients_{n}']['p99_ms']:.0f}" for n in clients]
        rows.append(f"| {p['name']} ({p['framework']}) | {p['model_file']} | " + " | ".join(cells)
                    + f" | {p['non_image']['status']} |")
    return head + "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="current")
    p.add_argument("--artifacts", type=Path)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per server and client count")
    p.add_argument("--clients", default="16,64")
    p.add_argument("--rounds", type=int, default=1,
                   help="run every server this many times (alternating order) and keep the median round")
    p.add_argument("--peers", default=",".join(peer.name for peer in PEERS))
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    chosen = args.peers.split(",")
    unknown = set(chosen) - {peer.name for peer in PEERS}
    if unknown:
        p.error(f"unknown peers {sorted(unknown)}; known: {[peer.name for peer in PEERS]}")
    clients = [int(n) for n in args.clients.split(",")]
    model_dir = Registry(args.artifacts).resolve(args.model)
    bodies = [path.read_bytes() for path in test_photos()]
    logs = Path(tempfile.gettempdir()) / "bench_peers"
    logs.mkdir(exist_ok=True)
    load_before = os.getloadavg()[0]
    print(f"model {model_dir.name}, {os.cpu_count()} CPUs, load average {load_before:.1f}, "
          f"{len(bodies)} photos, {args.duration:.0f} s per run; server logs in {logs}", flush=True)
    started = time.time()
    order = [peer for peer in PEERS if peer.name in chosen]
    rounds: dict[str, list[dict]] = {peer.name: [] for peer in order}
    for r in range(args.rounds):  # every other round in reverse, so no server always runs early or late
        for peer in order if r % 2 == 0 else order[::-1]:
            rounds[peer.name].append(measure(peer, model_dir, bodies, clients, args.duration, logs))
    peers = [median_round(rounds[peer.name], clients) for peer in order]
    checks = target_checks(peers, clients)
    ceiling = in_process_ceiling(model_dir)
    results = {"model": model_dir.name, "cpus": os.cpu_count(), "duration_s": args.duration, "clients": clients,
               "rounds": args.rounds,
               "photos": len(bodies), "load_average_before": load_before,
               "run_minutes": (time.time() - started) / 60, "peers": peers, "targets": checks,
               "in_process_ceiling": ceiling}

    print("\n" + table(peers, clients) + "\n")
    for c in checks:
        print(f"{c['service']} / {c['best_peer']} at {c['clients']} clients: {c['ratio']:.2f}x requests/s "
              f"(target >= {TARGET_RATIO:.0f}x), p99 {c['p99_ms']:.0f} vs {c['best_peer_p99_ms']:.0f} ms: "
              f"{'met' if c['met'] else 'NOT met'}")
    for n, name in {c["clients"]: c["best_peer"] for c in checks}.items():
        rps = next(p[f"clients_{n}"]["rps"] for p in peers if p["name"] == name)
        print(f"in-process ceiling (no HTTP: decode + preprocess + ONNX Runtime {ceiling['variant']}, batch "
              f"{ceiling['batch_size']}): {ceiling['images_per_s']:.1f} img/s = {ceiling['images_per_s'] / rps:.2f}x "
              f"{name} at {n} clients (a server can at most reach this)")
    for peer in peers:
        if peer.get("available") and peer.get("variant_confirmed") is False:
            print(f"note: {peer['name']}'s /model does not name its variant: check it served what MODEL_VARIANT asked")
    if args.json:
        from bench.plot_peers import draw

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        draw(results, args.json.with_suffix(".png"))


if __name__ == "__main__":
    main()
