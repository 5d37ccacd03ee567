"""The feature cache: plain views are reused, augmented views are keyed by the augmentation's settings."""
from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import torch

import training.features
from tests import synthetic
from training.features import FeatureExtractor
from training.models import create_model
from training.presets import ClassificationPresetTrain


def test_changed_augmentation_settings_never_reuse_cached_views(tmp_path: Path, monkeypatch) -> None:
    samples = []
    for i, label in enumerate(synthetic.CLASSES):
        path = tmp_path / f"{label}.jpg"
        path.write_bytes(synthetic.image_bytes(label, i))
        samples.append((path, i))
    torch.manual_seed(0)
    model = create_model("tiny", 3)
    cache = tmp_path / "cache"

    first = FeatureExtractor(model, cache, batch_size=2)
    plain, augmented = first.extract(samples, 0).x, first.extract(samples, 1).x
    assert np.array_equal(FeatureExtractor(model, cache).extract(samples, 1).x, augmented)  # same settings: reused
    # Every view from one decode of each image: the same features as one view at a time.
    both = FeatureExtractor(model, None, batch_size=4).extract_views(samples, (0, 1))
    assert np.array_equal(both[0].x, plain) and np.array_equal(both[1].x, augmented)

    monkeypatch.setattr(training.features, "ClassificationPresetTrain",
                        functools.partial(ClassificationPresetTrain, jitter=0.0, hflip_prob=1.0))
    changed = FeatureExtractor(model, cache, batch_size=2)
    assert changed.augmentation_key != first.augmentation_key
    assert np.array_equal(changed.extract(samples, 0).x, plain)  # the plain view does not depend on augmentation
    assert not np.allclose(changed.extract(samples, 1).x, augmented)  # computed afresh, not the stale features
    views = sorted(p.name for p in next(cache.iterdir()).iterdir())
    assert views == sorted(["view0", f"view1-{first.augmentation_key}", f"view1-{changed.augmentation_key}"])
