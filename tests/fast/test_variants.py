"""Model variants (int8, fp16) and device choice, on a tiny ONNX model and synthetic images (seconds, no ../shared).

The tiny model reads the mean red level of an image: class ``dark`` below mid-grey, ``light`` above. Its conv has a
second channel, ``gain`` times the first, in the same tensor: with a large gain, int8's per-tensor activation
scale is too coarse for the first channel, so the int8 variant really loses accuracy and the rule must drop it.
"""
from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.metadata import ModelCard
from imgcls.onnx_model import (
    DeviceError,
    OnnxClassifier,
    available_variants,
    choose_providers,
    choose_variant,
    cpu_has_int8_dot,
)
from imgcls.preprocess import Preprocess
from imgcls.registry import ModelError, Registry, sha256_file
from tests.conftest import PY, ROOT, child_env
from training.variants import MAX_ACCURACY_DROP, build_variants

LABELS = ["dark", "light"]
PRE = Preprocess(16, 16, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def tiny_onnx(path: Path, gain: float) -> None:
    """Conv 1x1 (red, gain * red) -> features; global average pool -> linear -> softmax -> probabilities."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = np.zeros((2, 3, 1, 1), np.float32)
    w[0, 0], w[1, 0] = 1.0, gain
    head = np.array([[-10.0, 10.0], [0.0, 0.0]], np.float32)  # (in, out): logits -10r, +10r
    nodes = [
        helper.make_node("Conv", ["input", "w"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "head"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, 16, 16])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 2]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", 2, 16, 16])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(head, "head")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 10
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def photos(root: Path, n: int = 12) -> list[tuple[Path, int]]:
    """Flat-colour images: red levels 70..110 (dark) and 145..185 (light), other channels random."""
    rng = np.random.default_rng(0)
    samples = []
    for label, base in enumerate((70, 145)):
        folder = root / LABELS[label]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n):
            rgb = (base + 40 * i // n, *rng.integers(0, 256, 2))
            path = folder / f"{i}.png"
            Image.new("RGB", (20, 20), tuple(int(c) for c in rgb)).save(path)
            samples.append((path, label))
    return samples


def new_version(reg: Registry, tmp: Path, gain: float) -> tuple[str, dict]:
    samples = photos(tmp / "photos")
    staging = reg.staging_dir()
    tiny_onnx(staging / "model.onnx", gain)
    meta = {"version": f"tiny-{gain:g}", "labels": LABELS, "preprocessing": PRE.to_dict()}
    meta["variants"] = build_variants(staging, meta, samples, samples)
    return reg.add(staging, ModelCard.from_dict(meta)), meta


def test_variants_are_kept_checksummed_and_scored(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "artifacts")
    version, meta = new_version(reg, tmp_path, gain=1.0)
    model_dir = reg.resolve(version)
    saved = json.loads((model_dir / "metadata.json").read_text())
    for name, file in (("int8", "model.int8.onnx"), ("fp16", "model.fp16.onnx")):
        v = saved["variants"][name]
        assert v["kept"] and v["file"] == file and v["accuracy"] == 1.0 and v["n"] == 24
        assert saved["files"][file] == sha256_file(model_dir / file)
        assert 0 < v["max_abs_diff_probabilities"] < 0.05 and v["log_loss"] < 0.2
        model = OnnxClassifier(model_dir, device="cpu", variant=name)
        assert model.variant == name
        # every output of the fp32 model is still there
        assert {o.name for o in model.session.get_outputs()} == {"probabilities", "features"}
    assert OnnxClassifier(model_dir, device="cpu", variant="fp32").variant == "fp32"
    assert available_variants(model_dir, ModelCard.from_dict(saved)) == ["fp32", "int8", "fp16"]


def test_a_variant_that_loses_accuracy_is_dropped_and_says_why(tmp_path: Path, caplog) -> None:
    reg = Registry(tmp_path / "artifacts")
    with caplog.at_level(logging.WARNING, logger="training.variants"):
        version, meta = new_version(reg, tmp_path, gain=2000.0)
    model_dir = reg.resolve(version)
    int8 = meta["variants"]["int8"]
    assert not int8["kept"] and "file" not in int8
    assert int8["accuracy_drop"] > MAX_ACCURACY_DROP and "points below fp32" in int8["reason"]
    assert "int8 variant not kept" in caplog.text
    assert not (model_dir / "model.int8.onnx").exists() and "model.int8.onnx" not in reg.metadata(version)["files"]
    assert meta["variants"]["fp16"]["kept"]  # fp16 keeps the small channel exactly enough
    with pytest.raises(ModelError, match="no int8 variant"):
        OnnxClassifier(model_dir, device="cpu", variant="int8")


def test_an_unchecksummed_variant_file_is_never_loaded(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "artifacts")
    staging = reg.staging_dir()
    tiny_onnx(staging / "model.onnx", 1.0)
    version = reg.add(staging, ModelCard(version="v", labels=LABELS, preprocessing=PRE))
    model_dir = reg.resolve(version)
    model_dir.chmod(0o755)
    tiny_onnx(model_dir / "model.int8.onnx", 1.0)  # dropped in later, not in the metadata's sha256s
    assert available_variants(model_dir, reg.card(version)) == ["fp32"]
    assert OnnxClassifier(model_dir, device="cpu").variant == "fp32"


def test_auto_picks_fp16_on_cuda_int8_on_vnni_else_fp32() -> None:
    every = ["fp32", "int8", "fp16"]
    assert choose_variant("auto", every, on_cuda=True, int8_cpu=True) == "fp16"
    assert choose_variant("auto", ["fp32", "int8"], on_cuda=True, int8_cpu=True) == "fp32"
    assert choose_variant("auto", every, on_cuda=False, int8_cpu=True) == "int8"
    assert choose_variant("auto", every, on_cuda=False, int8_cpu=False) == "fp32"
    assert choose_variant("auto", ["fp32"], on_cuda=False, int8_cpu=True) == "fp32"
    assert choose_variant("fp16", every, on_cuda=False, int8_cpu=False) == "fp16"
    with pytest.raises(ModelError, match="no int8 variant"):
        choose_variant("int8", ["fp32"], on_cuda=False, int8_cpu=True)
    with pytest.raises(ValueError, match="variant must be"):
        choose_variant("bf16", every, on_cuda=False, int8_cpu=True)


def test_cpu_flags_from_proc_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    assert not cpu_has_int8_dot(info)
    for flag in ("avx512_vnni", "amx_int8", "avx_vnni"):
        info.write_text(f"processor\t: 0\nflags\t\t: fpu avx2 {flag} avx512f\n")
        assert cpu_has_int8_dot(info)
    assert not cpu_has_int8_dot(tmp_path / "absent")


def test_device_cuda_without_cuda_is_an_error_and_auto_falls_back(tmp_path: Path, caplog) -> None:
    import onnxruntime as ort

    cpu_only = ["CPUExecutionProvider"]
    with pytest.raises(DeviceError, match="no CUDA provider"):
        choose_providers("cuda", cpu_only, gpu=True)
    with caplog.at_level(logging.INFO, logger="imgcls.onnx_model"):
        assert choose_providers("auto", cpu_only, gpu=False) == cpu_only
    assert "DEVICE=auto: using the CPU" in caplog.text
    gpu_build = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert choose_providers("auto", gpu_build, gpu=False) == cpu_only
    assert choose_providers("cuda", gpu_build, gpu=True) == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    trt = choose_providers("auto", gpu_build, gpu=True, tensorrt_cache=tmp_path / "trt")
    assert trt[0] == ("TensorrtExecutionProvider", {"trt_engine_cache_enable": True,
                                                    "trt_engine_cache_path": str(tmp_path / "trt")})
    assert choose_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], gpu=True,
                            tensorrt_cache=tmp_path)[0] == "CUDAExecutionProvider"  # no TensorRT: CUDA alone

    if "CUDAExecutionProvider" not in ort.get_available_providers():  # the real thing, on this CPU build
        reg = Registry(tmp_path / "artifacts")
        staging = reg.staging_dir()
        tiny_onnx(staging / "model.onnx", 1.0)
        version = reg.add(staging, ModelCard(version="v", labels=LABELS, preprocessing=PRE))
        with pytest.raises(DeviceError, match="DEVICE=cuda"):
            OnnxClassifier(reg.resolve(version), device="cuda")
        model = OnnxClassifier(reg.resolve(version), device="auto")
        assert model.providers == ["CPUExecutionProvider"] and model.device == "cpu"


def run_batch(reg: Registry, version: str, inputs: Path, out: Path, variant: str) -> subprocess.CompletedProcess:
    cmd = [PY, "-m", "cli.batch", "--artifacts", str(reg.root), "--model", version, "--input", str(inputs),
           "--output", str(out), "--variant", variant, "--no-progress"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=child_env(), timeout=120)


def test_batch_job_and_evaluate_take_a_variant(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "artifacts")
    version, _ = new_version(reg, tmp_path, gain=1.0)
    out = tmp_path / "rows.jsonl"
    proc = run_batch(reg, version, tmp_path / "photos", out, "int8")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 24 and all(r["label"] == Path(r["path"]).parent.name for r in rows)

    data = tmp_path / "data"
    for split in ("train", "val", "test"):
        photos(data / split, n=3)
    proc = subprocess.run([PY, "-m", "training", "--artifacts", str(reg.root), "evaluate", "--model", version,
                           "--data", str(data), "--variant", "fp16", "--json"],
                          cwd=ROOT, capture_output=True, text=True, env=child_env(), timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["variant"] == "fp16" and result["accuracy"] == 1.0 and result["n"] == 6


def test_batch_job_asked_for_a_dropped_variant_says_so(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "artifacts")
    version, _ = new_version(reg, tmp_path, gain=2000.0)
    proc = run_batch(reg, version, tmp_path / "photos", tmp_path / "rows.jsonl", "int8")
    assert proc.returncode == 2 and "has no int8 variant (it holds fp32, fp16)" in proc.stderr
