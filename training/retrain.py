"""Retraining: a candidate trained on the original data plus new labelled data and the service's feedback,
compared with the base model on the original test split, and promoted only if it is at least as good.

The comparison split is fixed: the original data's test split. New data and feedback only ever go into the
candidate's train/val splits, and any new file whose bytes equal an evaluation file is left out, so the
candidate never trains on what it is judged on. Both models are scored by :func:`evaluate_onnx` on the same
files. Promotion (an atomic rename of ``current``) is the last thing a run does to the registry; a run that
fails or is killed before it leaves ``current`` as it was. Each run writes ``report.json`` and ``report.md``
under ``<artifacts>/retrain/<timestamp>/`` (version folders are immutable, so not there).
"""
from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from imgcls.feedback import CONFLICTS_FILE, conflicted_hashes, pixel_sha256
from imgcls.images import ImageError, decode_image
from imgcls.metadata import ModelCard
from imgcls.promotion import promote
from imgcls.registry import Registry, default_feedback_dir, now_iso, sha256_file, write_atomic
from imgcls.review import read_decisions
from training.data import DataError, Dataset, Sample, create_dataset
from training.evaluate import evaluate_onnx, evaluate_shifted

if TYPE_CHECKING:
    from training.train import TrainConfig

log = logging.getLogger(__name__)

EVAL_SPLIT = "test"
COMPARED = ("n", "accuracy", "log_loss", "roc_auc", "confusion_matrix")
_EPS = 1e-9  # float noise in "accuracy >= base + min_gain" (accuracies are k/n of the same n)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str


def decide(base: dict, candidate: dict, min_gain: float = 0.0) -> Decision:
    """Accuracy first (candidate >= base + ``min_gain``); on equal accuracy, log-loss must not be worse."""
    b_acc, c_acc, b_ll, c_ll = base["accuracy"], candidate["accuracy"], base["log_loss"], candidate["log_loss"]
    needed = b_acc + min_gain
    if c_acc < needed - _EPS:
        return Decision(False, f"candidate accuracy {c_acc:.4f} < base {b_acc:.4f} + min-gain {min_gain:.4f}")
    if abs(c_acc - b_acc) <= _EPS:
        if c_ll <= b_ll:
            return Decision(True, f"equal accuracy {c_acc:.4f} and candidate log-loss {c_ll:.4f} <= base {b_ll:.4f}")
        return Decision(False, f"equal accuracy {c_acc:.4f} but candidate log-loss {c_ll:.4f} > base {b_ll:.4f}")
    return Decision(True, f"candidate accuracy {c_acc:.4f} >= base {b_acc:.4f} + min-gain {min_gain:.4f}")


def open_set_gate(decision: Decision, base: dict, candidate: dict, max_drop: float) -> Decision:
    """Refuse a candidate that flags a smaller share of the ``--ood`` photos than the base, by more than ``max_drop``.

    A base without an open-set detector flags none of them."""
    b = (base.get("open_set") or {}).get("flagged_out") or 0.0
    c = (candidate.get("open_set") or {}).get("flagged_out") or 0.0
    if c < b - max_drop - _EPS:
        joint = ", but" if decision.promote else "; also"
        return Decision(False, f"{decision.reason}{joint} its open-set rejection fell: it flags {c:.2%} of the --ood "
                               f"photos against the base's {b:.2%} (at most {max_drop:.2%} lower allowed)")
    if decision.promote:
        return Decision(True, f"{decision.reason}; open-set rejection {c:.2%} of the --ood photos (base {b:.2%})")
    return decision


def shifted_gate(decision: Decision, base: list[dict], candidate: list[dict], max_rise: float) -> Decision:
    """Refuse a candidate that answers "neither" for a larger share of a ``--shifted`` folder's photos (cats and
    dogs from other sources) than the base, by more than ``max_rise``. A model without a detector answers none."""
    for b, c in zip(base, candidate):
        b_share, c_share = b["answered_neither"] or 0.0, c["answered_neither"] or 0.0
        if c_share > b_share + max_rise + _EPS:
            joint = ", but" if decision.promote else "; also"
            decision = Decision(False, f"{decision.reason}{joint} it answers neither for {c_share:.2%} of the photos "
                                       f"in {c['data']} against the base's {b_share:.2%} (at most {max_rise:.2%} "
                                       "more allowed)")
    if decision.promote and candidate:
        shares = ", ".join(f"{c['answered_neither'] or 0:.2%} of {c['data']} (base {b['answered_neither'] or 0:.2%})"
                           for b, c in zip(base, candidate))
        return Decision(True, f"{decision.reason}; answered neither for {shares}")
    return decision


