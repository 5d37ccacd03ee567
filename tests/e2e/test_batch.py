"""The batch job's slow parts: the Ray engine on a local Ray against the local engine, and the batch benchmark,
on the tiny model and synthetic images. Everything else about the job is in tests/fast/test_batch.py."""
from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest

from tests import synthetic
from tests.conftest import PY, ROOT, child_env


def batch_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m cli.batch ARGS`` as a user runs it."""
    return subprocess.run([PY, "-m", "cli.batch", "--no-progress", *args], cwd=ROOT, capture_output=True,
                          text=True, env=child_env(), timeout=timeout)


def run_ok(*args: str) -> subprocess.CompletedProcess:
    proc = batch_cli(*args)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def write_pictures(folder: Path, per_class: int, flat: bool = False) -> None:
    for label in synthetic.CLASSES:
        target = folder if flat else folder / label
        target.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            (target / f"{label}.{i}.jpg").write_bytes(synthetic.image_bytes(label, 80_000 + i, size=(320, 240)))


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed: pip install '.[ray]'")
def test_ray_engine_matches_local_engine_and_resumes(tiny_registry, tmp_path):
    photos = tmp_path / "photos"
    write_pictures(photos, 8)
    (photos / "bad").mkdir()
    (photos / "bad" / "notes-not-a-photo.jpg").write_text("this is not an image\n")
    data = (photos / "red" / "red.0.jpg").read_bytes()
    (photos / "bad" / "truncated.jpg").write_bytes(data[: len(data) * 6 // 10])
    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    common = ["--input", str(photos), "--artifacts", str(tiny_registry), "--batch-size", "8"]
    run_ok(*common, "--output", str(local_out))

    # resumability: the first 10 rows are already there and must not be redone
    local_rows = read_jsonl(local_out)
    ray_out.write_text("".join(json.dumps(r) + "\n" for r in local_rows[:10]))
    proc = run_ok(*common, "--output", str(ray_out), "--engine", "ray")
    assert "10 of 26 inputs are already in" in proc.stderr

    ray_rows = {r["path"]: r for r in read_jsonl(ray_out)}
    assert len(ray_rows) == len(read_jsonl(ray_out)) == len(local_rows) == 26
    for row in local_rows:
        other = ray_rows[row["path"]]
        assert other["label"] == row["label"] and other["error"] == row["error"]
        if row["error"] is None:
            assert other["score"] == pytest.approx(row["score"], abs=1e-5)
    assert sum(r["error"] is not None for r in ray_rows.values()) == 2


def test_bench_reports_job_and_model_only_throughput(tiny_registry, tmp_path):
    photos = tmp_path / "photos"
    write_pictures(photos, 14, flat=True)
    figures = tmp_path / "bench.json"
    proc = subprocess.run([PY, "-m", "bench.bench_batch", "--artifacts", str(tiny_registry), "--data", str(photos),
                           "--rounds", "1", "--batch-size", "8", "--json", str(figures)],
                          cwd=ROOT, capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(figures.read_text())
    assert r["images"] == 42 and r["batch_size"] == 8
    assert r["job_images_per_s"] > 0 and r["model_only_images_per_s"] > 0
    # the figures are rounded to 3 decimals
    assert r["ratio"] == pytest.approx(r["job_images_per_s"] / r["model_only_images_per_s"], rel=0.01, abs=1e-3)
    assert f"ratio job / model-only: {r['ratio']:.3f}" in proc.stdout
