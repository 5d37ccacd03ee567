"""bench/gpu/wheels.py: a wheel split into pieces for the device calls is joined and checked before installing."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.gpu.wheels import MANIFEST, join_and_check, sha256, split


def staged(tmp_path: Path) -> tuple[Path, bytes]:
    data = bytes(range(256)) * 1000  # 256,000 bytes
    wheel = tmp_path / "big-1.0-py3-none-any.whl"
    wheel.write_bytes(data)
    small = tmp_path / "small-1.0-py3-none-any.whl"
    small.write_bytes(b"small wheel")
    stage = tmp_path / "stage"
    stage.mkdir()
    pieces = split(wheel, 100_000, stage)
    (stage / small.name).write_bytes(small.read_bytes())
    manifest = {"wheels": [{"file": wheel.name, "sha256": sha256(wheel), "pieces": pieces},
                           {"file": small.name, "sha256": sha256(small)}]}
    (stage / MANIFEST).write_text(json.dumps(manifest))
    return stage, data


def test_pieces_are_joined_in_order_and_checked(tmp_path: Path) -> None:
    stage, data = staged(tmp_path)
    assert sorted(p.name for p in stage.glob("*.part-*")) == [f"big-1.0-py3-none-any.whl.part-0{i}" for i in range(3)]
    wheels = join_and_check(stage)
    assert [w.name for w in wheels] == ["big-1.0-py3-none-any.whl", "small-1.0-py3-none-any.whl"]
    assert wheels[0].read_bytes() == data


def test_a_missing_or_damaged_piece_stops_the_install(tmp_path: Path) -> None:
    stage, _ = staged(tmp_path)
    (stage / "big-1.0-py3-none-any.whl.part-01").unlink()
    with pytest.raises(SystemExit, match="pieces not staged: big-1.0-py3-none-any.whl.part-01"):
        join_and_check(stage)
    (tmp_path / "again").mkdir()
    stage, _ = staged(tmp_path / "again")
    piece = stage / "big-1.0-py3-none-any.whl.part-02"
    piece.write_bytes(piece.read_bytes()[:-1] + b"\x00")
    with pytest.raises(SystemExit, match="sha256 differs"):
        join_and_check(stage)
