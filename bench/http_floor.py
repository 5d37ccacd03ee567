"""The CPU one request costs outside the model, framework by framework, beside the service and the pipeline.

    python -m bench.http_floor [--artifacts DIR] [--clients 16] [--requests 3000] [--rounds 2] [--cpu 0]
                               [--json OUT]

Each server runs as one process (one worker) pinned to ``--cpu`` (``taskset``), loaded with ``--clients`` clients
posting the test photos as multipart uploads (``bench.common.load``, the load generator left on the other CPUs);
its process tree's CPU time per request is read from ``/proc``. The servers (``bench/peers/no_model.py``): Starlette's
form parser under uvicorn, LitServe, a BentoML endpoint shaped like ``/classify`` on BentoML's ``Path`` type, and
this service's HTTP path (its upload type and ASGI layers), all answering a fixed classification without a model;
then the service itself (``WORKERS=1``) and the in-process pipeline (one ONNX Runtime thread, one decoding thread)
pinned to the same CPU, on the served file.
Rounds alternate the order; each figure is the median over rounds. What the service spends beyond the pipeline's
CPU per image is compared with what its framework spends with no model at all.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import uuid
from pathlib import Path

from bench.bench_peers import FIELD, auto_variant, loaded
from bench.common import test_photos
from bench.pipeline import per_cpu
from bench.proc_cpu import TAG
from imgcls.registry import PROJECT_ROOT, Registry
from tests.live_server import free_port
from tests.live_server import server_process as server

NO_MODEL = {  # name -> (command after python, probe)
    "starlette": (["-m", "uvicorn", "bench.peers.no_model:starlette_app", "--no-access-log", "--loop", "uvloop",
                   "--http", "httptools"], "/readyz"),
    "litserve": (["-m", "bench.peers.litserve_no_model"], "/health"),
    "bentoml (Path upload)": (["-m", "bentoml", "serve", "bench.peers.no_model:BentoNoModel"], "/readyz"),
    "service path, no model": (["-m", "bentoml", "serve", "bench.peers.no_model:ServicePathNoModel"], "/readyz"),
}


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--artifacts", type=Path, default=Path("artifacts"))
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--requests", type=int, default=3000, help="per server per round")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--cpu", default="0", help="the CPU every server and the pipeline are pinned to")
    p.add_argument("--json", type=Path, help="write the figures here")
    return p


def _serve(name: str, cmd: list[str], probe: str, env: dict[str, str], bodies: list[bytes], args, logs: Path) -> dict:
    port, tag = free_port(), uuid.uuid4().hex
    if cmd[1] in ("uvicorn", "bentoml", "cli"):
        cmd = [*cmd, "--host", "127.0.0.1", "--port", str(port)]
    full = ["taskset", "-c", args.cpu, sys.executable, *cmd]
    env = {"PEER_PORT": str(port), "PYTHONPATH": str(PROJECT_ROOT), "BENTOML_DISABLE_GPU_ALLOCATION": "1",
           "BENTOML_HOME": str(logs / "bentoml"), **env}
    with server(full, port, {**env, TAG: tag}, logs / f"{name.replace(' ', '_')}.log", probe=probe, timeout=300) \
            as url:
        loaded(url, bodies, args.clients, 4 * args.clients, "/classify", tag)  # warm-up
        run = loaded(url, bodies, args.clients, args.requests, "/classify", tag)
    print(f"  {name:24} {run['rps']:7.1f} req/s  p50 {run['p50_ms']:6.1f} ms  CPU {run['cpu_ms_per_request']:5.2f} "
          f"ms/request  failures {run['failures']}", flush=True)
    return run


def _pipeline(model_dir: Path, variant: str, cpu: str) -> dict:
    run = per_cpu(model_dir, variant, batch_sizes=(4, 8, 32), total=1200, cpus=[int(cpu)])
    print(f"  {'pipeline (in process)':24} {run['images_per_s']:7.1f} img/s  CPU {run['cpu_ms_per_image']:5.2f} "
          f"ms/image at batch {run['batch_size'][0]}", flush=True)
    return run


def main(args: argparse.Namespace) -> dict:
    registry = Registry(args.artifacts)
    model_dir = registry.resolve("current")
    variant = auto_variant(model_dir)  # what the service serves, and the pipeline runs
    bodies = [p.read_bytes() for p in test_photos()]
    logs = Path(tempfile.mkdtemp(prefix="http-floor-"))
    service_env = {"ARTIFACTS_DIR": str(registry.root), "MODEL": str(model_dir), "MODEL_POLL_S": "0", "WORKERS": "1"}
    servers = [*((name, cmd, probe, {}) for name, (cmd, probe) in NO_MODEL.items()),
               ("service (WORKERS=1)", ["-m", "cli", "serve"], "/readyz", service_env)]
    figures: dict[str, list[dict]] = {name: [] for name, *_ in servers}
    figures["pipeline"] = []
    try:
        for r in range(args.rounds):
            print(f"round {r + 1} ({FIELD!r} uploads, {args.clients} clients, pinned to CPU {args.cpu})", flush=True)
            for name, cmd, probe, env in (servers if r % 2 == 0 else servers[::-1]):
                figures[name].append(_serve(name, cmd, probe, env, bodies, args, logs))
            figures["pipeline"].append(_pipeline(model_dir, variant, args.cpu))
    finally:
        shutil.rmtree(logs, ignore_errors=True)
    cpu = {name: statistics.median(run.get("cpu_ms_per_request", run.get("cpu_ms_per_image")) for run in runs)
           for name, runs in figures.items()}
    pipeline, service = cpu["pipeline"], cpu["service (WORKERS=1)"]
    print(f"\nCPU ms per request, median of {args.rounds} rounds (pinned to CPU {args.cpu}):")
    for name, ms in cpu.items():
        print(f"  {name:24} {ms:5.2f}")
    print(f"service beyond the pipeline: {service - pipeline:.2f} ms ({service / pipeline:.2f}x the pipeline); "
          f"its HTTP path with no model: {cpu['service path, no model']:.2f} ms; "
          f"the pipeline + that floor: {(pipeline + cpu['service path, no model']) / pipeline:.2f}x the pipeline")
    result = {"cpu_ms": cpu, "runs": figures, "clients": args.clients, "requests": args.requests,
              "rounds": args.rounds, "pinned_cpu": args.cpu, "variant": variant,
              "load_average": os.getloadavg()}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(get_args_parser().parse_args())
