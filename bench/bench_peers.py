"""This service against its peers, side by side: the same photos, load generator, model file and CPU, in one run.

    python -m bench.bench_peers [--model current] [--artifacts DIR] [--duration 20] [--clients 16,64] [--rounds 2]
                                [--peers service,bentoml-example,litserve] [--pin 0 --pin 0,1]
                                [--service-env NAME:K=V,K=V] [--json bench/results/peers.json]

Servers: ``service`` (``imgcls serve`` as it starts by default: one worker per usable CPU), ``service-1worker``
(``WORKERS=1``), ``bentoml-example``, ``litserve``, ``rayserve``, ``torchserve``
(their pins: the ``peers`` extra); ``--service-env`` adds the service with other settings, to measure one in the
same run.

Each server starts in turn as a subprocess, is warmed up, answers one non-image (its status is recorded), then
takes ``--duration`` seconds of load from ``bench.common.load`` at each client count: multipart uploads of the
project's test photos in the form field ``image``. Every ONNX server runs the same file: the variant the service's
``MODEL_VARIANT=auto`` picks on this machine (int8 on a VNNI/AMX CPU), with the project's decoding and preprocessing
(ONNX Runtime threads = cores, batches of up to 32 within 5 ms); TorchServe runs the version's torch checkpoint.
Beside requests/s and latencies: the server's CPU per request, the utime + stime of its whole process tree (read
from ``/proc`` before and after the load), and the in-process pipeline's CPU per image (``bench/pipeline.py``:
decode, preprocess, ONNX Runtime at its best batch size, no HTTP; measured last in the same run, as one process
with ONNX Runtime's threads on every core, and as one process per CPU with one thread each, the service's layout).
Every figure is also a ratio to LitServe's in the same run (and the same ``--pin``). ``--rounds N``: each server
runs N times in alternating order and its (lower) median round is reported. ``--pin CPUS`` (repeatable): every
server runs once per CPU list under ``taskset -c CPUS``, and the load generator on the same CPUs (it needs CPU too:
left on a CPU the server may not use, it would flatter the one-CPU runs). The machine's load average before and
after goes into the JSON (a shared machine moves these figures).
``--json`` also draws a chart beside the JSON file (``bench/plot_peers.py``).
Targets (printed): this service >= 1.0x LitServe's requests/s at p99 no worse; its CPU per request <= 1.1x the
in-process pipeline's CPU per image (both forms); with several ``--pin`` lists, each layout's requests/s against the
first's.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bench.common import load, test_photos
from bench.pipeline import in_process, per_cpu
from bench.proc_cpu import TAG, cpu_seconds_between, tree_ticks
from imgcls.metadata import ModelCard
from imgcls.onnx_model import available_variants, choose_variant, cpu_has_int8_dot
from imgcls.registry import PROJECT_ROOT as ROOT
from imgcls.registry import VARIANT_FILES, Registry
from tests.live_server import free_port
from tests.live_server import server_process as server

FIELD = "image"  # every server takes the photo as this multipart form field
TORCHSERVE_DIR = ROOT / "bench" / "peers" / "torchserve"
BASELINE = "litserve"
TARGET_RPS_RATIO = 1.0  # this service's requests/s against LitServe's, p99 no worse
TARGET_CPU_RATIO = 1.1  # this service's CPU per request against the in-process pipeline's per image


@dataclass
class Launch:
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    probe: str = "/readyz"


@dataclass(frozen=True)
class Peer:
    name: str
    framework: str  # the distribution whose version the results record
    path: str  # the endpoint the photos are posted to
    launch: Callable[[Path, int, Path, str], Launch]  # (model version folder, port, scratch folder, variant)
    ours: bool = False
    onnx: bool = True  # runs the ONNX variant file (TorchServe runs the torch checkpoint)


def _service(target: str | None = None, **env: str) -> Callable[[Path, int, Path, str], Launch]:
    """``imgcls serve [target]`` as a user starts it (``MODEL_VARIANT`` left to ``auto``), with ``env`` on top."""
    def launch(model_dir: Path, port: int, _: Path, __: str) -> Launch:
        base = {"ARTIFACTS_DIR": str(model_dir.parent.parent), "MODEL": str(model_dir), "MODEL_POLL_S": "0",
                "BENTOML_DISABLE_GPU_ALLOCATION": "1"}
        return Launch([sys.executable, "-m", "cli", "serve", *([target] if target else []),
                       "--host", "127.0.0.1", "--port", str(port)], {**base, **env})
    return launch


def _peer_env(model_dir: Path, port: int, variant: str) -> dict[str, str]:
    return {"PEER_MODEL_DIR": str(model_dir), "PEER_PORT": str(port), "PEER_VARIANT": variant,
            "PYTHONPATH": str(ROOT)}


def _bentoml_example(model_dir: Path, port: int, _: Path, variant: str) -> Launch:
    return Launch([sys.executable, "-m", "bentoml", "serve", "bench.peers.bentoml_example:BentoExample",
                   "--host", "127.0.0.1", "--port", str(port)],
                  {**_peer_env(model_dir, port, variant), "BENTOML_DISABLE_GPU_ALLOCATION": "1"})


def _litserve(model_dir: Path, port: int, _: Path, variant: str) -> Launch:
    return Launch([sys.executable, "-m", "bench.peers.litserve_server"], _peer_env(model_dir, port, variant),
                  "/health")


def _rayserve(model_dir: Path, port: int, _: Path, variant: str) -> Launch:
    return Launch([sys.executable, "-m", "bench.peers.rayserve_server"],
                  {**_peer_env(model_dir, port, variant), "RAY_USAGE_STATS_ENABLED": "0"}, "/classify")


def _torchserve(model_dir: Path, port: int, scratch: Path, _: str) -> Launch:
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
    Peer("service", "bentoml", "/classify", _service(), ours=True),
    # One worker whose ONNX Runtime threads use every core (the default before issue 23)
    Peer("service-1worker", "bentoml", "/classify", _service(WORKERS="1"), ours=True),
    Peer("bentoml-example", "bentoml", "/classify", _bentoml_example),
    Peer("litserve", "litserve", "/classify", _litserve),
    Peer("rayserve", "ray", "/classify", _rayserve),
    Peer("torchserve", "torchserve", "/predictions/imgcls", _torchserve, onnx=False),
]
DEFAULT_PEERS = ("service", "bentoml-example", "litserve")


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "(not installed)"  # the server then fails to start, and its row says why


def auto_variant(model_dir: Path) -> str:
    """The variant the service's ``MODEL_VARIANT=auto`` serves from ``model_dir`` on this machine's CPU."""
    return choose_variant("auto", available_variants(model_dir, ModelCard.load(model_dir)), False,
                          cpu_has_int8_dot())


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


def loaded(base: str, bodies: list[bytes], clients: int, total: int, path: str, tag: str) -> dict:
    """``bench.common.load`` with the server tree's CPU seconds around it, per request in ms."""
    before = tree_ticks(tag)
    run = load(base, bodies, clients, total, path=path, field=FIELD)
    cpu_s = cpu_seconds_between(before, tree_ticks(tag))
    return {**run, "server_cpu_s": cpu_s, "cpu_ms_per_request": 1000 * cpu_s / total}


