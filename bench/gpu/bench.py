"""The GPU benchmarks, each figure beside its target: model-only images/s, the batch job, HTTP under load.

    python -m bench.gpu.bench --device cuda --artifacts .gpu/artifacts --photos .gpu/photos --out $OUT [--quick]

Writes ``gpu-<device>.json`` to ``--out`` as it goes (a section that fails records its error and the others still
run) naming the GPU (nvidia-smi), ONNX Runtime's providers as each session really uses them, and the variant.
``--quick`` (small batches, few requests) is how tests run it end to end on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.gpu.serving import http
from imgcls.registry import PROJECT_ROOT, Registry

# Issue 19's targets on one H200 (EfficientNet-Lite0).
TARGETS = {"model_only_fp16_b256_img_s": 20_000, "batch_job_img_s": 5_000, "http_256_rps": 3_000,
           "http_256_p99_ms": 100}
TRT_CACHE = Path("/tmp/gpu-bench/tensorrt")


def sh(cmd: list[str], timeout: float = 30) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unavailable: {e}"


def machine() -> dict[str, Any]:
    """The GPU, the driver and the software: what makes the figures comparable."""
    import onnxruntime as ort

    facts: dict[str, Any] = {
        "gpu": sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                   "--format=csv,noheader"]),
        "cpus": os.cpu_count(), "python": platform.python_version(), "onnxruntime": ort.__version__,
        "onnxruntime_available_providers": ort.get_available_providers(),
        "onnxruntime_package": "onnxruntime-gpu" if "CUDAExecutionProvider" in ort.get_available_providers()
        else "onnxruntime"}
    try:
        from nvidia import nvimgcodec
        facts["nvimgcodec"] = getattr(nvimgcodec, "__version__", "installed")
    except ImportError as e:
        facts["nvimgcodec"] = f"not installed: {e}"
    return facts


# -- model only ---------------------------------------------------------------------------------------------------

def timed(step: Callable[[], None], seconds: float, min_iters: int = 3) -> tuple[int, float]:
    """Runs ``step`` (after two warm-up calls) until ``seconds`` have passed and at least ``min_iters`` times."""
    step()
    step()
    n, start = 0, time.perf_counter()
    while n < min_iters or time.perf_counter() - start < seconds:
        step()
        n += 1
    return n, time.perf_counter() - start


def model_only(model_dir: Path, device: str, variant: str, batches: list[int], seconds: float,
               tensorrt: bool = False) -> dict[str, Any]:
    """Images/s at each batch size through the served class (:class:`OnnxClassifier`), fed from the host
    (``predict``: I/O binding on CUDA) and, on CUDA, also with the batch already on the device (the model's own
    speed). With ``tensorrt``, engines are built into an empty cache (the first run at each size times the build),
    then a second session is timed starting from the cache."""
    import onnxruntime as ort

    from imgcls.onnx_model import OnnxClassifier

    cache = TRT_CACHE if tensorrt else None
    if tensorrt:
        shutil.rmtree(TRT_CACHE, ignore_errors=True)
    start = time.perf_counter()
    clf = OnnxClassifier(model_dir, device=device, variant=variant, tensorrt_cache=cache)
    out: dict[str, Any] = {"variant": clf.variant, "providers": clf.providers, "tensorrt_asked": tensorrt,
                           "session_s": round(time.perf_counter() - start, 2), "batches": {}}
    s = clf.preprocess.input_size
    rng = np.random.default_rng(0)
    for n in batches:
        x = rng.standard_normal((n, 3, s, s), dtype=np.float32)
        first = time.perf_counter()
        clf.predict(x)  # with TensorRT: builds (or loads) the engine for this shape
        row: dict[str, Any] = {"first_run_s": round(time.perf_counter() - first, 3)}
        iters, wall = timed(lambda x=x: clf.predict(x), seconds)
        row["host_img_s"] = round(iters * n / wall, 1)
        row["host_batch_ms"] = round(wall / iters * 1000, 3)
        if clf.device == "cuda":
            on_device = ort.OrtValue.ortvalue_from_numpy(x, "cuda", 0)
            binding = clf.session.io_binding()
            binding.bind_ortvalue_input(clf.input_name, on_device)
            binding.bind_output("probabilities", "cuda")
            iters, wall = timed(lambda b=binding: clf.session.run_with_iobinding(b), seconds)
            row["device_img_s"] = round(iters * n / wall, 1)
            row["device_batch_ms"] = round(wall / iters * 1000, 3)
            feed = {clf.input_name: x}
            iters, wall = timed(lambda f=feed: clf.session.run(["probabilities"], f), seconds)
            row["session_run_img_s"] = round(iters * n / wall, 1)  # no I/O binding: for comparison
        out["batches"][str(n)] = row
    if tensorrt:
        del clf
        start = time.perf_counter()
        warm = OnnxClassifier(model_dir, device=device, variant=variant, tensorrt_cache=cache)
        warm.predict(np.zeros((batches[-1], 3, s, s), np.float32))
        out["start_from_engine_cache_s"] = round(time.perf_counter() - start, 2)
        out["engine_cache_files"] = sorted(p.name for p in TRT_CACHE.glob("*"))
    return out


# -- decoding alone -----------------------------------------------------------------------------------------------

def decoding(photos: Path, preprocess_of: Path, cuda: bool, workers: int, repeat: int) -> dict[str, Any]:
    """Decode + preprocess images/s over the photos (``repeat`` passes), no model: the CPU path (Pillow, ``workers``
    threads) against :class:`BatchDecoder` on nvImageCodec's CPU backend and, on CUDA, its GPU backend."""
    from imgcls.gpu_decode import BatchDecoder, GpuDecodeUnavailable, nvimgcodec_decoder
    from imgcls.loader import preprocessed_batches
    from imgcls.registry import verify

    pre = verify(preprocess_of).preprocessing
    paths = [str(p) for p in sorted(photos.rglob("*.jpg"))] * repeat
    out: dict[str, Any] = {"images": len(paths), "workers": workers}
    start = time.perf_counter()
    n = sum(len(ok) for ok, _, _ in preprocessed_batches(paths, pre, 256, workers, 2))
    out["cpu_pillow_img_s"] = round(n / (time.perf_counter() - start), 1)
    for backend in ("cpu", "gpu") if cuda else ("cpu",):
        try:
            decoder = BatchDecoder(pre, nvimgcodec_decoder(backend), workers=workers)
        except GpuDecodeUnavailable as e:
            out[f"nvimgcodec_{backend}"] = f"unavailable: {e}"
            continue
        try:
            start = time.perf_counter()
            n = sum(len(ok) for ok, _, _ in decoder.batches(paths, 256))
            out[f"nvimgcodec_{backend}_img_s"] = round(n / (time.perf_counter() - start), 1)
            out[f"nvimgcodec_{backend}_stats"] = dict(decoder.stats)
        finally:
            decoder.close()
    return out


