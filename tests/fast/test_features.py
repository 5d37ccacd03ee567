"""Frozen features through ONNX Runtime: the same numbers as eager torch, exported once per weights (seconds)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from imgcls.preprocess import Preprocess
from training.features import FeatureExtractor
from training.models import Backbone, TransferModel

PRE = Preprocess(24, 28, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def tiny_model(seed: int, unfreeze_last_block: bool = False) -> TransferModel:
    torch.manual_seed(seed)
    body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU6())
    last = nn.Sequential(nn.Conv2d(4, 8, 3, stride=2, padding=1), nn.ReLU6())
    body[1].running_mean.uniform_(-0.5, 0.5)  # non-trivial batch-norm statistics, as a pretrained body has
    return TransferModel(Backbone(body, last, 8, PRE, f"tiny-{seed}", False), 2,
                           unfreeze_last_block=unfreeze_last_block)


def images(folder: Path, n: int = 5) -> list[tuple[Path, int]]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        path = folder / f"{i}.png"
        Image.fromarray(rng.integers(0, 256, (30, 36, 3), dtype=np.uint8)).save(path)
        out.append((path, i % 2))
    return out


def eager(model: TransferModel, samples: list[tuple[Path, int]], cut: str) -> np.ndarray:
    x = torch.from_numpy(np.stack([PRE(Image.open(p).convert("RGB")) for p, _ in samples]))
    with torch.inference_mode():
        out = model.body(x)
        return (out if cut == "body" else model.pool(model.last(out))).numpy()


def test_onnx_features_match_torch_and_the_export_is_cached(tmp_path: Path) -> None:
    samples = images(tmp_path / "img")
    frozen = tmp_path / "frozen"
    model = tiny_model(0)
    feats = FeatureExtractor(model, None, frozen_dir=frozen).extract(samples, view=0)
    assert feats.x.shape == (5, 8) and list(feats.y) == [0, 1, 0, 1, 0]
    np.testing.assert_allclose(feats.x, eager(model, samples, "pooled"), atol=1e-5)
    (exported,) = frozen.glob("*.onnx")
    stamp = exported.stat().st_mtime_ns

    # The same weights again (a new process would build them from the same seed): the file is reused.
    again = FeatureExtractor(tiny_model(0), None, frozen_dir=frozen)
    np.testing.assert_allclose(again.extract(samples, view=0).x, feats.x, atol=1e-6)
    assert list(frozen.glob("*.onnx")) == [exported] and exported.stat().st_mtime_ns == stamp

    # Other weights: another export; augmented views run through it too.
    other = FeatureExtractor(tiny_model(1), None, frozen_dir=frozen)
    assert other.extract(samples, view=1).x.shape == (5, 8)
    assert len(list(frozen.glob("*.onnx"))) == 2


def test_unfrozen_last_block_caches_the_body_feature_map(tmp_path: Path) -> None:
    samples = images(tmp_path / "img", n=3)
    model = tiny_model(2, unfreeze_last_block=True)
    feats = FeatureExtractor(model, tmp_path / "cache", frozen_dir=tmp_path / "frozen").extract(samples)
    assert feats.x.shape == (3, 4, 24, 24)
    np.testing.assert_allclose(feats.x, eager(model, samples, "body"), atol=1e-5)


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_with_a_gpu_the_frozen_part_runs_in_this_process(tmp_path: Path, monkeypatch) -> None:
    """CUDA cannot start in forked loader workers: where a GPU would be used, the workers only decode and augment
    and one session here runs every batch. (Without a GPU ONNX Runtime runs the session asking for CUDA on the CPU,
    so the same numbers come back.)"""
    import training.features

    samples = images(tmp_path / "img")
    model = tiny_model(3)
    on_cpu = FeatureExtractor(model, None, frozen_dir=tmp_path / "frozen").extract_views(samples, (0, 1))
    sessions = []
    real_session = training.features._session
    monkeypatch.setattr(training.features, "providers_for",
                        lambda device: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(training.features, "_session", lambda *a, **k: sessions.append(a) or real_session(a[0]))
    on_gpu = FeatureExtractor(model, None, frozen_dir=tmp_path / "frozen").extract_views(samples, (0, 1))
    assert len(sessions) == 1  # one session, opened in this process
    for a, b in zip(on_cpu, on_gpu):
        np.testing.assert_allclose(a.x, b.x, atol=1e-6)
