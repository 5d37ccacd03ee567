"""Command line: python -m training (or imgcls) {train,evaluate,export,promote,list,show,retrain} --help"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from tqdm.contrib.logging import logging_redirect_tqdm

from imgcls.onnx_model import DeviceError
from imgcls.promotion import promote
from imgcls.registry import DEFAULT_ROOT, ModelError, Registry
from training.data import DataError, create_dataset, default_data_dir
from training.export import ExportError
from training.models import BACKBONES, WeightsError

log = logging.getLogger("training")
SHIFTED_HELP = ("one or more folders of labelled photos of the classes from other sources (any layout, every image "
                "scored): accuracy, log-loss, calibration error and the share answered neither")


def _dataset(args: argparse.Namespace):
    from training.train import limit_per_class

    ds = create_dataset(args.data or default_data_dir())
    ds = limit_per_class(ds, getattr(args, "limit_per_class", None))
    log.info("data %s (%s): %s", ds.root, ds.layout, ds.counts())
    return ds


def cmd_train(args: argparse.Namespace, registry: Registry) -> int:
    if args.if_no_current and registry.current():
        print(f"current model: {registry.current()} (not training; drop --if-no-current to train another)")
        return 0
    from training.fit import FitConfig
    from training.openset import OpenSetConfig
    from training.train import TrainConfig, train

    cfg = TrainConfig(args.backbone, args.weights, args.random_init, args.unfreeze_last_block, args.aug_views,
                      fit=FitConfig(epochs=args.epochs, lr=args.lr, seed=args.seed),
                      open_set=OpenSetConfig(args.novelty_accept, args.novelty_scores))
    version, meta = train(_dataset(args), cfg, registry, cache_dir=registry.root / "cache" / "features",
                          ood=args.ood, shifted=args.shifted)
    promoting = args.promote if args.promote is not None else registry.current() is None
    if promoting:
        promote(registry, version, reason="train")
    test = meta["metrics"]["test"]
    print(f"{version}: test accuracy {test['accuracy']:.4f}, log-loss {test['log_loss']:.4f}, "
          f"roc-auc {test['roc_auc']}, {test['n']} images; {meta['timings']['total_s']:.0f} s"
          f"{'; promoted to current' if promoting else ''}")
    _print_open_set(test)
    _print_shifted(meta["metrics"].get("shifted"))
    print(f"report: {registry.resolve(version) / 'report' / 'report.md'}")
    return 0


def _print_open_set(result: dict) -> None:
    if "ece_uncalibrated" in result:
        print(f"expected calibration error: {result['ece_uncalibrated']:.4f} before temperature scaling, "
              f"{result['ece']:.4f} after")
    o = result.get("open_set")
    if o:
        line = f"open set: {o['flagged_in']:.2%} of these {o['n_in']} images flagged unknown"
        if o["n_out"]:
            line += (f"; {o['flagged_out']:.2%} of {o['n_out']} images in {o['ood']} flagged, AUROC {o['auroc']:.4f}, "
                     f"FPR at 95% TPR {o['fpr_at_95_tpr']:.4f}")
        print(line)


def cmd_evaluate(args: argparse.Namespace, registry: Registry) -> int:
    from training.evaluate import evaluate_onnx

    model_dir = registry.resolve(args.model)
    ds = _dataset(args)
    samples = ds.select(args.split)
    if not samples:
        raise DataError(f"no images to evaluate: the {args.split} split of {ds.root} ({ds.layout}) is empty"
                        + ("" if args.split == "all" else "; --split all scores every image"))
    result = evaluate_onnx(model_dir, samples, ds.classes, device=args.device, variant=args.variant, ood=args.ood)
    result["split"], result["data"] = args.split, ds.root
    if args.shifted:
        from training.evaluate import evaluate_shifted

        result["shifted"] = evaluate_shifted(model_dir, args.shifted, device=args.device, variant=args.variant)
    if args.report:
        from training.openset_report import write_evaluation_report

        write_evaluation_report(args.report, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['model']} ({result['variant']}) on {ds.root} [{args.split}]: "
              f"accuracy {result['accuracy']:.4f}, log-loss {result['log_loss']:.4f}, roc-auc {result['roc_auc']}, "
              f"n={result['n']}, misclassified {len(result['misclassified'])}, skipped {len(result['skipped'])}")
        print("confusion matrix (rows true, columns predicted):", result["confusion_matrix"])
        _print_open_set(result)
        _print_shifted(result.get("shifted"))
    return 0


def _print_shifted(shifted: list[dict] | None) -> None:
    if shifted:
        from training.evaluate import shifted_lines

        print("photos from other sources:")
        for line in shifted_lines(shifted):
            print(f"  {line}")


def cmd_promote(args: argparse.Namespace, registry: Registry) -> int:
    previous = registry.current()
    version = promote(registry, args.model, reason=args.reason)
    print(f"current: {previous} -> {version}")
    return 0


def cmd_list(args: argparse.Namespace, registry: Registry) -> int:
    current = registry.current()
    print(f"{'':2}{'version':40} {'backbone':20} {'test acc':>9} {'log-loss':>9}  data")
    for v in registry.versions():
        card = registry.card(v)
        t = card.metrics.get("test", {})
        data = (card.extra.get("data") or {}).get("manifest_sha256", "")[:12]
        print(f"{'*' if v == current else ' '} {v:40} {card.backbone or '?':20} "
              f"{t.get('accuracy', float('nan')):9.4f} {t.get('log_loss', float('nan')):9.4f}  {data}")
    return 0


def cmd_show(args: argparse.Namespace, registry: Registry) -> int:
    card = registry.card(args.model)
    meta = card.to_dict()
    if not args.full:
        meta = card.public()
        for split in meta.get("metrics", {}).values():
            if isinstance(split, dict):
                for key in ("reliability", "reliability_uncalibrated"):
                    split.pop(key, None)
                (split.get("open_set") or {}).pop("novelty", None)
    print(json.dumps(meta, indent=2))
    return 0


def cmd_export(args: argparse.Namespace, registry: Registry) -> int:
    from training.checkpoint import export_version

    info = export_version(registry.resolve(args.model), args.output, data=args.data)
    print(json.dumps(info, indent=2))
    return 0


def cmd_retrain(args: argparse.Namespace, registry: Registry) -> int:
    from training.retrain import retrain

    report = retrain(registry, new_data=args.data, base=args.base, min_gain=args.min_gain,
                     original_data=args.original_data, feedback=args.feedback, epochs=args.epochs,
                     limit_per_class=args.limit_per_class, aug_views=args.aug_views, ood=args.ood,
                     max_ood_drop=args.max_ood_drop, shifted=args.shifted, max_neither_rise=args.max_neither_rise)
    print(report["summary"])
    return 0


def main(argv: list[str] | None = None, prog: str = "python -m training") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    parser.add_argument("--artifacts", type=Path, default=Path(os.environ.get("ARTIFACTS_DIR") or DEFAULT_ROOT),
                        help="registry folder (default: $ARTIFACTS_DIR, else ./artifacts)")
    parser.add_argument("-v", "--verbose", action="store_true")
    # The same two options after the command too (`imgcls train --artifacts DIR`); absent there, they keep the above.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--artifacts", type=Path, default=argparse.SUPPRESS, help="registry folder")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kw) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    p = command("train", help="train, export, evaluate and register a model version")
    p.add_argument("--data", help="data folder (default: $DATA_DIR or ../shared/data/catsdogs)")
    p.add_argument("--backbone", choices=sorted(BACKBONES), default="efficientnet_lite0")
    p.add_argument("--weights", type=Path, help="a local state_dict for the backbone instead of the official weights")
    p.add_argument("--random-init", action="store_true", help="no pretrained weights (only when asked for)")
    p.add_argument("--unfreeze-last-block", action="store_true", help="fine-tune the last stage at a lower lr")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--aug-views", type=int, default=2, help="augmented views per training image (0: none)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--limit-per-class", type=int, help="use at most N images per class and split (quick runs)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--promote", dest="promote", action="store_true", default=None,
                   help="make it current (default: only when there is no current model)")
    g.add_argument("--no-promote", dest="promote", action="store_false")
    p.add_argument("--if-no-current", action="store_true", help="do nothing when a current model exists")
    p.add_argument("--novelty-accept", type=float, default=0.99,
                   help="share of validation images the open-set detector accepts as known")
    p.add_argument("--novelty-scores", default="auto",
                   help="open-set scores: auto (imagenet,density where the backbone has an ImageNet classifier, "
                        "else density), density, imagenet, or imagenet,density")
    p.add_argument("--ood", type=Path, help="a folder of photos of none of the classes: open-set figures in the report")
    p.add_argument("--shifted", type=Path, nargs="+", default=[], help=SHIFTED_HELP)
    p.set_defaults(func=cmd_train)

    p = command("evaluate", help="evaluate a model version with ONNX Runtime on a data split")
    p.add_argument("--model", default="current", help="current, a version, or a version folder / .onnx path")
    p.add_argument("--data")
    p.add_argument("--split", choices=["train", "val", "test", "all"], default="test",
                   help="which split to score; all: every image of the folder, in any layout")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--variant", choices=["fp32", "int8", "fp16", "auto"], default="fp32",
                   help="which of the version's models (the recorded test metrics are fp32's; auto: what serving "
                        "picks here, fp16 on CUDA, int8 on a CPU with VNNI/AMX, else fp32)")
    p.add_argument("--limit-per-class", type=int)
    p.add_argument("--json", action="store_true", help="print every metric as JSON")
    p.add_argument("--ood", type=Path, help="a folder of photos of none of the model's classes: open-set AUROC, "
                                            "FPR at 95%% TPR and the share flagged unknown")
    p.add_argument("--report", type=Path, help="write plots (reliability, novelty distributions) to this folder")
    p.add_argument("--shifted", type=Path, nargs="+", default=[], help=SHIFTED_HELP)
    p.set_defaults(func=cmd_evaluate)

    p = command("export", help="re-export a version's checkpoint to an ONNX file, with the parity check")
    p.add_argument("--model", default="current")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--data", help="real images for the parity check (default: the default data)")
    p.set_defaults(func=cmd_export)

    p = command("promote", help="point current at a version (rolling back is promoting an older one)")
    p.add_argument("model")
    p.add_argument("--reason", default="manual")
    p.set_defaults(func=cmd_promote)

    command("list", help="versions with their test metrics; * marks current").set_defaults(func=cmd_list)

    p = command("show", help="a version's metadata and metrics")
    p.add_argument("model", nargs="?", default="current")
    p.add_argument("--full", action="store_true", help="include training history and misclassified files")
    p.set_defaults(func=cmd_show)

    p = command("retrain", help="train a candidate on old + new data; promote it only if it is better")
    p.add_argument("--data", required=True, action="append",
                   help="new labelled data (class folders or split folders; its test split is trained on too); "
                        "repeat for several folders")
    p.add_argument("--base", default="current", help="the model to beat (default: current)")
    p.add_argument("--min-gain", type=float, default=0.0,
                   help="test accuracy the candidate needs over the base (equal accuracy: log-loss decides)")
    p.add_argument("--original-data", help="the base model's data, whose test split both are compared on "
                                           "(default: the data root in the base's metadata)")
    p.add_argument("--feedback", type=Path, default=os.environ.get("FEEDBACK_DIR") or None,
                   help="the service's feedback folder (default: $FEEDBACK_DIR, else <artifacts>/feedback)")
    p.add_argument("--epochs", type=int, help="default: the base model's")
    p.add_argument("--aug-views", type=int, help="augmented views per training image (default: the base model's)")
    p.add_argument("--limit-per-class", type=int, help="at most N original and new images per class and split")
    p.add_argument("--ood", type=Path, help="photos of none of the classes: refuse a candidate that flags fewer "
                                            "of them than the base by more than --max-ood-drop")
    p.add_argument("--max-ood-drop", type=float, default=0.01,
                   help="largest drop in the share of --ood photos flagged unknown (default 0.01: 1 point)")
    p.add_argument("--shifted", type=Path, nargs="+", default=[],
                   help="labelled photos of the classes from other sources: refuse a candidate that answers "
                        "neither for more of them than the base, by more than --max-neither-rise")
    p.add_argument("--max-neither-rise", type=float, default=0.01,
                   help="largest rise in the share of --shifted photos answered neither (default 0.01: 1 point)")
    p.set_defaults(func=cmd_retrain)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("onnx_ir", "onnxscript", "torch.onnx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    registry = Registry(args.artifacts)
    try:
        with logging_redirect_tqdm():
            return args.func(args, registry)
    except (DataError, WeightsError, ModelError, ExportError, DeviceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
