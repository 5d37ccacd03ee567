"""Batch inference throughput: the local engine end to end vs ONNX Runtime alone, measured in the same run.

    python -m bench.bench_batch [--artifacts DIR] [--model current] [--data DIR] [--rounds 3] [--json FILE]

- job: ``imgcls.batch``'s local engine on the photos (read, decode, preprocess, ONNX, write + fsync the rows),
  model loading excluded.
- model only: ONNX Runtime on the same images already preprocessed into tensors, same batch size, same session.
- decode only: the decoding threads alone (``imgcls.loader``).

Each round measures them back to back, the ratio job / model-only is taken within each round (both sides then see
the same load on a shared machine) and the medians are reported. The target is a ratio >= 0.9. The CPU time per
image of the model and of decoding gives the best ratio these cores allow when both must run on them.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import DATA
from imgcls.batch import Options, ResultsFile, find_inputs, run_local
from imgcls.loader import preprocessed_batches
from imgcls.onnx_model import OnnxClassifier
from imgcls.registry import ModelError, Registry

DEFAULT_DATA = DATA / "test"
TARGET_RATIO = 0.9


def timed(fn: Callable[[], int]) -> tuple[float, float]:
    """Run ``fn`` (which returns how many images it handled); images per second and process CPU ms per image."""
    wall, cpu = time.perf_counter(), time.process_time()
    n = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return n / wall, cpu * 1000 / n


def model_only(model: OnnxClassifier, tensors: np.ndarray, batch_size: int) -> int:
    """``model.predict`` over ``tensors`` in batches of ``batch_size``."""
    for i in range(0, len(tensors), batch_size):
        model.predict(tensors[i:i + batch_size])
    return len(tensors)


def decode_only(paths: list[str], model: OnnxClassifier, workers: int) -> int:
    """Decoding + preprocessing alone, in ``workers`` threads."""
    for _ in preprocessed_batches(paths, model.preprocess, workers=workers):
        pass
    return len(paths)


def job(paths: list[str], model: OnnxClassifier, opts: Options) -> int:
    """The local batch engine writing a fresh results file."""
    with tempfile.TemporaryDirectory() as tmp, ResultsFile(Path(tmp) / "results.jsonl") as out:
        run_local(paths, model, out, opts)
        assert len(out.done) == len(paths)
    return len(paths)


def measure(args: argparse.Namespace) -> dict:
    """Run every measurement ``args.rounds`` times (alternating) and return the figures."""
    model_dir = Registry(args.artifacts).resolve(args.model)
    model = OnnxClassifier(model_dir, device="cpu", threads=args.threads)
    paths = find_inputs(str(args.data))
    batches = list(preprocessed_batches(paths, model.preprocess, len(paths)))
    if batches[0][2]:
        raise SystemExit(f"{len(batches[0][2])} unreadable images in {args.data}: {batches[0][2]}")
    tensors = batches[0][1]
    model.warmup((args.batch_size, len(tensors) % args.batch_size or args.batch_size))
    opts = Options(batch_size=args.batch_size, workers=args.workers, threads=args.threads, prefetch=args.prefetch,
                   decode_nice=args.decode_nice, device="cpu", progress=False)
    cpus = len(os.sched_getaffinity(0))
    runs: dict[str, list[float]] = {k: [] for k in (
        "job", "model_only", "decode_only", "ratio",
        "model_cpu_ms", "decode_cpu_ms", "ceiling")}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        reference, model_cpu = timed(lambda: model_only(model, tensors, args.batch_size))
        job_rate, _ = timed(lambda: job(paths, model, opts))
        decode_rate, decode_cpu = timed(lambda: decode_only(paths, model, args.workers))
        for key, value in [("job", job_rate), ("model_only", reference), ("decode_only", decode_rate),
                           ("ratio", job_rate / reference), ("model_cpu_ms", model_cpu),
                           ("decode_cpu_ms", decode_cpu),
                           # all the work on all the cores, at best: cpus / (model + decode CPU time per image)
                           ("ceiling", min(1.0, cpus * 1000 / (model_cpu + decode_cpu) / reference))]:
            runs[key].append(value)
    med = {k: statistics.median(v) for k, v in runs.items()}
    return {
        "images": len(paths), "data": str(args.data), "model_version": model.version, "cpus": cpus,
        "batch_size": args.batch_size, "decode_workers": args.workers, "ort_threads": args.threads or "default",
        "prefetch_batches": args.prefetch, "decode_nice": args.decode_nice, "rounds": args.rounds,
        "job_images_per_s": round(med["job"], 1), "model_only_images_per_s": round(med["model_only"], 1),
        "decode_only_images_per_s": round(med["decode_only"], 1),
        "ratio": round(med["ratio"], 3), "target_ratio": TARGET_RATIO,
        "model_cpu_ms_per_image": round(med["model_cpu_ms"], 2),
        "decode_cpu_ms_per_image": round(med["decode_cpu_ms"], 2),
        "ratio_ceiling_on_these_cores": round(med["ceiling"], 3),
        "all_rounds": {k: [round(x, 3 if k in ("ratio", "ceiling") else 1) for x in v] for k, v in runs.items()},
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def report(r: dict) -> str:
    rounds = r["all_rounds"]
    verdict = "meets" if r["ratio"] >= TARGET_RATIO else "is UNDER"
    return "\n".join([
        f"batch inference, {r['images']} images from {r['data']}, model {r['model_version']}",
        f"  batch size {r['batch_size']}, {r['decode_workers']} decode threads (nice +{r['decode_nice']}), "
        f"ORT threads {r['ort_threads']}, prefetch {r['prefetch_batches']} batches, {r['cpus']} CPUs, "
        f"median of {r['rounds']} rounds",
        f"  load average (1 min) before / after: {r['load_average_1min'][0]} / {r['load_average_1min'][1]}",
        f"  job (local engine):     {r['job_images_per_s']:7.1f} images/s   rounds {rounds['job']}",
        f"  model only (ONNX):      {r['model_only_images_per_s']:7.1f} images/s   rounds {rounds['model_only']}",
        f"  decode only:            {r['decode_only_images_per_s']:7.1f} images/s   rounds {rounds['decode_only']}",
        f"  ratio job / model-only: {r['ratio']:.3f} ({verdict} the target {TARGET_RATIO})   rounds {rounds['ratio']}",
        f"  CPU per image: model {r['model_cpu_ms_per_image']} ms, decode + preprocess "
        f"{r['decode_cpu_ms_per_image']} ms -> the best ratio {r['cpus']} CPUs allow: "
        f"{r['ratio_ceiling_on_these_cores']:.3f}",
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_batch", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=None,
                   help="registry folder (default: $ARTIFACTS_DIR or ./artifacts)")
    p.add_argument("--model", default="current")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder of photos")
    p.add_argument("--batch-size", type=int, default=Options.batch_size)
    p.add_argument("--workers", type=int, default=Options.workers, help="decoding threads")
    p.add_argument("--threads", type=int, default=Options.threads, help="ONNX Runtime threads (default: per core)")
    p.add_argument("--prefetch", type=int, default=Options.prefetch)
    p.add_argument("--decode-nice", type=int, default=Options.decode_nice)
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
    print(report(r))
    if args.json:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
