"""The batch job on real photos read in place: the Ray engine on a local Ray against the local engine, and the batch
benchmark. Everything else about the job is tested fast on the tiny model (tests/fast/test_batch.py)."""
from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import DATA, PY, ROOT, child_env, needs_data

pytestmark = needs_data
TEST_CATS = sorted((DATA / "test" / "cat").glob("*.jpg"))
TEST_DOGS = sorted((DATA / "test" / "dog").glob("*.jpg"))


def batch_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m imgcls.batch ARGS`` as a user runs it."""
    return subprocess.run([PY, "-m", "imgcls.batch", "--no-progress", *args], cwd=ROOT, capture_output=True,
                          text=True, env=child_env(), timeout=timeout)


def run_ok(*args: str) -> subprocess.CompletedProcess:
    proc = batch_cli(*args)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def make_bad_files(folder: Path) -> tuple[Path, Path]:
    """A text file named .jpg and a real JPEG cut to 60% of its bytes."""
    folder.mkdir(parents=True, exist_ok=True)
    text = folder / "notes-not-a-photo.jpg"
    text.write_text("this is not an image\n")
    data = TEST_DOGS[0].read_bytes()
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(data[: len(data) * 6 // 10])
    return text, truncated


@pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="ray is not installed: pip install '.[ray]'")
def test_ray_engine_matches_local_engine_and_resumes(trained, tmp_path):
    photos = tmp_path / "photos"
    for src in TEST_CATS[20:32] + TEST_DOGS[20:32]:
        (photos / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, photos / src.parent.name / src.name)
    make_bad_files(photos / "bad")
    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    common = ["--input", str(photos), "--artifacts", str(trained), "--batch-size", "8"]
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


def test_bench_reports_job_and_model_only_throughput(trained, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for src in TEST_CATS[40:60] + TEST_DOGS[40:60]:
        shutil.copy(src, photos / src.name)
    figures = tmp_path / "bench.json"
    proc = subprocess.run([PY, "-m", "bench.bench_batch", "--artifacts", str(trained), "--data", str(photos),
                           "--rounds", "1", "--batch-size", "8", "--json", str(figures)],
                          cwd=ROOT, capture_output=True, text=True, env=child_env(), timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(figures.read_text())
    assert r["images"] == 40 and r["batch_size"] == 8
    assert r["job_images_per_s"] > 0 and r["model_only_images_per_s"] > 0
    assert r["ratio"] == pytest.approx(r["job_images_per_s"] / r["model_only_images_per_s"], rel=0.01)
    assert f"ratio job / model-only: {r['ratio']:.3f}" in proc.stdout
