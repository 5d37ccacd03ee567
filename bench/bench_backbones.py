"""Model versions side by side (e.g. two backbones), in the same run: images/s of the model alone and of the batch
job (JPEG to label), each as a ratio against the first version given.

    python -m bench.bench_backbones DIR_OR_VERSION [DIR_OR_VERSION ...] [--variant auto] [--rounds 3] [--json FILE]

Each argument is a version folder, or a version of ``--artifacts``. Rounds alternate the versions and each ratio is
taken within a round (both sides see the same load on a noisy machine); medians are printed. ``--variant auto``
measures what the service would serve on this machine (int8 only on a CPU with VNNI/AMX and only if the version
kept it). The images are the test split of ``--data`` (default: the shared photos), decoded once for the model-only
figure.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

from bench.bench_batch import DEFAULT_DATA, job, model_only, timed
from imgcls.batch import Options, find_inputs
from imgcls.loader import preprocessed_batches
from imgcls.onnx_model import OnnxClassifier
from imgcls.registry import Registry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--artifacts", type=Path)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--variant", default="auto", choices=["auto", "fp32", "int8", "fp16"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    registry = Registry(args.artifacts)
    dirs = [Path(m) if Path(m).is_dir() else registry.resolve(m) for m in args.models]
    models = [OnnxClassifier(d, device="cpu", variant=args.variant) for d in dirs]
    paths = find_inputs(str(args.data))
    tensors = {}
    for m in models:
        key = m.preprocess
        if key not in tensors:
            _, batch, errors = next(preprocessed_batches(paths, m.preprocess, len(paths)))
            if errors:
                raise SystemExit(f"{len(errors)} unreadable images in {args.data}")
            tensors[key] = batch
        m.warmup((args.batch_size,))
    opts = Options(batch_size=args.batch_size, device="cpu", progress=False)
    runs = {m.version: {"model_only": [], "job": []} for m in models}
    for _ in range(args.rounds):
        for m in models:
            runs[m.version]["model_only"].append(timed(lambda: model_only(m, tensors[m.preprocess],
                                                                          args.batch_size))[0])
            runs[m.version]["job"].append(timed(lambda: job(paths, m, opts))[0])
    base = models[0].version
    out = {"data": str(args.data), "images": len(paths), "rounds": args.rounds, "variant_requested": args.variant,
           "models": []}
    print(f"{len(paths)} images of {args.data}, {args.rounds} alternating rounds; ratios against {base}")
    for m in models:
        r = runs[m.version]
        row = {"version": m.version, "variant": m.variant, "input_size": m.preprocess.input_size}
        for k in ("model_only", "job"):
            row[f"{k}_img_s"] = statistics.median(r[k])
            row[f"{k}_ratio"] = statistics.median(a / b for a, b in zip(r[k], runs[base][k]))
        out["models"].append(row)
        print(f"{m.version} ({m.variant}, {row['input_size']} px): model only {row['model_only_img_s']:.1f} img/s "
              f"({row['model_only_ratio']:.2f}x), batch job {row['job_img_s']:.1f} img/s ({row['job_ratio']:.2f}x)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
