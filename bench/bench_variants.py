"""Model variants side by side: the batch job with int8 against fp32 (and fp16 where it runs), in the same run.

    python -m bench.bench_variants [--artifacts DIR] [--model current] [--data DIR] [--rounds 3] [--json FILE]
    python -m bench.bench_variants --first-train [--train-data DIR]   # also: train from an empty artifacts folder

- job: ``imgcls.batch``'s local engine end to end (read, decode, preprocess, ONNX, write + fsync), per variant.
- model only: ONNX Runtime on the same images already preprocessed, per variant, batch 32.

Rounds alternate the variants, and each ratio is taken within a round (both sides then see the same load on a
shared machine); medians are reported. Target: batch job with int8 >= 1.6x the batch job with fp32. With
``--first-train``, ``python -m training train`` first runs from an empty artifacts folder with the default settings,
and its wall time and per-stage timings (from the version's metadata) are printed; the benchmark then uses that
model. The accuracy, log-loss and largest probability difference of each variant are the version's own, measured
at train time on the test split.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_batch import DEFAULT_DATA, job, model_only, timed
from bench.common import DATA
from imgcls.batch import Options, find_inputs
from imgcls.loader import preprocessed_batches
from imgcls.onnx_model import OnnxClassifier, available_variants, cpu_has_int8_dot
from imgcls.registry import ModelError, Registry

TARGET_INT8_SPEEDUP = 1.6
FIRST_TRAIN_TARGET_S = 90


def first_train(data: Path, artifacts: Path) -> dict:
    """``python -m training train`` from an empty ``artifacts``: wall time and the version's recorded timings."""
    cmd = [sys.executable, "-m", "training", "--artifacts", str(artifacts), "train", "--data", str(data)]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
    wall = time.perf_counter() - start
    meta = Registry(artifacts).metadata("current")
    return {"wall_s": round(wall, 1), "timings": meta["timings"], "version": meta["version"],
            "test_accuracy": meta["metrics"]["test"]["accuracy"], "test_log_loss": meta["metrics"]["test"]["log_loss"]}


def measure(args: argparse.Namespace) -> dict:
    model_dir = Registry(args.artifacts).resolve(args.model)
    card = Registry(args.artifacts).card(args.model)
    meta = card.to_dict()
    variants = [v for v in available_variants(model_dir, card) if v in args.variants]
    if "fp32" not in variants or len(variants) < 2:
        raise SystemExit(f"model {card.version} holds {available_variants(model_dir, card)}: nothing to compare "
                         "(train a new version: variants are built at train time)")
    models = {v: OnnxClassifier(model_dir, device="cpu", threads=args.threads, variant=v) for v in variants}
    paths = find_inputs(str(args.data))
    ((_, tensors, failures),) = list(preprocessed_batches(paths, models["fp32"].preprocess, len(paths)))
    if failures:
        raise SystemExit(f"{len(failures)} unreadable images in {args.data}")
    opts = Options(batch_size=args.batch_size, device="cpu", progress=False)
    for m in models.values():
        m.warmup((args.batch_size,))
    runs: dict[str, list[float]] = {}
    load_before = os.getloadavg()[0]
    for _ in range(args.rounds):
        for v, m in models.items():
            runs.setdefault(f"job_{v}", []).append(timed(lambda: job(paths, m, opts))[0])
            runs.setdefault(f"model_{v}", []).append(timed(lambda: model_only(m, tensors, args.batch_size))[0])
        for v in variants[1:]:
            runs.setdefault(f"job_ratio_{v}", []).append(runs[f"job_{v}"][-1] / runs["job_fp32"][-1])
            runs.setdefault(f"model_ratio_{v}", []).append(runs[f"model_{v}"][-1] / runs["model_fp32"][-1])
    recorded = {v: {k: meta["variants"][v].get(k) for k in ("accuracy", "log_loss", "max_abs_diff_probabilities")}
                for v in variants[1:]}
    recorded["fp32"] = {k: meta["metrics"]["test"][k] for k in ("accuracy", "log_loss")}
    return {
        "images": len(paths), "data": str(args.data), "model_version": meta["version"], "variants": variants,
        "cpu_has_vnni_or_amx": cpu_has_int8_dot(), "cpus": len(os.sched_getaffinity(0)),
        "batch_size": args.batch_size, "rounds": args.rounds, "target_int8_job_speedup": TARGET_INT8_SPEEDUP,
        "median": {k: round(statistics.median(v), 3 if "ratio" in k else 1) for k, v in runs.items()},
        "all_rounds": {k: [round(x, 3 if "ratio" in k else 1) for x in v] for k, v in runs.items()},
        "test_metrics_recorded_at_train_time": recorded,
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
    }