def feedback_samples(folder: Path, classes: list[str]) -> list[Sample]:
    """The service's ``<label>/<pixel sha256>.jpg`` files as samples labelled by ``classes``' indices.

    Hidden files (the service's in-flight ``.tmp`` writes) are skipped, and so are images whose label is in
    conflict (:func:`imgcls.feedback.conflicted_hashes`); an unknown label is an error.
    """
    if not folder.is_dir():
        return []
    labels = sorted(d.name for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))
    unknown = [c for c in labels if c not in classes]
    if unknown:
        raise DataError(f"feedback in {folder} has labels {unknown} that the base model does not have {classes}")
    index = {c: i for i, c in enumerate(classes)}
    conflicted = conflicted_hashes(folder)
    if conflicted:
        log.warning("feedback: %d images have conflicting labels and are left out (%s)", len(conflicted),
                    folder / CONFLICTS_FILE)
    return [(p, index[c]) for c in labels for p in sorted((folder / c).iterdir())
            if p.is_file() and not p.name.startswith(".") and p.stem not in conflicted]


def reviewed_samples(feedback_dir: Path, train: list[Sample]) -> tuple[list[Sample], int]:
    """The photos a reviewer labelled on the review page (``reviews.jsonl``) that the candidate trains on, and how
    many of them the service had answered wrongly when it queued them."""
    labelled = {d.sha256: d for d in read_decisions(feedback_dir) if d.verdict == "label" and d.sha256
                and d.outcome in ("stored", "duplicate")}
    samples = [(p, label) for p, label in train if Path(p).parent.parent == feedback_dir and Path(p).stem in labelled]
    served_wrong = sum(labelled[Path(p).stem].answered.get("label") != Path(p).parent.name for p, _ in samples)
    return samples, served_wrong


def learned_from_review(base: dict, candidate: dict, served_wrong: int) -> dict[str, int]:
    """For the reviewed photos (both models scored on the same ones): how many the base gets wrong, and how many of
    those the candidate gets right."""
    base_wrong = {m["path"] for m in base["misclassified"]}
    cand_wrong = {m["path"] for m in candidate["misclassified"]}
    return {"n": base["n"], "answered_wrong_when_served": served_wrong, "base_wrong": len(base_wrong),
            "candidate_right_of_base_wrong": len(base_wrong - cand_wrong), "candidate_wrong": len(cand_wrong)}


def base_config(meta: dict, *, epochs: int | None = None, aug_views: int | None = None) -> TrainConfig:
    """The base model's training settings (backbone, weights, augmentation, fit), with optional overrides."""
    from training.fit import FitConfig
    from training.train import TrainConfig

    recorded = meta.get("training") or {}
    fit_names = {f.name for f in fields(FitConfig)}
    fit = FitConfig(**{k: v for k, v in (recorded.get("fit") or {}).items() if k in fit_names})
    names = {f.name for f in fields(TrainConfig)} - {"fit"}
    kwargs = {k: v for k, v in recorded.items() if k in names}
    kwargs.setdefault("backbone", meta.get("backbone", TrainConfig.backbone))
    if kwargs.get("weights"):
        kwargs["weights"] = Path(kwargs["weights"])
    if isinstance(kwargs.get("open_set"), dict):
        from training.openset import OpenSetConfig

        kwargs["open_set"] = OpenSetConfig(**kwargs["open_set"])
    cfg = TrainConfig(**kwargs, fit=fit)
    if epochs is not None:
        cfg.fit.epochs = epochs
    if aug_views is not None:
        cfg.aug_views = aug_views
    return cfg


def _relabel(ds: Dataset, classes: list[str]) -> dict[str, list[Sample]]:
    index = {c: i for i, c in enumerate(classes)}
    return {s: [(p, index[ds.classes[l]]) for p, l in items] for s, items in ds.splits.items()}


