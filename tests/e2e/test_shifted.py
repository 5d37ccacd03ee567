"""Cats and dogs from other sources than the training archive, through the real CLI: `imgcls evaluate --shifted`.

The session's model (EfficientNet-Lite0 trained on 150 real photos per class) must take full-resolution ImageNet
photos of breeds its training photos may never show for cats and dogs, not "neither", and still refuse photos of
other things. The photos are read in place and only measured, never trained on.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import DATA, run_cli

SHIFTED = DATA.parent / "shifted"
OTHER = DATA.parent / "open-set" / "other"


def test_photos_from_other_sources_are_cats_and_dogs_and_other_things_are_neither(trained: Path) -> None:
    if not (SHIFTED / "imagenet").is_dir() or not OTHER.is_dir():
        pytest.skip(f"{SHIFTED} or {OTHER} is absent: the licensed photos are read in place")
    out = run_cli("evaluate", "--data", str(DATA), "--ood", str(OTHER), "--shifted", str(SHIFTED / "imagenet"),
                  str(SHIFTED / "lowres"), "--json", artifacts=trained)
    result = json.loads(out.stdout)
    meta = json.loads(run_cli("show", "--full", artifacts=trained).stdout)
    novelty = meta["novelty"]
    assert novelty["scores"] == ["imagenet"], novelty["decides"]
    assert [c["name"].split(",")[0] for c in novelty["concepts"]] == ["domestic cat", "dog"]
    assert [c["imagenet_classes"] for c in novelty["concepts"]] == [5, 118]
    imagenet, lowres = result["shifted"]
    print(f"\nImageNet photos: {imagenet['answered_neither']:.2%} of {imagenet['n']} answered neither "
          f"({imagenet['neither']}), accuracy {imagenet['accuracy']:.4f}; low-resolution Kaggle photos: accuracy "
          f"{lowres['accuracy']:.4f}, log-loss {lowres['log_loss']:.4f}, neither {lowres['answered_neither']:.2%}; "
          f"other things refused: {result['open_set']['flagged_out']:.2%}; test split neither "
          f"{result['open_set']['flagged_in']:.2%}")
    assert imagenet["n"] == 61 and round(imagenet["answered_neither"] * 61) <= 2
    assert lowres["n"] == 1000 and lowres["answered_neither"] <= 0.03 and lowres["accuracy"] >= 0.97
    assert result["open_set"]["flagged_out"] >= 0.98 and result["open_set"]["flagged_in"] <= 0.02
