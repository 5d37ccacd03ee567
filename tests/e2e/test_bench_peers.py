"""The peers benchmark's harness end to end on one real peer (LitServe) at a tiny scale."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import PY, ROOT, child_env


def test_harness_runs_one_peer_end_to_end(trained: Path, tmp_path: Path) -> None:
    pytest.importorskip("litserve", reason="the peers are an optional extra: pip install '.[peers]' (make bench-peers)")
    out = tmp_path / "peers.json"
    proc = subprocess.run([PY, "-m", "bench.bench_peers", "--artifacts", str(trained), "--peers",
                           "litserve", "--clients", "2", "--duration", "1", "--rounds", "2", "--pipeline-images", "64",
                           "--json", str(out)],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    litserve = next(p for p in results["peers"] if p["name"] == "litserve")
    assert litserve["available"], litserve.get("reason")
    assert litserve["clients_2"]["failures"] == 0 and litserve["clients_2"]["rps"] > 0
    assert litserve["clients_2"]["cpu_ms_per_request"] > 0  # its process tree was found in /proc
    assert litserve["model_file"] == results["model_file"] == results["in_process_pipeline"]["model_file"]
    assert results["in_process_pipeline"]["cpu_ms_per_image"] > 0
    per_cpu = results["in_process_pipeline_per_cpu"]  # one pinned process per CPU, summed
    assert per_cpu["processes"] >= 1 and per_cpu["images_per_s"] > 0 and per_cpu["cpu_ms_per_image"] > 0
    assert len(litserve["clients_2"]["rounds_rps"]) == 2
    assert litserve["non_image"]["status"] >= 400
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| litserve" in proc.stdout