def report(r: dict) -> str:
    med, rounds = r["median"], r["all_rounds"]
    lines = [f"model variants, {r['images']} images from {r['data']}, model {r['model_version']}",
             f"  batch size {r['batch_size']}, {r['cpus']} CPUs (VNNI/AMX: {r['cpu_has_vnni_or_amx']}), "
             f"median of {r['rounds']} rounds; load average before / after: {r['load_average_1min']}"]
    for v in r["variants"]:
        m = r["test_metrics_recorded_at_train_time"][v]
        diff = f", max |p - p_fp32| {m['max_abs_diff_probabilities']:.1e}" if v != "fp32" else ""
        lines.append(f"  {v:5} batch job {med[f'job_{v}']:7.1f} images/s   model only {med[f'model_{v}']:7.1f} "
                     f"images/s   test accuracy {m['accuracy']:.4f}, log-loss {m['log_loss']:.4f}{diff}")
    for v in r["variants"][1:]:
        verdict = ""
        if v == "int8":
            verdict = " (meets" if med["job_ratio_int8"] >= TARGET_INT8_SPEEDUP else " (is UNDER"
            verdict += f" the target {TARGET_INT8_SPEEDUP}x)"
        lines.append(f"  {v} / fp32: batch job {med[f'job_ratio_{v}']:.2f}x{verdict}, model only "
                     f"{med[f'model_ratio_{v}']:.2f}x   rounds {rounds[f'job_ratio_{v}']}")
    return "\n".join(lines)


def report_train(t: dict) -> str:
    verdict = "meets" if t["wall_s"] <= FIRST_TRAIN_TARGET_S else "is OVER"
    stages = ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t["timings"].items() if k != "total_s")
    return (f"first train from an empty artifacts folder: {t['wall_s']:.1f} s wall ({verdict} the target "
            f"{FIRST_TRAIN_TARGET_S} s); recorded {t['timings']['total_s']:.1f} s: {stages}\n"
            f"  test accuracy {t['test_accuracy']:.4f}, log-loss {t['test_log_loss']:.4f} ({t['version']})")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_variants", description=__doc__.split("\n\n")[0])
    p.add_argument("--artifacts", type=Path, default=None, help="registry folder (default: $ARTIFACTS_DIR)")
    p.add_argument("--model", default="current")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="a folder of photos for the batch job")
    p.add_argument("--variants", nargs="+", default=["fp32", "int8"], choices=["fp32", "int8", "fp16"],
                   help="fp16 runs on a CPU through inserted casts: add it only to see that it is slower there")
    p.add_argument("--batch-size", type=int, default=Options.batch_size)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--first-train", action="store_true", help="first train the default model from empty artifacts")
    p.add_argument("--train-data", type=Path, default=DATA)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    out: dict = {}
    with tempfile.TemporaryDirectory(prefix="bench-variants-") as tmp:
        if args.first_train:
            out["first_train"] = first_train(args.train_data, Path(tmp))
            print(report_train(out["first_train"]), flush=True)
            args.artifacts, args.model = Path(tmp), "current"
        try:
            out["variants"] = measure(args)
        except ModelError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    print(report(out["variants"]))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
