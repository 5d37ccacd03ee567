"""The in-process pipeline: what any HTTP server could serve with a model file here, and what it costs.

    python -m bench.pipeline MODEL_DIR VARIANT [--threads N] [--workers N] [--batch-sizes 4,8,16,32] [--total 1500]

The project's decoding and preprocessing (``--workers`` threads) and ONNX Runtime (``--threads`` intra-op threads)
over the test photos, with no HTTP at all, at each batch size; prints JSON with the best batch size's images/s and
this process's CPU per image. :func:`per_cpu` runs one such process per usable CPU, each pinned to its CPU with one
thread of each (the layout the service's workers have), at once.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from imgcls.cpus import usable_cpus
from imgcls.registry import PROJECT_ROOT, VARIANT_FILES

__all__ = ["in_process", "per_cpu"]


def in_process(model_dir: Path, variant: str, threads: int | None = None, workers: int = 2,
               batch_sizes: tuple[int, ...] = (4, 8, 16, 32), total: int = 1500) -> dict:
    """Images/s and CPU ms per image at the best of ``batch_sizes`` (``threads``: ONNX Runtime's, default one per
    usable CPU)."""
    from threadpoolctl import threadpool_limits

    from bench.common import test_photos
    from imgcls.loader import preprocessed_batches
    from imgcls.onnx_model import OnnxClassifier

    threadpool_limits(1, user_api="blas")  # as the service does: numpy's BLAS threads would spin on every core
    model = OnnxClassifier(model_dir, device="cpu", variant=variant, threads=threads)
    model.warmup()
    photos = test_photos()
    by_size, cpu_by_size = {}, {}
    for b in batch_sizes:
        paths = (photos * (total // len(photos) + 1))[:total]
        cpu, start = time.process_time(), time.perf_counter()
        for _, batch, _ in preprocessed_batches(paths, model.preprocess, batch_size=b, workers=workers):
            model.classify(batch)  # what the service computes: probabilities and novelty
        by_size[b] = total / (time.perf_counter() - start)
        cpu_by_size[b] = 1000 * (time.process_time() - cpu) / total
    best = max(by_size, key=by_size.get)
    return {"variant": model.variant, "model_file": VARIANT_FILES[model.variant], "batch_size": best,
            "ort_threads": threads or usable_cpus(), "decode_threads": workers,
            "images_per_s": by_size[best], "cpu_ms_per_image": cpu_by_size[best],
            "images_per_s_by_batch_size": by_size, "cpu_ms_per_image_by_batch_size": cpu_by_size}


def per_cpu(model_dir: Path, variant: str, batch_sizes: tuple[int, ...] = (4, 8, 16, 32), total: int = 1500,
            cpus: list[int] | None = None) -> dict:
    """One pipeline process per usable CPU (or per CPU of ``cpus``) at once, each pinned to its CPU with one ONNX
    Runtime thread and one decoding thread: their images/s summed, their CPU per image averaged."""
    cpus = cpus or sorted(os.sched_getaffinity(0))
    cmd = [sys.executable, "-m", "bench.pipeline", str(model_dir), variant, "--threads", "1", "--workers", "1",
           "--batch-sizes", ",".join(map(str, batch_sizes)), "--total", str(total)]
    procs = [subprocess.Popen(["taskset", "-c", str(cpu), *cmd], cwd=PROJECT_ROOT, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}) for cpu in cpus]
    runs = [json.loads(p.communicate()[0]) for p in procs]
    return {"variant": runs[0]["variant"], "model_file": runs[0]["model_file"], "processes": len(runs),
            "batch_size": [r["batch_size"] for r in runs], "ort_threads": 1, "decode_threads": 1,
            "images_per_s": sum(r["images_per_s"] for r in runs),
            "cpu_ms_per_image": sum(r["cpu_ms_per_image"] for r in runs) / len(runs)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_dir", type=Path)
    p.add_argument("variant")
    p.add_argument("--threads", type=int)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-sizes", default="4,8,16,32")
    p.add_argument("--total", type=int, default=1500, help="images per batch size")
    args = p.parse_args()
    sizes = tuple(int(b) for b in args.batch_sizes.split(","))
    print(json.dumps(in_process(args.model_dir, args.variant, args.threads, args.workers, sizes, args.total)))


if __name__ == "__main__":
    main()