def assemble(original: Dataset, new: list[Dataset], feedback: list[Sample],
             classes: list[str]) -> tuple[Dataset, dict[str, Any]]:
    """The candidate's data: the original splits as they are, new data in train/val, feedback in train.

    New data's own test split goes into train (it plays no part in the comparison). New files and feedback whose
    bytes equal a file already included are dropped, and so are those equal to an evaluation file (a leak).
    Returns the dataset (labels indexed by ``classes``, root = the original root) and per-source counts.
    """
    if set(original.classes) != set(classes):
        raise DataError(f"the original data {original.root} has classes {original.classes}; "
                        f"the base model has {classes}: pass --original-data with the base model's data")
    for ds in new:
        unknown = sorted(set(ds.classes) - set(classes))
        if unknown:
            raise DataError(f"new data {ds.root} has classes {unknown} that the base model does not have "
                            f"({classes}); new data may only use the base model's labels")
    splits = _relabel(original, classes)
    eval_hashes = {sha256_file(p) for p, _ in splits[EVAL_SPLIT]}
    seen = eval_hashes | {sha256_file(p) for s, items in splits.items() if s != EVAL_SPLIT for p, _ in items}
    sources: dict[str, Any] = {"original": {"root": original.root, "layout": original.layout,
                                            "counts": _counts(splits, classes)}}

    def add(items: Iterable[tuple[str, Sample]]) -> dict[str, Any]:
        kept: dict[str, list[Sample]] = {"train": [], "val": []}
        dropped = {"in_eval_split": 0, "duplicate": 0}
        for split, (path, label) in items:
            digest = sha256_file(path)
            if digest in seen:
                dropped["in_eval_split" if digest in eval_hashes else "duplicate"] += 1
                continue
            seen.add(digest)
            kept[split].append((path, label))
        for split, samples in kept.items():
            splits.setdefault(split, []).extend(samples)
        return {"counts": _counts(kept, classes), "used": sum(map(len, kept.values())), "dropped": dropped}

    sources["new"] = []
    for ds in new:
        relabelled = _relabel(ds, classes)
        items = [("val" if s == "val" else "train", x) for s in sorted(relabelled) for x in relabelled[s]]
        sources["new"].append({"root": ds.root, "layout": ds.layout, "found": len(items), **add(items)})
    found, leaked = len(feedback), 0
    if feedback:  # stored feedback is re-encoded pixels named by their hash: compare pixels, not bytes
        eval_pixels = {_pixel_hash(p) for p, _ in splits[EVAL_SPLIT]}
        leaked = sum(p.stem in eval_pixels for p, _ in feedback)
        feedback = [x for x in feedback if x[0].stem not in eval_pixels]
    sources["feedback"] = {"found": found, **add(("train", x) for x in feedback)}
    sources["feedback"]["dropped"]["in_eval_split"] += leaked
    layout = "+".join([original.layout, *(["new"] if new else []), *(["feedback"] if feedback else [])])
    ignored = original.ignored + [p for ds in new for p in ds.ignored]
    return Dataset(original.root, layout, list(classes), splits, ignored), sources


def _pixel_hash(path: Path) -> str | None:
    try:
        return pixel_sha256(decode_image(path))
    except ImageError:
        return None


def _counts(splits: dict[str, list[Sample]], classes: list[str]) -> dict[str, dict[str, int]]:
    return {s: {c: sum(1 for _, l in items if l == i) for i, c in enumerate(classes)} for s, items in splits.items()}