@contextlib.contextmanager
def load_generator_on(cpus: str | None):
    """This thread (the load generator's event loop) on ``cpus`` (``taskset -c`` syntax: "0", "0,1") meanwhile."""
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, {int(c) for c in cpus.split(",")})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def measure(peer: Peer, model_dir: Path, variant: str, bodies: list[bytes], clients: list[int], duration: float,
            logs: Path, pin: str | None = None) -> dict:
    """Start ``peer`` (under ``taskset -c pin`` if given), record its non-image status and its load results at each
    client count."""
    name = peer.name if pin is None else f"{peer.name}@cpu{pin}"
    result: dict = {"name": name, "peer": peer.name, "pinned_cpus": pin,
                    "framework": f"{peer.framework} {_version(peer.framework)}",
                    "model_file": VARIANT_FILES[variant] if peer.onnx else "checkpoint.pt (torch eager)",
                    "request": f"POST {peer.path}, multipart field '{FIELD}'"}
    scratch = Path(tempfile.mkdtemp(prefix=f"peer-{peer.name}-"))
    port = free_port()
    tag = uuid.uuid4().hex
    try:
        launch = peer.launch(model_dir, port, scratch, variant)
        cmd = launch.cmd if pin is None else ["taskset", "-c", pin, *launch.cmd]
        started = time.monotonic()
        with contextlib.ExitStack() as stack:
            base = stack.enter_context(server(cmd, port, {**launch.env, TAG: tag}, logs / f"{name}.log",
                                              probe=launch.probe, timeout=300))
            url = base + peer.path
            wait_until_serving(url, bodies[0])
            result["startup_s"] = time.monotonic() - started
            if peer.ours:
                info = httpx.get(f"{base}/model", timeout=30).json()
                result["served_model"] = {k: info[k] for k in ("version", "variant", "runtime") if k in info}
                # The peers were fed the file auto is expected to pick: a service that picked another would make
                # the comparison unfair, so say so.
                result["variant_confirmed"] = (info.get("runtime") or info).get("variant") == variant
            result["non_image"] = non_image_answer(url)
            stack.enter_context(load_generator_on(pin))
            rps = load(base, bodies, clients[0], 4 * clients[0], path=peer.path, field=FIELD)["rps"]  # warm-up
            for n in clients:
                total = max(2 * n, round(rps * duration))
                run = loaded(base, bodies, n, total, peer.path, tag)
                result[f"clients_{n}"] = run
                rps = run["rps"]
                print(f"  {name:24} {n:3} clients: {run['rps']:7.1f} req/s  p50 {run['p50_ms']:7.1f} ms  "
                      f"p99 {run['p99_ms']:7.1f} ms  CPU {run['cpu_ms_per_request']:5.2f} ms/request  "
                      f"failures {run['failures']}", flush=True)
        return {**result, "available": True}
    except Exception as e:  # noqa: BLE001 - one peer failing to start must not lose the others' figures
        print(f"  {name}: FAILED {e}", file=sys.stderr, flush=True)
        return {**result, "available": False, "reason": f"{type(e).__name__}: {str(e)[-2000:]}"}
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def median_round(rounds: list[dict], clients: list[int]) -> dict:
    """One server's rounds as one result: at each client count the round with the (lower) median requests/s (its
    latencies and CPU with it), and every round's requests/s and CPU per request beside it."""
    ran = [r for r in rounds if r.get("available")]
    if not ran:
        return rounds[-1]
    merged = {**ran[-1], "rounds": len(ran)}
    for n in clients:
        runs = sorted((r[f"clients_{n}"] for r in ran), key=lambda run: run["rps"])
        merged[f"clients_{n}"] = {**runs[(len(runs) - 1) // 2], "rounds_rps": [run["rps"] for run in runs],
                                  "rounds_cpu_ms_per_request": [run["cpu_ms_per_request"] for run in runs]}
    return merged


def against_baseline(servers: list[dict], clients: list[int]) -> None:
    """Add to each server, at each client count, its requests/s, p99 and CPU per request over LitServe's (same
    pinning, same run)."""
    for s in servers:
        base = next((b for b in servers if b["peer"] == BASELINE and b["pinned_cpus"] == s["pinned_cpus"]
                     and b.get("available")), None)
        if base is None or not s.get("available"):
            continue
        for n in clients:
            ours, theirs = s[f"clients_{n}"], base[f"clients_{n}"]
            ours[f"vs_{BASELINE}"] = {"rps": ours["rps"] / theirs["rps"], "p99": ours["p99_ms"] / theirs["p99_ms"],
                                      "cpu_per_request": ours["cpu_ms_per_request"] / theirs["cpu_ms_per_request"]}


def target_checks(servers: list[dict], clients: list[int], pipelines: dict[str, float]) -> list[str]:
    """The issue's targets, one printed line each."""
    lines = []
    ours = [s for s in servers if s.get("available") and s["peer"].startswith("service")]
    for s in ours:
        for n in clients:
            run = s[f"clients_{n}"]
            vs = run.get(f"vs_{BASELINE}")
            if vs:
                met = vs["rps"] >= TARGET_RPS_RATIO and vs["p99"] <= 1.0
                lines.append(f"{s['name']} / {BASELINE} at {n} clients: {vs['rps']:.2f}x requests/s (target >= "
                             f"{TARGET_RPS_RATIO:.1f}x), p99 {vs['p99']:.2f}x (target <= 1.0x): "
                             f"{'met' if met else 'NOT met'}")
            for form, cpu_ms in pipelines.items():
                cpu = run["cpu_ms_per_request"] / cpu_ms
                lines.append(f"{s['name']} at {n} clients: CPU per request {run['cpu_ms_per_request']:.2f} ms = "
                             f"{cpu:.2f}x the in-process pipeline's per image ({form}; target <= "
                             f"{TARGET_CPU_RATIO}x): {'met' if cpu <= TARGET_CPU_RATIO else 'NOT met'}")
    pins = list(dict.fromkeys(s["pinned_cpus"] for s in servers))
    if len(pins) > 1:
        for s in (s for s in servers if s.get("available") and s["pinned_cpus"] != pins[0]):
            first = next((b for b in servers if b["peer"] == s["peer"] and b["pinned_cpus"] == pins[0]
                          and b.get("available")), None)
            for n in clients if first else ():
                ratio = s[f"clients_{n}"]["rps"] / first[f"clients_{n}"]["rps"]
                lines.append(f"{s['peer']} at {n} clients on CPUs {s['pinned_cpus']} / on CPUs {pins[0]}: "
                             f"{ratio:.2f}x requests/s")
    return lines


def table(servers: list[dict], clients: list[int]) -> str:
    """The results as a markdown table."""
    head = "| server | model | " + " | ".join(
        f"req/s @{n} | p50 / p99 ms @{n} | CPU ms/req @{n} | vs {BASELINE} (req/s, p99, CPU) @{n}" for n in clients) \
        + " | non-image |\n|---|---|" + "---|---|---|---|" * len(clients) + "---|\n"
    rows = []
    for p in servers:
        if not p.get("available"):
            rows.append(f"| {p['name']} ({p['framework']}) | {p['model_file']} | " + "n/a | " * 4 * len(clients)
                        + f"not run: {p['reason'][:80]} |")
            continue
        cells = []
        for n in clients:
            run = p[f"clients_{n}"]
            vs = run.get(f"vs_{BASELINE}")
            ratios = f"{vs['rps']:.2f}x, {vs['p99']:.2f}x, {vs['cpu_per_request']:.2f}x" if vs else "n/a"
            cells.append(f"{run['rps']:.1f} | {run['p50_ms']:.0f} / {run['p99_ms']:.0f} | "
                         f"{run['cpu_ms_per_request']:.2f} | {ratios}")
        rows.append(f"| {p['name']} ({p['framework']}) | {p['model_file']} | " + " | ".join(cells)
                    + f" | {p['non_image']['status']} |")
    return head + "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="current")
    p.add_argument("--artifacts", type=Path)
    p.add_argument("--duration", type=float, default=20.0, help="seconds of load per server and client count")
    p.add_argument("--clients", default="16,64")
    p.add_argument("--rounds", type=int, default=2,
                   help="run every server this many times (alternating order) and keep the median round")
    p.add_argument("--peers", default=",".join(DEFAULT_PEERS), help=f"of {', '.join(peer.name for peer in PEERS)}")
    p.add_argument("--service-env", action="append", default=[], metavar="NAME:K=V[,K=V]",
                   help="also run this service as service-NAME with these settings (to measure one in the same run)")
    p.add_argument("--pin", action="append", metavar="CPUS",
                   help="run every server under `taskset -c CPUS` (repeat to compare layouts in one run)")
    p.add_argument("--pipeline-images", type=int, default=1500, help="images per batch size in the pipeline's runs")
    p.add_argument("--json", type=Path)
    args = p.parse_args()

    for spec in args.service_env:
        name, _, settings = spec.partition(":")
        PEERS.append(Peer(f"service-{name}", "bentoml", "/classify",
                          _service(**dict(kv.split("=", 1) for kv in settings.split(",") if kv)), ours=True))
    chosen = args.peers.split(",") + [f"service-{spec.partition(':')[0]}" for spec in args.service_env]
    unknown = set(chosen) - {peer.name for peer in PEERS}
    if unknown:
        p.error(f"unknown peers {sorted(unknown)}; known: {[peer.name for peer in PEERS]}")
    clients = [int(n) for n in args.clients.split(",")]
    model_dir = Registry(args.artifacts).resolve(args.model)
    variant = auto_variant(model_dir)
    bodies = [path.read_bytes() for path in test_photos()]
    logs = Path(tempfile.gettempdir()) / "bench_peers"
    logs.mkdir(exist_ok=True)
    load_before = os.getloadavg()
    print(f"model {model_dir.name}, every ONNX server on {VARIANT_FILES[variant]} (what MODEL_VARIANT=auto picks "
          f"here), {os.cpu_count()} CPUs, load average {load_before[0]:.1f}, {len(bodies)} photos, "
          f"{args.duration:.0f} s per run; server logs in {logs}", flush=True)
    started = time.time()
    runs = [(peer, pin) for pin in (args.pin or [None]) for peer in PEERS if peer.name in chosen]
    rounds: dict[int, list[dict]] = {i: [] for i in range(len(runs))}
    for r in range(args.rounds):  # every other round in reverse, so no server always runs early or late
        for i in range(len(runs)) if r % 2 == 0 else reversed(range(len(runs))):
            peer, pin = runs[i]
            result = measure(peer, model_dir, variant, bodies, clients, args.duration, logs, pin)
            if not result["available"] and "already in use" in result["reason"]:
                # another process (BentoML's own control sockets, another job) took the free port first
                result = measure(peer, model_dir, variant, bodies, clients, args.duration, logs, pin)
            rounds[i].append(result)
    servers = [median_round(rounds[i], clients) for i in range(len(runs))]
    against_baseline(servers, clients)
    pipeline = in_process(model_dir, variant, total=args.pipeline_images)
    pipeline_per_cpu = per_cpu(model_dir, variant, total=args.pipeline_images)
    checks = target_checks(servers, clients, {"one process": pipeline["cpu_ms_per_image"],
                                              "one process per CPU": pipeline_per_cpu["cpu_ms_per_image"]})
    results = {"model": model_dir.name, "model_file": VARIANT_FILES[variant], "cpus": os.cpu_count(),
               "duration_s": args.duration, "clients": clients, "rounds": args.rounds, "photos": len(bodies),
               "load_average_before": load_before, "load_average_after": os.getloadavg(),
               "run_minutes": (time.time() - started) / 60, "peers": servers, "targets": checks,
               "in_process_pipeline": pipeline, "in_process_pipeline_per_cpu": pipeline_per_cpu}

    print("\n" + table(servers, clients) + "\n")
    print(f"in-process pipeline (no HTTP: decode + preprocess + ONNX Runtime, {pipeline['model_file']}, batch "
          f"{pipeline['batch_size']}): {pipeline['images_per_s']:.1f} img/s, {pipeline['cpu_ms_per_image']:.2f} ms "
          f"of CPU per image; one process per CPU ({pipeline_per_cpu['processes']}, one thread each): "
          f"{pipeline_per_cpu['images_per_s']:.1f} img/s, {pipeline_per_cpu['cpu_ms_per_image']:.2f} ms per image")
    for line in checks:
        print(line)
    print(f"load average (1 min) before {load_before[0]:.1f}, after {results['load_average_after'][0]:.1f}")
    for s in servers:
        if s.get("available") and s.get("variant_confirmed") is False:
            print(f"note: {s['name']} served {s.get('served_model')}, not {variant}: the comparison is not fair")
    if args.json:
        from bench.plot_peers import draw

        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
        draw(results, args.json.with_suffix(".png"))


if __name__ == "__main__":
    main()
