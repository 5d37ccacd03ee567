"""The open-set detector end to end through the real CLI: a scratch CNN trained on generated images, evaluated with
``--ood``, its report plots and the batch job's rows (no photos needed, but a real training run: tens of seconds)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from imgcls.novelty import NOVELTY_FILE
from tests.conftest import ROOT, run_cli


def _images(folder: Path, colour: tuple[int, int, int], n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        noise = rng.normal(0, 25, (48, 64, 3))
        img = np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / f"{seed}-{i}.png")


def test_every_version_has_a_detector_and_answers_say_known_and_novelty(tmp_path: Path) -> None:
    """The real CLI on generated images with the from-scratch CNN (no ImageNet head: the density score)."""
    data, ood = tmp_path / "data", tmp_path / "ood"
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        _images(data / split / "red", (200, 40, 40), n, hash(split) % 1000)
        _images(data / split / "blue", (40, 40, 200), n, hash(split) % 1000 + 1)
    _images(ood / "stripes", (40, 200, 40), 10, 7)  # green: neither class
    artifacts = tmp_path / "artifacts"
    run_cli("train", "--data", str(data), "--backbone", "scratch", "--epochs", "2", "--aug-views", "0",
            "--ood", str(ood), artifacts=artifacts)
    version_dir = next((artifacts / "models").iterdir())
    meta = json.loads((version_dir / "metadata.json").read_text())
    assert NOVELTY_FILE in meta["files"] and meta["novelty"]["scores"] == ["density"]
    assert meta["calibration"]["temperature"] > 0
    test = meta["metrics"]["test"]
    assert "ece" in test and "ece_uncalibrated" in test and test["open_set"]["n_out"] == 10
    assert (version_dir / "report" / "novelty.png").stat().st_size > 0
    assert (version_dir / "report" / "reliability.png").stat().st_size > 0

    out = run_cli("evaluate", "--model", str(version_dir), "--data", str(data), "--ood", str(ood), "--json",
                  artifacts=artifacts)
    result = json.loads(out.stdout)
    assert result["open_set"]["flagged_out"] == test["open_set"]["flagged_out"]

    rows = tmp_path / "rows.jsonl"
    subprocess.run([sys.executable, "-m", "cli.batch", "--input", str(ood), "--output", str(rows), "--model",
                    str(version_dir), "--no-progress"], cwd=ROOT, check=True, capture_output=True)
    lines = [json.loads(line) for line in rows.read_text().splitlines()]
    assert len(lines) == 10 and all(isinstance(r["known"], bool) and r["novelty"] >= 0 for r in lines)
    assert [not r["known"] for r in lines].count(True) == round(test["open_set"]["flagged_out"] * 10)
