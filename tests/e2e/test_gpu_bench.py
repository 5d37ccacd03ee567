"""bench/gpu/run.sh end to end on this CPU (DEVICE=cpu QUICK=1): every section of the GPU run, with small sizes,
writes its figures beside the targets, so that a GPU machine's minutes go to measuring, not debugging. The
figures here mean nothing; the plumbing does."""
from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

from tests.conftest import DATA, PY, ROOT, child_env, needs_data


@needs_data
def test_the_gpu_run_runs_end_to_end_on_the_cpu(trained: Path, tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    for label in ("cat", "dog"):
        (photos / label).mkdir(parents=True)
        for p in sorted((DATA / "test" / label).glob("*.jpg"))[:12]:
            shutil.copy2(p, photos / label / p.name)
    out = tmp_path / "out"
    env = child_env(DEVICE="cpu", QUICK="1", OUT=str(out), PYTHON=PY, GPU_STAGE=str(tmp_path / "no-stage"),
                    GPU_BENCH_ARTIFACTS=str(trained), GPU_BENCH_PHOTOS=str(photos))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run(["bash", "bench/gpu/run.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "gpu-cpu-quick.json").read_text())
    errors = {k: v["error"] for k, v in result.items() if isinstance(v, dict) and "error" in v}
    assert not errors, errors
    assert result["machine"]["onnxruntime_package"] == "onnxruntime"
    for name in ("model_fp32", "model_fp16"):
        assert result[name]["providers"] == ["CPUExecutionProvider"]
        assert all(row["host_img_s"] > 0 for row in result[name]["batches"].values())
    assert result["model_fp16"]["variant"] == "fp16"
    assert result["decoding"]["images"] == 24 and result["decoding"]["cpu_pillow_img_s"] > 0
    job = result["batch_cpu_decode"]
    assert job["rows"] == job["images"] == 24 and job["errors"] == 0 and job["label_matches_folder"] >= 0.9
    for name in ("http", "http_workers"):
        assert result[name]["model_runtime"]["providers"] == ["CPUExecutionProvider"]
        loads = result[name]["loads"]
        assert [x["clients"] for x in loads] == [4, 8]
        assert all(x["non_200"] == 0 and x["requests"] == 60 and x["p99_ms"] >= x["p50_ms"] > 0 for x in loads)
        assert (out / f"server-{name}.log").stat().st_size > 0
    assert [result[name]["model_runtime"]["config"]["workers"] for name in ("http", "http_workers")] == ["1", "2"]
    targets = result["against_targets"]
    assert targets["batch_job_img_s"] == {"target": 5000, "measured": job["img_s"]}
