"""A version's torch checkpoint (what was trained, plus any random weights) and re-export from it."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from imgcls.metadata import ModelCard
from training.data import create_dataset, default_data_dir
from training.export import export_onnx, parity_batch
from training.models import TransferModel, create_model

CHECKPOINT_FILE = "checkpoint.pt"


def save_checkpoint(model: TransferModel, path: Path, pretrained: bool) -> None:
    """The trained parameters; all of them when the backbone's weights cannot be rebuilt (random or scratch)."""
    state = model.state_dict()
    if pretrained:
        trained = {n for n, p in model.named_parameters() if p.requires_grad}
        state = {k: v for k, v in state.items() if k in trained or k.startswith("head.")}
    torch.save(state, path)


def load_model(model_dir: Path) -> TransferModel:
    """Rebuild a version's torch model from its metadata and checkpoint."""
    meta = ModelCard.load(model_dir).to_dict()  # the training settings are the trainer's own record (card.extra)
    t = meta["training"]
    model = create_model(meta["backbone"], len(meta["labels"]), weights=Path(t["weights"]) if t["weights"] else None,
                         random_init=not meta["pretrained"], dropout=t["dropout"],
                         unfreeze_last_block=meta["unfreeze_last_block"],
                         # a concept head's buffers (masks, the ImageNet classifier) come from the checkpoint
                         concept_masks=np.zeros((len(meta["labels"]), 1000), bool)
                         if (meta.get("head") or {}).get("concepts") else None)
    state = torch.load(model_dir / CHECKPOINT_FILE, map_location="cpu", weights_only=True)
    missing = model.load_state_dict(state, strict=not meta["pretrained"])
    if meta["pretrained"] and missing.unexpected_keys:
        raise ValueError(f"checkpoint of {meta['version']} has unexpected keys {missing.unexpected_keys[:5]}")
    return model.eval()


def export_version(model_dir: Path, output: Path, data: str | None = None) -> dict:
    """Export a version again (e.g. another opset or file) with the same parity check on real images."""
    model = load_model(model_dir)
    ds = create_dataset(data or default_data_dir())
    check = parity_batch([p for p, _ in ds.splits["val"][:16]], model.preprocess)
    output.parent.mkdir(parents=True, exist_ok=True)
    info = export_onnx(model, output, check)
    return {"model": ModelCard.load(model_dir).version, "output": str(output), **info}