# -- the batch job ------------------------------------------------------------------------------------------------

def repeated_photos(photos: Path, repeat: int, dest: Path) -> int:
    """``repeat`` copies (hard links where possible) of every photo under ``dest``, so the job reads distinct paths."""
    shutil.rmtree(dest, ignore_errors=True)
    files = sorted(photos.rglob("*.jpg"))
    for r in range(repeat):
        for f in files:
            target = dest / f"r{r:03d}" / f.parent.name / f.name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, target)
            except OSError:
                shutil.copy2(f, target)
    return repeat * len(files)


def batch_job(artifacts: Path, device: str, photos: Path, repeat: int, decode: str, batch_size: int,
              workers: int) -> dict[str, Any]:
    """``imgcls batch`` as a user runs it over the photos repeated; its own images/s, and the share of rows whose
    label is the photo's folder name."""
    work = Path("/tmp/gpu-bench") / f"batch-{decode}"
    n = repeated_photos(photos, repeat, work / "in")
    output = work / "out.jsonl"
    output.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "cli", "batch", "--input", str(work / "in"), "--output", str(output),
           "--artifacts", str(artifacts), "--device", device, "--decode", decode, "--batch-size", str(batch_size),
           "--workers", str(workers), "--no-progress"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    rate = re.search(r"([\d.]+) images/s", proc.stdout)
    right = sum(r["label"] == Path(r["path"]).parent.name for r in rows if r["label"])
    return {"decode": decode, "images": n, "rows": len(rows), "errors": sum(bool(r["error"]) for r in rows),
            "img_s": float(rate.group(1)) if rate else None, "wall_s_with_start": round(wall, 2),
            "label_matches_folder": round(right / max(1, len(rows)), 4), "batch_size": batch_size,
            "workers": workers, "stderr_tail": proc.stderr[-600:]}


