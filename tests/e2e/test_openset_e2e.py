"""End to end on the real photos (read in place; skipped without them): the density fallback on data whose class
names are no ImageNet concept still flags the open-set photos."""
from __future__ import annotations

import json
from pathlib import Path

from bench.openset import OOD, relabel
from imgcls.registry import Registry
from tests.conftest import DATA, ROOT, needs_data, run_cli

pytestmark = needs_data


def test_density_fallback_flags_other_photos_on_classes_that_are_no_imagenet_concept(tmp_path: Path) -> None:
    data = relabel(DATA, tmp_path / "parity")  # classes "even"/"odd": the file name's hash, not what is shown
    artifacts = tmp_path / "artifacts"
    # Frozen features are a pure function of (file sha256, weights, view): share the project's cache between runs.
    shared_cache = ROOT / "artifacts" / "cache" / "features"
    shared_cache.mkdir(parents=True, exist_ok=True)
    (artifacts / "cache").mkdir(parents=True)
    (artifacts / "cache" / "features").symlink_to(shared_cache)
    run_cli("train", "--data", str(data), "--limit-per-class", "200", "--aug-views", "0", "--novelty-scores",
            "density", "--ood", str(OOD), artifacts=artifacts)
    meta = Registry(artifacts).metadata(Registry(artifacts).current())
    assert meta["labels"] == ["even", "odd"] and meta["novelty"]["scores"] == ["density"]
    o = meta["metrics"]["test"]["open_set"]
    print(f"\ndensity fallback (classes even/odd by file-hash parity): {o['flagged_out']:.2%} of {o['n_out']} "
          f"open-set photos flagged, {o['flagged_in']:.2%} of {o['n_in']} test photos flagged, "
          f"AUROC {o['auroc']:.4f}, FPR@95%TPR {o['fpr_at_95_tpr']:.4f}")
    print(json.dumps({k: v for k, v in o.items() if k != "novelty"}))
    assert o["n_out"] == 427 and o["flagged_in"] <= 0.03
    assert o["auroc"] >= 0.97 and o["flagged_out"] >= 0.9
