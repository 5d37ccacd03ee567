"""Batch inference throughput: the local engine end to end vs ONNX Runtime alone, measured in the same run.

    python -m bench.bench_batch [--artifacts DIR] [--model current] [--data DIR] [--json FILE]

``job``: ``service.batch``'s local engine on the photos (read files, decode, preprocess, ONNX, write + fsync rows),
model load excluded. ``model only``: the same ONNX session on the same images already preprocessed into tensors,
same batch size. ``decode only``: the decoding threads alone, for profiling. Each is measured ``--rounds`` times,
alternating, and the medians are reported; the target is job / model-only >= 0.9.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from imgcls.onnx_model import OnnxClassifier
from imgcls.registry import ModelError, Registry
from service.batch import Failure, Options, ResultsFile, find_inputs, load_one, run_local

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "catsdogs" / "test"
TARGET_RATIO = 0.9


def model_only(model: OnnxClassifier, tensors: np.ndarray, batch_size: int) -> float:
    """Images per second of ``model.predict`` over ``tensors`` in batches of ``batch_size``."""
    start = time.perf_counter()
    for i in range(0, len(tensors), batch_size):
        model.predict(tensors[i:i + batch_size])
    return len(tensors) / (time.perf_counter() - start)


def decode_only(paths: list[str], model: OnnxClassifier, workers: int) -> float:
    """Images per second of decoding + preprocessing alone, in ``workers`` threads."""
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda p: load_one(p, model.preprocess), paths))
    return len(paths) / (time.perf_counter() - start)


def job(paths: list[str], model: OnnxClassifier, opts: Options) -> float:
    """Images per second of the local batch engine writing a fresh results file."""
    with tempfile.TemporaryDirectory() as tmp:
        with ResultsFile(Path(tmp) / "results.jsonl") as out:
            start = time.perf_counter()
            run_local(paths, model, out, opts)
            elapsed = time.perf_counter() - start
            assert len(out.done) == len(paths)
    return len(paths) / elapsed


def measure(args: argparse.Namespace) -> dict:
    """Run every measurement ``args.rounds`` times (alternating) and return the figures."""
    model = OnnxClassifier(Registry(args.artifacts).resolve(args.model), device="cpu", threads=args.threads)
    paths = find_inputs(str(args.data))
    loaded = [load_one(p, model.preprocess) for p in paths]
    bad = [p for p, x in zip(paths, loaded) if isinstance(x, Failure)]
    if bad:
        raise SystemExit(f"{len(bad)} unreadable images in {args.data}, e.g. {bad[0]}")
    tensors = np.stack(loaded)
    model.warmup((args.batch_size, len(tensors) % args.batch_size or args.batch_size))
    opts = Options(batch_size=args.batch_size, workers=args.workers, threads=args.threads, prefetch=args.prefetch,
                   device="cpu", progress=False)
    runs: dict[str, list[float]] = {"model_only": [], "job": [], "decode_only": []}
    for _ in range(args.rounds):
        runs["model_only"].append(model_only(model, tensors, args.batch_size))
        runs["job"].append(job(paths, model, opts))
        runs["decode_only"].append(decode_only(paths, model, args.workers))
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "images": len(paths), "data": str(args.data), "model_version": model.version,
        "batch_size": args.batch_size, "decode_workers": args.workers, "ort_threads": args.threads or "default",
        "prefetch_batches": args.prefetch, "rounds": args.rounds, "cpus": os.cpu_count(),
        "job_images_per_s": round(med["job"], 1), "model_only_images_per_s": round(med["model_only"], 1),
        "decode_only_images_per_s": round(med["decode_only"], 1),
        "ratio": round(med["job"] / med["model_only"], 3), "target_ratio": TARGET_RATIO,
        "all_rounds": {k: [round(x, 1) for x in v] for k, v in runs.items()},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=None, help="registry folder (default: $ARTIFACTS_DIR or ./artifacts)")
    p.add_argument("--model", default="current")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder of photos")
    p.add_argument("--batch-size", type=int, default=Options.batch_size)
    p.add_argument("--workers", type=int, default=Options.workers, help="decoding threads")
    p.add_argument("--threads", type=int, default=Options.threads, help="ONNX Runtime threads (default: per core)")
    p.add_argument("--prefetch", type=int, default=Options.prefetch)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = p.parse_args(argv)
    if not args.data.is_dir():
        print(f"error: {args.data} is not a folder of photos", file=sys.stderr)
        return 2
    try:
        r = measure(args)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"batch inference, {r['images']} images from {r['data']}, model {r['model_version']}")
    print(f"  batch size {r['batch_size']}, {r['decode_workers']} decode threads, ORT threads {r['ort_threads']}, "
          f"prefetch {r['prefetch_batches']} batches, {r['cpus']} CPUs, median of {r['rounds']} rounds")
    print(f"  job (local engine):   {r['job_images_per_s']:8.1f} images/s   rounds {r['all_rounds']['job']}")
    print(f"  model only (ONNX):    {r['model_only_images_per_s']:8.1f} images/s   rounds {r['all_rounds']['model_only']}")
    print(f"  decode only:          {r['decode_only_images_per_s']:8.1f} images/s   rounds {r['all_rounds']['decode_only']}")
    verdict = "meets" if r["ratio"] >= TARGET_RATIO else "is UNDER"
    print(f"  ratio job / model-only: {r['ratio']:.3f} ({verdict} the target {TARGET_RATIO})")
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
