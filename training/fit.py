"""Training the trainable part (head, optionally the last block) on cached features, with early stopping."""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from training.features import Features
from training.models import TransferModel

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    epochs: int = 40
    lr: float = 1e-3
    last_block_lr_factor: float = 0.1  # the unfrozen last block learns 10x slower than the new head
    weight_decay: float = 1e-4
    batch_size: int = 64
    patience: int = 6
    seed: int = 0


def _trainable_forward(model: TransferModel, x: torch.Tensor) -> torch.Tensor:
    """Logits from cached features: pooled vectors, or the body's output when the last block trains too."""
    if model.unfreeze_last_block:
        return model.head(model.pool(model.last(x)))
    return model.head(x)


def _evaluate(model: TransferModel, feats: Features, batch_size: int = 256) -> tuple[float, float]:
    model.eval()
    loss, correct = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(feats.y), batch_size):
            x = torch.from_numpy(feats.x[i:i + batch_size])
            y = torch.from_numpy(feats.y[i:i + batch_size])
            logits = _trainable_forward(model, x)
            loss += nn.functional.cross_entropy(logits, y, reduction="sum").item()
            correct += (logits.argmax(1) == y).sum().item()
    n = max(1, len(feats.y))
    return loss / n, correct / n


def fit(model: TransferModel, train_views: list[Features], val: Features, cfg: FitConfig) -> list[dict]:
    """Train on ``train_views`` (each epoch draws one view per image at random); restore the best val-loss epoch.

    Returns the per-epoch history (train/val loss and accuracy).
    """
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    head_params = [p for p in model.head.parameters() if p.requires_grad]
    groups = [{"params": head_params, "lr": cfg.lr}]
    if model.unfreeze_last_block:
        lr = cfg.lr if model.trainable_body else cfg.lr * cfg.last_block_lr_factor
        groups.append({"params": [p for p in model.last.parameters() if p.requires_grad], "lr": lr})
    optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs)
    n = len(train_views[0].y)
    y_all = torch.from_numpy(train_views[0].y)
    history: list[dict] = []
    best, best_state, bad_epochs = math.inf, None, 0
    bar = tqdm(range(1, cfg.epochs + 1), desc="train head", unit="epoch", leave=False)
    for epoch in bar:
        start = time.perf_counter()
        model.train()
        order = rng.permutation(n)
        view_of = rng.integers(0, len(train_views), n)
        total_loss, correct = 0.0, 0
        for i in range(0, n, cfg.batch_size):
            idx = order[i:i + cfg.batch_size]
            x = torch.from_numpy(np.stack([train_views[v].x[j] for j, v in zip(idx, view_of[idx])]))
            y = y_all[idx]
            logits = _trainable_forward(model, x)
            loss = nn.functional.cross_entropy(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
        scheduler.step()
        val_loss, val_acc = _evaluate(model, val)
        row = {"epoch": epoch, "train_loss": total_loss / n, "train_accuracy": correct / n,
               "val_loss": val_loss, "val_accuracy": val_acc, "seconds": round(time.perf_counter() - start, 3)}
        history.append(row)
        log.info("epoch %d: train loss %.4f acc %.4f | val loss %.4f acc %.4f", epoch, row["train_loss"],
                 row["train_accuracy"], val_loss, val_acc)
        bar.set_postfix(val_loss=f"{val_loss:.4f}", val_acc=f"{val_acc:.4f}")
        if val_loss < best - 1e-5:
            best, bad_epochs = val_loss, 0
            best_state = copy.deepcopy({k: v for k, v in model.state_dict().items()})
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                log.info("early stop at epoch %d: val loss has not improved for %d epochs", epoch, cfg.patience)
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return history
