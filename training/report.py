"""The evaluation report: JSON metrics, a short markdown summary and the plots a CNN tutorial shows."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from imgcls.cam import class_activation_map  # noqa: E402
from imgcls.images import decode_image  # noqa: E402
from training import openset_report  # noqa: E402
from training.models import TransferModel  # noqa: E402


def learning_curves(history: list[dict], out: Path) -> None:
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    for ax, key in zip(axes, ("loss", "accuracy")):
        ax.plot(epochs, [h[f"train_{key}"] for h in history], label="train")
        ax.plot(epochs, [h[f"val_{key}"] for h in history], label="val")
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def confusion(matrix: list[list[int]], classes: list[str], out: Path) -> None:
    m = np.asarray(matrix)
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 1.2 * len(classes) + 1.5))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def first_layer_filters(model: TransferModel, out: Path) -> None:
    w = model.first_conv().weight.detach().float().numpy()  # (out, in, k, k)
    n = min(32, w.shape[0])
    cols = 8
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(cols, (n + cols - 1) // cols))
    for ax in np.ravel(axes):
        ax.axis("off")
    for i, ax in zip(range(n), np.ravel(axes)):
        f = w[i].transpose(1, 2, 0) if w.shape[1] == 3 else w[i, 0]
        ax.imshow((f - f.min()) / (np.ptp(f) + 1e-8), interpolation="nearest")
    fig.suptitle("first-layer filters")
    fig.savefig(out, dpi=90)
    plt.close(fig)


def feature_maps(model: TransferModel, image: np.ndarray, out: Path) -> None:
    """The first convolution's activations for one preprocessed image."""
    with torch.inference_mode():
        maps = model.first_conv()(torch.from_numpy(image[None]))[0].numpy()
    n, cols = min(16, maps.shape[0]), 8
    fig, axes = plt.subplots(n // cols, cols, figsize=(cols, n // cols))
    for i, ax in enumerate(np.ravel(axes)):
        ax.imshow(maps[i], cmap="viridis")
        ax.axis("off")
    fig.suptitle("first-layer feature maps")
    fig.savefig(out, dpi=90)
    plt.close(fig)


def class_activation_maps(model: TransferModel, paths: list[Path], classes: list[str], out: Path) -> None:
    """Each image with the CAM of its predicted class (head weights over the last feature map)."""
    linear = model.linear_head
    if linear is None or not paths:
        return
    pre = model.preprocess
    fig, axes = plt.subplots(1, len(paths), figsize=(3 * len(paths), 3.3))
    for ax, path in zip(np.atleast_1d(axes), paths):
        x = pre(decode_image(path, draft_size=pre.resize_size))
        with torch.inference_mode():
            fmap = model.features(torch.from_numpy(x[None]))[0]
            probs = torch.softmax(linear(fmap.mean((1, 2))), 0)
            k = int(probs.argmax())
        cam = class_activation_map(linear.weight[k].detach().numpy(), fmap.numpy())
        ax.imshow(pre.denormalize(x))
        ax.imshow(cam, cmap="jet", alpha=0.45, extent=(0, pre.input_size, pre.input_size, 0),
                  interpolation="bilinear")
        ax.set_title(f"{classes[k]} {float(probs[k]):.2f}", fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out, dpi=90)
    plt.close(fig)


def _split_row(name: str, m: dict) -> str:
    """One row of the report's table: a split of the training data, or a folder of photos from another source."""
    neither = m.get("answered_neither", (m.get("open_set") or {}).get("flagged_in"))
    ece = f"{m['ece']:.4f}" if m.get("ece") is not None else "-"
    return (f"| {name} | {m['n']} | {m['accuracy']:.4f} | {m['log_loss']:.4f} | {ece} | "
            f"{'-' if neither is None else f'{neither:.2%}'} |")


def write_report(out: Path, meta: dict, history: list[dict], model: TransferModel | None,
                 cam_paths: list[Path]) -> None:
    """metrics.json, report.md and PNG plots into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    test = meta["metrics"]["test"]
    (out / "metrics.json").write_text(json.dumps(meta["metrics"], indent=2) + "\n")
    if history:
        learning_curves(history, out / "learning_curves.png")
    confusion(test["confusion_matrix"], meta["labels"], out / "confusion_matrix.png")
    if model is not None:
        first_layer_filters(model, out / "first_layer_filters.png")
        feature_maps(model, model.preprocess(decode_image(cam_paths[0])), out / "feature_maps.png")
        class_activation_maps(model, cam_paths, meta["labels"], out / "class_activation_maps.png")
    rows = "\n".join(f"| {c} | {v['precision']:.4f} | {v['recall']:.4f} | {v['support']} |"
                     for c, v in test["per_class"].items())
    wrong = "\n".join(f"- `{Path(m['path']).name}`: {m['label']} predicted {m['predicted']} ({m['score']:.3f})"
                      for m in test["misclassified"][:30]) or "- none"
    auc = "n/a" if test["roc_auc"] is None else f"{test['roc_auc']:.4f}"
    (out / "report.md").write_text(f"""# Model {meta['version']}

Backbone `{meta['backbone']}`, {len(meta['labels'])} classes, data `{meta['data']['root']}`
(manifest sha256 `{meta['data']['manifest_sha256'][:16]}...`).

| split | n | accuracy | log-loss | calibration error | answered neither |
|---|---|---|---|---|---|
""" + "\n".join(_split_row(s, m) for s, m in meta["metrics"].items() if s != "shifted")
        + "".join("\n" + _split_row(f"`{m['data']}` (another source)", m) for m in meta["metrics"].get("shifted", []))
        + f"""

Test ROC-AUC: {auc}

| class | precision | recall | support |
|---|---|---|---|
{rows}

## Misclassified test images
{wrong}

![learning curves](learning_curves.png) ![confusion matrix](confusion_matrix.png)
![first-layer filters](first_layer_filters.png) ![feature maps](feature_maps.png)
![class activation maps](class_activation_maps.png)

""" + openset_report.section(out, test))
