"""The report's calibration and open-set part: a reliability diagram, the novelty distributions, a markdown section."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

RELIABILITY_PNG, NOVELTY_PNG = "reliability.png", "novelty.png"


def reliability_diagram(result: dict, out: Path) -> None:
    """Accuracy against confidence per bin, before and after temperature scaling (the diagonal is perfect)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="perfect")
    for key, ece_key, name, marker in (("reliability_uncalibrated", "ece_uncalibrated", "before", "s"),
                                      ("reliability", "ece", "after", "o")):
        bins = [b for b in result.get(key) or [] if b["n"]]
        if bins:
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker=marker,
                    label=f"{name}: ECE {result[ece_key]:.4f}")
    ax.set_xlabel("confidence (top probability)")
    ax.set_ylabel("accuracy")
    ax.set_title("reliability (test split)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def novelty_distributions(open_set: dict, out: Path) -> None:
    """Histograms of novelty (log scale) for the in-distribution split and the --ood photos, with the threshold."""
    known, other = np.asarray(open_set["novelty"]["in"]), np.asarray(open_set["novelty"]["out"])
    values = np.r_[known, other]
    values = values[values > 0]
    lo, hi = (values.min(), values.max()) if len(values) else (1e-2, 1e2)
    edges = np.geomspace(min(lo, 0.5), max(hi, 2.0), 50)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.hist(np.maximum(known, edges[0]), bins=edges, alpha=0.6, label=f"test split ({len(known)})")
    if len(other):
        ax.hist(np.maximum(other, edges[0]), bins=edges, alpha=0.6, label=f"--ood photos ({len(other)})")
    ax.axvline(1.0, color="black", lw=1, ls="--", label="threshold (novelty 1)")
    ax.set_xscale("log")
    ax.set_xlabel("novelty (higher: less like the training data)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def section(out: Path, result: dict) -> str:
    """Draw the plots of one evaluation ``result`` into ``out``; return the report's markdown section for them."""
    lines = []
    if "ece" in result:
        reliability_diagram(result, out / RELIABILITY_PNG)
        lines += ["## Calibration", ""]
        if result.get("temperature"):
            lines += [f"Temperature scaling fitted on the val split: T = {result['temperature']:.3f}."]
        before = f"{result['ece_uncalibrated']:.4f} before, " if "ece_uncalibrated" in result else ""
        lines += [f"Test expected calibration error (15 bins): {before}{result['ece']:.4f} served.", "",
                  f"![reliability]({RELIABILITY_PNG})", ""]
    o = result.get("open_set")
    if o:
        nov = o["detector"]
        novelty_distributions(o, out / NOVELTY_PNG)
        lines += ["## Open set: neither of the classes", "",
                  f"Scores {', '.join(nov['scores'])}; threshold calibrated to accept {nov['accept_target']:.0%} "
                  f"of the val split (accepted {nov['val_accepted']:.2%}). "
                  f"Test images flagged unknown: {o['flagged_in']:.2%} of {o['n_in']}."]
        if o["n_out"]:
            lines += [f"`{o['ood']}`: {o['flagged_out']:.2%} of {o['n_out']} flagged; AUROC {o['auroc']:.4f}, "
                      f"FPR at 95% TPR {o['fpr_at_95_tpr']:.4f}."]
        lines += ["", f"![novelty]({NOVELTY_PNG})", ""]
    return "\n".join(lines)


def write_evaluation_report(folder: Path, result: dict) -> None:
    """``python -m training evaluate --report DIR``: the plots, ``report.md`` and ``metrics.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "report.md").write_text(f"# Evaluation of {result['model']} on {result.get('data')} "
                                      f"[{result.get('split')}]\n\nAccuracy {result['accuracy']:.4f}, log-loss "
                                      f"{result['log_loss']:.4f}, n={result['n']}.\n\n{section(folder, result)}")
    (folder / "metrics.json").write_text(json.dumps(result, indent=2) + "\n")