def _report_dir(registry: Registry) -> Path:
    parent = registry.root / "retrain"
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    for n in range(1000):
        path = parent / (stamp if n == 0 else f"{stamp}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"no free report folder for {stamp} in {parent}")


def _metrics(result: dict) -> dict:
    open_set = {k: v for k, v in (result.get("open_set") or {}).items() if k not in ("novelty", "detector")}
    return {k: result[k] for k in COMPARED} | {"skipped": len(result.get("skipped", {}))} | \
        ({"open_set": open_set} if open_set else {})


def retrain(registry: Registry, *, new_data: str | Path | Iterable[str | Path], base: str = "current",
            min_gain: float = 0.0, original_data: str | Path | None = None, feedback: Path | None = None,
            epochs: int | None = None, limit_per_class: int | None = None,
            aug_views: int | None = None, ood: Path | str | None = None,
            max_ood_drop: float = 0.01, shifted: Iterable[Path | str] = (),
            max_neither_rise: float = 0.01) -> dict[str, Any]:
    """Train a candidate on original + new data + feedback, compare it with ``base``, promote it if good enough.

    ``limit_per_class`` caps the original and new data per class and split (quick runs), as ``train`` does.
    ``epochs``/``aug_views`` override the base's settings. With ``ood`` (photos of none of the classes), a candidate
    whose share of them flagged unknown is lower than the base's by more than ``max_ood_drop`` is refused; with
    ``shifted`` (labelled photos of the classes from other sources), one that answers "neither" for more of them
    than the base by more than ``max_neither_rise``. Returns the report (also written to disk).
    """
    from training.train import limit_per_class as limit
    from training.train import train

    if not math.isfinite(min_gain):
        raise ValueError(f"--min-gain must be a finite number, not {min_gain}")
    if (epochs is not None and epochs < 1) or (aug_views is not None and aug_views < 0):
        raise ValueError(f"--epochs must be >= 1 and --aug-views >= 0 (got {epochs}, {aug_views})")
    t0 = time.perf_counter()
    base_dir = registry.resolve(base)
    base_card = ModelCard.load(base_dir)
    base_meta = base_card.to_dict()  # base_config reads the trainer's own record of its settings
    base_version, classes = base_dir.name, list(base_card.labels)
    root = original_data or (base_card.extra.get("data") or {}).get("root")
    if not root:
        raise DataError(f"{base_version} records no data root: pass --original-data")
    original = limit(create_dataset(root), limit_per_class)
    new_specs = [new_data] if isinstance(new_data, (str, Path)) else list(new_data)
    new = [limit(create_dataset(spec), limit_per_class) for spec in new_specs]
    feedback_dir = Path(feedback) if feedback else default_feedback_dir(registry.root)
    ds, sources = assemble(original, new, feedback_samples(feedback_dir, classes), classes)
    sources["feedback"]["dir"] = str(feedback_dir)
    sources["feedback"]["conflicted"] = len(conflicted_hashes(feedback_dir))  # left out: labels disagree
    eval_set = ds.splits[EVAL_SPLIT]
    if not eval_set:
        raise DataError(f"the original data {original.root} has an empty {EVAL_SPLIT} split: nothing to compare on")
    cfg = base_config(base_meta, epochs=epochs, aug_views=aug_views)
    current_at_start = registry.current()

    out = _report_dir(registry)
    report: dict[str, Any] = {
        "status": "running", "started_at": now_iso(), "report_dir": str(out),
        "base": {"ref": base, "version": base_version, "was_current": base_version == current_at_start},
        "current_at_start": current_at_start, "min_gain": min_gain,
        "ood": {"dir": str(ood), "max_drop": max_ood_drop} if ood is not None else None,
        "shifted": {"dirs": [str(d) for d in shifted], "max_neither_rise": max_neither_rise} if shifted else None,
        "rule": "promote if candidate accuracy >= base accuracy + min_gain; on equal accuracy, "
                "if candidate log-loss <= base log-loss",
        "evaluation": {"data": original.root, "split": EVAL_SPLIT, "n_files": len(eval_set),
                       "counts": _counts({EVAL_SPLIT: eval_set}, classes)[EVAL_SPLIT],
                       "manifest_sha256": Dataset(original.root, original.layout, classes,
                                                  {EVAL_SPLIT: eval_set}).manifest_hash(),
                       "function": "training.evaluate.evaluate_onnx", "device": "cpu"},
        "data": {**sources, "candidate_counts": ds.counts()},
        "training": {"backbone": cfg.backbone, "weights": str(cfg.weights) if cfg.weights else None,
                     "aug_views": cfg.aug_views, "epochs": cfg.fit.epochs, "lr": cfg.fit.lr,
                     "unfreeze_last_block": cfg.unfreeze_last_block, "limit_per_class": limit_per_class,
                     "overridden": {k: v for k, v in (("epochs", epochs), ("aug_views", aug_views)) if v is not None}},
    }
    _write(out, report)
    log.info("retrain: base %s, candidate data %s, feedback %d of %d used; report %s", base_version,
             ds.counts(), sources["feedback"]["used"], sources["feedback"]["found"], out)
    try:
        log.info("evaluating base %s on %d %s images of %s", base_version, len(eval_set), EVAL_SPLIT, original.root)
        base_eval = evaluate_onnx(base_dir, eval_set, classes, device="cpu", ood=ood)
        candidate, _ = train(ds, cfg, registry, cache_dir=registry.root / "cache" / "features", parent=base_version,
                             sources=sources)
        report["candidate"] = {"version": candidate}
        log.info("evaluating candidate %s on the same %d images", candidate, len(eval_set))
        cand_eval = evaluate_onnx(registry.resolve(candidate), eval_set, classes, device="cpu", ood=ood)
        if base_eval["n"] != cand_eval["n"]:
            raise RuntimeError(f"base scored {base_eval['n']} images, candidate {cand_eval['n']}: not comparable")
        report["base"]["metrics"], report["candidate"]["metrics"] = _metrics(base_eval), _metrics(cand_eval)
        reviewed, served_wrong = reviewed_samples(feedback_dir, ds.splits.get("train", []))
        if reviewed:  # what the candidate learned from the review page (these photos are in its train split)
            log.info("scoring both models on the %d reviewed photos", len(reviewed))
            report["reviewed"] = learned_from_review(evaluate_onnx(base_dir, reviewed, classes, device="cpu"),
                                                     evaluate_onnx(registry.resolve(candidate), reviewed, classes,
                                                                   device="cpu"), served_wrong)
        decision = decide(base_eval, cand_eval, min_gain)
        if ood is not None:
            decision = open_set_gate(decision, base_eval, cand_eval, max_ood_drop)
        if shifted:
            base_shifted = evaluate_shifted(base_dir, list(shifted), device="cpu")
            cand_shifted = evaluate_shifted(registry.resolve(candidate), list(shifted), device="cpu")
            report["base"]["shifted"], report["candidate"]["shifted"] = (
                [{k: v for k, v in s.items() if k not in ("misclassified", "neither")} for s in x]
                for x in (base_shifted, cand_shifted))
            decision = shifted_gate(decision, base_shifted, cand_shifted, max_neither_rise)
        now_current = registry.current()
        if decision.promote and current_at_start != now_current:
            decision = Decision(False, f"{decision.reason}, but current changed during the run "
                                       f"({current_at_start} -> {now_current}): not promoting over it")
        report["decision"] = {"promote": decision.promote, "reason": decision.reason}
        report["summary"] = _summary(report, out)
        report["status"] = "promoting" if decision.promote else "rejected"
        _write(out, report)
        if decision.promote:
            promote(registry, candidate, reason=f"retrain over {base_version}: {decision.reason}")  # the last step
            report["status"] = "promoted"
    except BaseException as e:
        report["status"], report["error"] = "failed", f"{type(e).__name__}: {e}"
        report["current_after"] = registry.current()
        report["summary"] = (f"retrain failed: {report['error']}; current is {report['current_after']}. "
                             f"Report: {out / 'report.md'}")
        report["finished_at"] = now_iso()
        _write(out, report)
        raise
    report["finished_at"], report["duration_s"] = now_iso(), round(time.perf_counter() - t0, 1)
    _write(out, report)
    log.info("%s", report["summary"])
    return report


def _summary(report: dict, out: Path) -> str:
    b, c, d = report["base"], report["candidate"], report["decision"]
    verdict = "promoted" if d["promote"] else "not promoted"
    return (f"candidate {c['version']} {verdict} (base {b['version']}): {d['reason']}; "
            f"{report['evaluation']['n_files']} {EVAL_SPLIT} images of {report['evaluation']['data']}; "
            f"feedback images used: {report['data']['feedback']['used']}{_reviewed_summary(report)}. "
            f"Report: {out / 'report.md'}")


def _reviewed_summary(report: dict) -> str:
    r = report.get("reviewed")
    if not r:
        return ""
    return (f"; reviewed photos: {r['n']}, the base gets {r['base_wrong']} wrong and the candidate "
            f"{r['candidate_right_of_base_wrong']} of those right")


def _write(out: Path, report: dict) -> None:
    write_atomic(out / "report.json", json.dumps(report, indent=2) + "\n")
    write_atomic(out / "report.md", markdown(report))


def markdown(report: dict) -> str:
    """A short human-readable account of a retrain report: what was compared, and the decision and why."""
    b, c = report["base"], report.get("candidate", {})
    ev, data, tr = report["evaluation"], report["data"], report["training"]
    lines = [f"# Retrain: {report['status']}", ""]
    if "decision" in report:
        d = report["decision"]
        verdict = "Promoted" if report["status"] == "promoted" else "To promote" if d["promote"] else "Not promoted"
        lines += [f"**{verdict}:** {d['reason']}.", ""]
    if "error" in report:
        lines += [f"**Failed:** {report['error']}. `current` is `{report.get('current_after')}`.", ""]
    lines += [f"Rule: {report['rule']} (min-gain {report['min_gain']}).", "",
              "## Compared on", "",
              f"The {ev['split']} split of the original data `{ev['data']}`: {ev['n_files']} images "
              f"({_fmt(ev['counts'])}; manifest sha256 `{ev['manifest_sha256'][:16]}`), "
              f"both models scored by `{ev['function']}` on {ev['device']}. "
              "New data and feedback never enter this split.", "",
              "| model | version | accuracy | log-loss | ROC-AUC | n |", "|---|---|---|---|---|---|"]
    for name, m in (("base", b), ("candidate", c)):
        metrics = m.get("metrics")
        if metrics:
            auc = "-" if metrics["roc_auc"] is None else f"{metrics['roc_auc']:.4f}"
            lines.append(f"| {name} | `{m['version']}` | {metrics['accuracy']:.4f} | {metrics['log_loss']:.4f} "
                         f"| {auc} | {metrics['n']} |")
        else:
            lines.append(f"| {name} | `{m.get('version', '-')}` | - | - | - | - |")
    if report.get("ood"):
        lines += ["", f"Open set: share of the photos in `{report['ood']['dir']}` flagged unknown (a candidate may be "
                      f"at most {report['ood']['max_drop']:.2%} lower than the base):"]
        for name, m in (("base", b), ("candidate", c)):
            o = (m.get("metrics") or {}).get("open_set") or {}
            if m.get("metrics"):
                flagged = "no detector (flags none)" if not o else f"{o['flagged_out']:.2%} of {o['n_out']} " \
                    f"(test split {o['flagged_in']:.2%})"
                lines.append(f"- {name}: {flagged}")
    if report.get("shifted"):
        lines += ["", "Photos of the classes from other sources: share answered neither (a candidate may be at most "
                      f"{report['shifted']['max_neither_rise']:.2%} higher than the base):"]
        for name, m in (("base", b), ("candidate", c)):
            for s in m.get("shifted") or []:
                lines.append(f"- {name}: `{s['data']}` {s['answered_neither'] or 0:.2%} of {s['n']} "
                             f"(accuracy {s['accuracy']:.4f})")
    if report.get("reviewed"):
        r = report["reviewed"]
        lines += ["", f"Reviewed photos (labelled on the review page, in the candidate's train split): {r['n']}. "
                      f"The base gets {r['base_wrong']} of them wrong; the candidate gets "
                      f"{r['candidate_right_of_base_wrong']} of those right ({r['candidate_wrong']} wrong in all). "
                      f"The service had answered {r['answered_wrong_when_served']} of them wrongly when it queued "
                      "them."]
    lines += ["", f"`current` at the start: `{report['current_at_start']}`.", "",
              "## Candidate training data", "",
              "| source | used | train | val | dropped (in eval split / duplicate) |", "|---|---|---|---|---|"]
    o = data["original"]
    used = sum(sum(v.values()) for k, v in o["counts"].items() if k != EVAL_SPLIT)
    lines.append(f"| original `{o['root']}` | {used} | {_fmt(o['counts'].get('train'))} "
                 f"| {_fmt(o['counts'].get('val'))} | - |")
    for n in data["new"]:
        lines.append(f"| new `{n['root']}` | {n['used']} of {n['found']} | {_fmt(n['counts']['train'])} "
                     f"| {_fmt(n['counts']['val'])} | {n['dropped']['in_eval_split']} / {n['dropped']['duplicate']} |")
    f = data["feedback"]
    conflicted = f" ({f['conflicted']} with conflicting labels left out)" if f.get("conflicted") else ""
    lines.append(f"| feedback `{f['dir']}`{conflicted} | {f['used']} of {f['found']} | "
                 f"{_fmt(f['counts']['train'])} | - "
                 f"| {f['dropped']['in_eval_split']} / {f['dropped']['duplicate']} |")
    lines += ["", "## Candidate training settings", "",
              f"From the base model unless overridden ({tr['overridden'] or 'none'}): backbone `{tr['backbone']}`, "
              f"{tr['epochs']} epochs, lr {tr['lr']}, {tr['aug_views']} augmented views, "
              f"last block {'fine-tuned' if tr['unfreeze_last_block'] else 'frozen'}.", ""]
    return "\n".join(lines)


def _fmt(counts: dict[str, int] | None) -> str:
    return ", ".join(f"{c} {n}" for c, n in (counts or {}).items()) or "-"
