"""``imgcls batch``: the batch job's command line (the job itself is :mod:`imgcls.batch`).

    imgcls batch --input DIR|GLOB|LIST.csv --output results.jsonl [--model current|VERSION]
                 [--engine local|ray] [--artifacts DIR] [--batch-size 32]

One row per input image in the results file; bad files never stop the job; re-running the same command resumes.
Exit status 2 for a problem with the arguments, the model or the output file.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from imgcls.batch import BatchError, Options, import_ray, run_job
from imgcls.onnx_model import VARIANTS, DeviceError
from imgcls.registry import DEFAULT_ROOT, ModelError, Registry

__all__ = ["main", "parse_args"]
_TRUE = ("1", "true", "yes")


def _tensorrt_cache_from_env() -> Path | None:
    """The service's TensorRT settings (README): ORT_TENSORRT=1, engines in ORT_TRT_CACHE_DIR or the registry's."""
    if os.environ.get("ORT_TENSORRT", "") not in _TRUE:
        return None
    artifacts = Path(os.environ.get("ARTIFACTS_DIR") or DEFAULT_ROOT)
    return Path(os.environ.get("ORT_TRT_CACHE_DIR") or artifacts / "cache" / "tensorrt")


def format_summary(s: dict, output: Path) -> str:
    """The summary as printed at the end of a run."""
    lines = [f"{s['inputs']} inputs in {output}: {s['classified_now']} classified now, "
             f"{s['already_done']} already done"]
    if s["images_per_second"]:
        lines.append(f"  {s['seconds']:.1f} s, {s['images_per_second']:.1f} images/s")
    for label, n in s["labels"].items():
        lines.append(f"  {label:12} {n}")
    lines.append(f"  {'errors':12} {sum(s['errors'].values())}"
                 + (" (" + ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) + ")" if s["errors"] else ""))
    if s["rows_for_other_inputs"]:
        lines.append(f"  (the file also holds {s['rows_for_other_inputs']} rows for paths not in this --input)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None, prog: str = "imgcls batch") -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--input", required=True, help="a folder (recursive), a glob (quote it) or a CSV list of paths")
    p.add_argument("--output", required=True, type=Path, help="results file: .jsonl, or .csv for CSV rows")
    p.add_argument("--model", default="current", help="current, a version, or a version folder")
    p.add_argument("--artifacts", type=Path, default=Path(os.environ.get("ARTIFACTS_DIR") or DEFAULT_ROOT),
                   help="registry folder (default: $ARTIFACTS_DIR, else ./artifacts)")
    p.add_argument("--engine", choices=["local", "ray"], default="local")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=Options.workers, help="decoding threads")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: one per usable CPU)")
    p.add_argument("--prefetch", type=int, default=Options.prefetch, help="batches decoded ahead of inference")
    p.add_argument("--decode-nice", type=int, default=Options.decode_nice,
                   help="how much lower the decoding threads' scheduling priority is (0: the same)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--variant", choices=["auto", *VARIANTS], default="auto",
                   help="model variant: auto picks fp16 on CUDA, int8 on a CPU with VNNI/AMX, else fp32")
    p.add_argument("--decode", choices=["auto", "cpu", "gpu"], default=Options.decode,
                   help="where JPEGs are decoded: gpu (nvImageCodec), cpu, or auto (gpu when the model runs on CUDA)")
    p.add_argument("--actors", type=int, default=None, help="ray: actor pool size (default: CPUs / --actor-cpus)")
    p.add_argument("--actor-cpus", type=float, default=Options.actor_cpus, help="ray: CPUs reserved per actor")
    p.add_argument("--tensorrt-cache", type=Path, default=_tensorrt_cache_from_env(),
                   help="cuda: put TensorRT first, its engines cached in this folder (default from ORT_TENSORRT=1 "
                        "and ORT_TRT_CACHE_DIR, as the service)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.batch_size < 1 or args.workers < 1 or args.prefetch < 0:
        p.error("--batch-size and --workers must be at least 1, --prefetch at least 0")
    return args


def main(argv: list[str] | None = None, prog: str = "imgcls batch") -> int:
    args = parse_args(argv, prog)
    opts = Options(batch_size=args.batch_size, workers=args.workers, threads=args.threads, prefetch=args.prefetch,
                   decode_nice=args.decode_nice, device=args.device, variant=args.variant, decode=args.decode,
                   progress=not args.no_progress,
                   actors=args.actors, actor_cpus=args.actor_cpus, tensorrt_cache=args.tensorrt_cache)
    notes = logging.StreamHandler(sys.stderr)  # the job's notes (resumed, torn line dropped), as plain lines
    notes.setFormatter(logging.Formatter("%(message)s"))
    job_log = logging.getLogger("imgcls.batch")
    job_log.addHandler(notes)
    job_log.setLevel(logging.INFO)
    try:
        if args.engine == "ray":
            import_ray()  # before anything slow
        model_dir = Registry(args.artifacts).resolve(args.model)
        summary = run_job(args.input, args.output, model_dir, args.engine, opts)
    except (BatchError, ModelError, DeviceError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ninterrupted: the rows written so far are in {args.output}; run the same command to resume",
              file=sys.stderr)
        return 130
    finally:
        job_log.removeHandler(notes)
    print(format_summary(summary, args.output))
    return 0


if __name__ == "__main__":
    sys.exit(main())
