"""The peers benchmark: its target arithmetic, and the harness end to end on one real peer at a tiny scale."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

from bench.bench_peers import median_round, target_checks
from tests.conftest import PY, ROOT, child_env


def _run(rps: float, p99: float) -> dict:
    return {"rps": rps, "p99_ms": p99}


def test_target_is_twice_the_best_peer_at_no_worse_p99() -> None:
    peers = [
        {"name": "service-fp32", "available": True, "clients_16": _run(210, 90)},
        {"name": "service-int8", "available": True, "clients_16": _run(190, 80)},
        {"name": "litserve", "available": True, "clients_16": _run(100, 100)},
        {"name": "rayserve", "available": True, "clients_16": _run(60, 50)},
        {"name": "torchserve", "available": False, "reason": "did not start"},
    ]
    checks = {c["service"]: c for c in target_checks(peers, [16])}
    assert checks["service-fp32"]["best_peer"] == "litserve"
    assert checks["service-fp32"]["ratio"] == 2.1 and checks["service-fp32"]["met"]
    assert not checks["service-int8"]["met"]  # 1.9x
    peers[0]["clients_16"]["p99_ms"] = 101  # twice the throughput but a worse p99
    assert not target_checks(peers, [16])[0]["met"]


def test_rounds_keep_the_median_round_whole() -> None:
    rounds = [{"name": "litserve", "available": True, "clients_16": _run(rps, p99)}
              for rps, p99 in [(30, 300), (10, 900), (20, 500)]]
    rounds.append({"name": "litserve", "available": False, "reason": "did not start"})
    merged = median_round(rounds, [16])
    assert merged["rounds"] == 3
    assert merged["clients_16"] == {"rps": 20, "p99_ms": 500, "rounds_rps": [10, 20, 30]}


def test_harness_runs_one_peer_end_to_end(trained: Path, tmp_path: Path) -> None:
    out = tmp_path / "peers.json"
    proc = subprocess.run([PY, "-m", "bench.bench_peers", "--artifacts", str(trained), "--peers",
                           "litserve", "--clients", "2", "--duration", "1", "--rounds", "2", "--json", str(out)],
                          cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads(out.read_text())
    litserve = next(p for p in results["peers"] if p["name"] == "litserve")
    assert litserve["available"], litserve.get("reason")
    assert litserve["clients_2"]["failures"] == 0 and litserve["clients_2"]["rps"] > 0
    assert len(litserve["clients_2"]["rounds_rps"]) == 2
    assert litserve["non_image"]["status"] >= 400
    assert out.with_suffix(".png").stat().st_size > 0
    assert "| litserve" in proc.stdout
