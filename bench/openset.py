"""Prints the open-set and calibration targets of a model version, measured now with ONNX Runtime.

    python -m bench.openset [--model current] [--artifacts DIR] [--data DIR] [--ood DIR] [--fallback VERSION]
                            [--json FILE]

Targets (issue 8): at least 98% of the open-set photos (``../shared/data/open-set``) flagged unknown while at most
1% of the test split is; test accuracy within 0.2 points of the same model's before temperature scaling; expected
calibration error at most 1%. ``--fallback`` names a version trained with ``--novelty-scores density`` (for
example on data whose class names are no ImageNet concept, see tests/test_openset_e2e.py) and prints its figures.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from bench.common import DATA
from imgcls.registry import Registry
from training.data import create_dataset
from training.evaluate import evaluate_onnx

OOD = DATA.parent / "open-set"


def relabel(src: Path, dst: Path) -> Path:
    """A copy of ``src``'s split folders made of symlinks (no photo is copied), the classes replaced by a rule of
    ours that is no ImageNet concept: the parity of the file name's sha256 (``even``/``odd``)."""
    for path in sorted(src.glob("*/*/*")):
        if path.is_file() and path.parts[-3] in ("train", "val", "test"):
            digest = hashlib.sha256(path.name.encode()).hexdigest()
            parity = "odd" if int(digest, 16) % 2 else "even"
            # Named by the hash first, so that --limit-per-class (the first files by name) mixes cats and dogs.
            link = dst / path.parts[-3] / parity / f"{digest[:12]}-{path.parts[-2]}-{path.name}"
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.is_symlink():
                link.symlink_to(path.resolve())
    return dst


def measure(registry: Registry, ref: str, data: Path | str | None, ood: Path) -> dict:
    model_dir = registry.resolve(ref)
    meta = registry.metadata(ref)
    ds = create_dataset(data or meta["data"]["root"])
    result = evaluate_onnx(model_dir, ds.splits["test"], ds.classes, device="cpu", ood=ood)
    o = result.get("open_set")
    if o is None:
        sys.exit(f"{meta['version']} has no open-set detector (trained before it existed): train a new version")
    return {"version": meta["version"], "scores": o["detector"]["scores"], "data": ds.root, "ood": str(ood),
            "n_test": result["n"], "n_ood": o["n_out"], "test_flagged": o["flagged_in"],
            "ood_flagged": o["flagged_out"],
            "auroc": o["auroc"], "fpr_at_95_tpr": o["fpr_at_95_tpr"], "accuracy": result["accuracy"],
            "temperature": result.get("temperature"), "ece_before": result.get("ece_uncalibrated"),
            "ece_after": result["ece"], "recorded_test_accuracy": meta["metrics"]["test"]["accuracy"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="current")
    p.add_argument("--artifacts", type=Path)
    p.add_argument("--data", help="default: the data root recorded in the version")
    p.add_argument("--ood", type=Path, default=OOD)
    p.add_argument("--fallback", help="a version fitted with --novelty-scores density, measured on its own data")
    p.add_argument("--json", type=Path)
    p.add_argument("--relabel", type=Path, metavar="DIR",
                   help="only build DIR: the data's photos as symlinks, classes by file-hash parity; then train on "
                        "it with --novelty-scores density and pass that version as --fallback")
    args = p.parse_args(argv)
    if args.relabel:
        relabel(Path(args.data or DATA), args.relabel)
        print(f"built {args.relabel}; python -m training train --data {args.relabel} --novelty-scores density "
              f"--ood {args.ood} --no-promote")
        return 0
    registry = Registry(args.artifacts)
    m = measure(registry, args.model, args.data, args.ood)
    ok = lambda cond: "MET" if cond else "NOT MET"  # noqa: E731
    print(f"model {m['version']} (scores {'+'.join(m['scores'])}), test split of {m['data']}, ood {m['ood']}")
    print(f"  open set : {m['ood_flagged']:.2%} of {m['n_ood']} other photos flagged, {m['test_flagged']:.2%} of "
          f"{m['n_test']} test photos flagged (AUROC {m['auroc']:.4f}, FPR@95%TPR {m['fpr_at_95_tpr']:.4f})   "
          f"target >= 98% and <= 1%: {ok(m['ood_flagged'] >= 0.98 and m['test_flagged'] <= 0.01)}")
    print(f"  accuracy : {m['accuracy']:.4f} served; recorded at training {m['recorded_test_accuracy']:.4f}")
    if m["ece_before"] is not None:
        print(f"  calibration: T = {m['temperature']:.3f}, "
              f"test ECE {m['ece_before']:.4f} before -> {m['ece_after']:.4f}"
              f" after   target <= 1%: {ok(m['ece_after'] <= 0.01)}")
    out = {"main": m}
    if args.fallback:
        f = measure(registry, args.fallback, None, args.ood)
        print(f"density fallback {f['version']} (scores {'+'.join(f['scores'])}) on {f['data']}: "
              f"{f['ood_flagged']:.2%} of {f['n_ood']} other photos flagged, {f['test_flagged']:.2%} of "
              f"{f['n_test']} test photos flagged (AUROC {f['auroc']:.4f}, FPR@95%TPR {f['fpr_at_95_tpr']:.4f})")
        out["fallback"] = f
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
