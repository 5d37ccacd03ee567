"""No broken model ever gets promoted: reference batches catch NaN and replaced weights behind good checksums."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from imgcls.metadata import METADATA_FILE
from imgcls.onnx_model import OnnxClassifier
from imgcls.promotion import promote
from imgcls.reference import REFERENCE_FILE, check_reference
from imgcls.registry import ONNX_FILE, ModelError, Registry, sha256_file
from tests.tiny_model import add_tiny_version, make_nan_version, tiny_onnx

ROOT = Path(__file__).resolve().parents[1]


def test_a_good_version_passes_and_its_reference_is_checksummed(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    v = add_tiny_version(reg, promote=True)
    assert reg.current() == v
    meta = reg.metadata(v)
    assert REFERENCE_FILE in meta["files"] and meta["reference"]["images"] == 4
    check_reference(reg.resolve(v))
    check_reference(OnnxClassifier(reg.resolve(v), device="cpu"))


def test_the_nan_version_is_refused_by_promote(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    good = add_tiny_version(reg, promote=True)
    nan = make_nan_version(reg, good)
    OnnxClassifier(reg.resolve(nan), device="cpu")  # checksums match: only running it can tell
    with pytest.raises(ModelError, match="non-finite"):
        promote(reg, nan)
    assert reg.current() == good
    assert len((tmp_path / "promotions.jsonl").read_text().splitlines()) == 1


def test_replaced_weights_with_finite_outputs_are_refused(tmp_path: Path) -> None:
    """Another model's weights give valid probabilities; only the recorded outputs show they are not this one's."""
    reg = Registry(tmp_path)
    v = add_tiny_version(reg)
    folder = reg.resolve(v)
    onnx_path = folder / ONNX_FILE
    onnx_path.chmod(0o644)
    tiny_onnx(onnx_path, 2, seed=7)
    meta_path = folder / METADATA_FILE
    meta_path.chmod(0o644)
    meta = json.loads(meta_path.read_text())
    meta["files"][ONNX_FILE] = sha256_file(onnx_path)
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelError, match="differs from its reference outputs"):
        promote(reg, v)


def test_a_version_without_reference_still_gets_a_finiteness_check(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    good = add_tiny_version(reg)
    nan = make_nan_version(reg, good)
    for v in (good, nan):  # versions trained before reference batches existed
        folder = reg.resolve(v)
        (folder / REFERENCE_FILE).unlink()
        meta = json.loads((folder / METADATA_FILE).read_text())
        del meta["files"][REFERENCE_FILE]
        (folder / METADATA_FILE).chmod(0o644)
        (folder / METADATA_FILE).write_text(json.dumps(meta))
    promote(reg, good)
    with pytest.raises(ModelError, match="non-finite"):
        promote(reg, nan)


def test_cli_promote_of_the_nan_version_is_a_one_line_error(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    good = add_tiny_version(reg, promote=True)
    nan = make_nan_version(reg, good)
    proc = subprocess.run([sys.executable, "-m", "training", "--artifacts", str(tmp_path), "promote", nan],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "non-finite" in lines[0] and "Traceback" not in proc.stderr
    assert reg.current() == good


def test_every_variant_a_version_holds_passes_its_own_reference(tiny_registry: Path) -> None:
    from imgcls.metadata import ModelCard
    from imgcls.onnx_model import available_variants

    folder = Registry(tiny_registry).resolve("current")
    variants = available_variants(folder, ModelCard.load(folder))
    for v in variants:  # the serving variant is whatever MODEL_VARIANT or the CPU picks: each must verify
        check_reference(OnnxClassifier(folder, device="cpu", variant=v))
    check_reference(folder)  # promote's check: all of them
    with np.load(folder / REFERENCE_FILE) as ref:
        assert {"probabilities", *(f"probabilities_{v}" for v in variants if v != "fp32")} <= set(ref.files)