# -- the run ------------------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.gpu.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--artifacts", type=Path, default=PROJECT_ROOT / ".gpu" / "artifacts")
    p.add_argument("--photos", type=Path, default=PROJECT_ROOT / ".gpu" / "photos")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--quick", action="store_true", help="small sizes: the plumbing, not the figures")
    p.add_argument("--only", nargs="*", default=["env", "model", "decode", "batch", "http"],
                   help="sections to run (env model decode batch http)")
    args = p.parse_args(argv)
    quick, cuda = args.quick, args.device == "cuda"
    args.out.mkdir(parents=True, exist_ok=True)
    model_dir = Registry(args.artifacts).resolve("current")
    cores = os.cpu_count() or 1
    result: dict[str, Any] = {"device": args.device, "quick": quick, "model": model_dir.name, "targets": TARGETS,
                              "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    path = args.out / f"gpu-{args.device}{'-quick' if quick else ''}.json"

    def section(name: str, fn: Callable[[], Any]) -> None:
        start = time.perf_counter()
        try:
            result[name] = fn()
        except Exception as e:  # noqa: BLE001 - one failed section must not lose the others' figures
            result[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
        print(f"[{name}] {time.perf_counter() - start:.1f} s: "
              f"{json.dumps(result[name], default=str)[:1500]}", flush=True)
        path.write_text(json.dumps(result, indent=1, default=str) + "\n")

    batches = [1, 8] if quick else [1, 8, 64, 256]
    seconds = 0.2 if quick else 1.5
    if "env" in args.only:
        section("machine", machine)
    if "model" in args.only:
        section("model_fp32", lambda: model_only(model_dir, args.device, "fp32", batches, seconds))
        section("model_fp16", lambda: model_only(model_dir, args.device, "fp16", batches, seconds))
    if "decode" in args.only:
        section("decoding", lambda: decoding(args.photos, model_dir, cuda, 2 if quick else cores, 1 if quick else 10))
    if "batch" in args.only:
        repeat, size, workers = (1, 8, 2) if quick else (30, 256, cores)
        section("batch_cpu_decode", lambda: batch_job(args.artifacts, args.device, args.photos, repeat, "cpu", size,
                                                      workers))
        if cuda:
            section("batch_gpu_decode", lambda: batch_job(args.artifacts, args.device, args.photos, repeat, "gpu",
                                                          size, workers))
    if "http" in args.only:
        clients, requests, procs = ([4, 8], 60, 2) if quick else ([64, 256], 60_000, max(2, cores // 4))
        server_env = {} if quick else {"MAX_BATCH_SIZE": "128", "MAX_QUEUE": "2048"}
        section("http", lambda: http(args.artifacts, args.device, args.photos, clients, requests, 15, procs,
                                     args.out / "server-http.log", {**server_env, "WORKERS": "1"}))
        # One Python process cannot use 16 cores (issue 23): the same with several workers, each its own session on
        # the GPU (half the cores: the load generator needs the others).
        workers = {**server_env, "WORKERS": str(max(2, cores // 2))}
        if "not ready in" in str(result["http"].get("error", "")):  # it would not come up either: a minute saved
            result["http_workers"] = {"error": "not run: the one-worker server did not come up (see http)"}
        else:
            section("http_workers", lambda: http(args.artifacts, args.device, args.photos, clients, requests, 15,
                                                 procs, args.out / "server-http_workers.log", workers))
    if "model" in args.only and cuda:  # last: building engines may take minutes, and every other figure is in
        section("model_tensorrt_fp16", lambda: model_only(model_dir, args.device, "fp16", batches, seconds,
                                                          tensorrt=True))
    result["against_targets"] = against_targets(result)
    result["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    path.write_text(json.dumps(result, indent=1, default=str) + "\n")
    print(json.dumps(result["against_targets"], indent=1))
    return 0


def against_targets(r: dict[str, Any]) -> dict[str, Any]:
    """Each target beside the figure measured for it (None where its section did not run or failed)."""
    def get(*keys: str) -> Any:
        node: Any = r
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        return node

    fp16 = get("model_fp16", "batches", "256", "device_img_s")
    trt = get("model_tensorrt_fp16", "batches", "256", "device_img_s")
    trt_used = "TensorrtExecutionProvider" in (get("model_tensorrt_fp16", "providers") or [])
    batch = max([x for x in (get("batch_gpu_decode", "img_s"), get("batch_cpu_decode", "img_s")) if x] or [None],
                key=lambda x: x or 0)
    at_256 = {name: next((x for x in (get(name, "loads") or []) if x["clients"] == 256), {})
              for name in ("http", "http_workers")}
    return {
        "model_only_fp16_b256_img_s": {"target": TARGETS["model_only_fp16_b256_img_s"], "cuda": fp16,
                                       "tensorrt": trt if trt_used else None, "tensorrt_in_use": trt_used},
        "batch_job_img_s": {"target": TARGETS["batch_job_img_s"], "measured": batch},
        "http_256_rps": {"target": TARGETS["http_256_rps"], **{k: v.get("rps") for k, v in at_256.items()}},
        "http_256_p99_ms": {"target": TARGETS["http_256_p99_ms"], **{k: v.get("p99_ms") for k, v in at_256.items()}},
    }


if __name__ == "__main__":
    sys.exit(main())
