"""Real (tiny) ONNX model versions for fast tests, and "the NaN version" of any version.

``add_tiny_version`` builds a 3x3 convolution + global pooling + linear head + softmax with the serving
model's two outputs (``probabilities``, ``features``), a reference batch and a metadata.json the service reads:
a model ONNX Runtime really runs, in milliseconds, with no torch and no photos.
``make_nan_version`` copies a version, overwrites its weights with NaN and recomputes the checksums, as the
adversarial review did: only the reference batch can tell it from a good version.
"""
from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from imgcls.metadata import METADATA_FILE, ModelCard
from imgcls.preprocess import SYMMETRIC_MEAN, SYMMETRIC_STD, Preprocess
from imgcls.promotion import promote as promote_version
from imgcls.reference import write_reference
from imgcls.registry import HEAD_FILE, ONNX_FILE, Registry, now_iso, sha256_file

INPUT_SIZE, CHANNELS = 32, 4


def tiny_onnx(path: Path, n_classes: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the tiny model to ``path``; returns its linear head (for class activation maps)."""
    rng = np.random.default_rng(seed)
    conv_w = rng.standard_normal((CHANNELS, 3, 3, 3)).astype(np.float32) * 0.3
    head_w = rng.standard_normal((n_classes, CHANNELS)).astype(np.float32)
    head_b = rng.standard_normal(n_classes).astype(np.float32) * 0.1
    nodes = [
        helper.make_node("Conv", ["input", "conv_w"], ["conv"], strides=[4, 4], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv"], ["features"]),
        helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("Gemm", ["flat", "head_w", "head_b"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, INPUT_SIZE, INPUT_SIZE])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", n_classes]),
         helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", CHANNELS, None, None])],
        [numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(head_w, "head_w"),
         numpy_helper.from_array(head_b, "head_b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9  # what onnxruntime 1.31 reads
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return {"weight": head_w, "bias": head_b}


def add_tiny_version(registry: Registry, version: str | None = None, labels: tuple[str, ...] = ("cat", "dog"),
                     seed: int = 0, promote: bool = False) -> str:
    """A new registry version holding the tiny model; its reference batch is random-texture images."""
    staging = registry.staging_dir()
    pre = Preprocess(INPUT_SIZE, INPUT_SIZE + 4, SYMMETRIC_MEAN, SYMMETRIC_STD)
    np.savez(staging / HEAD_FILE, **tiny_onnx(staging / ONNX_FILE, len(labels), seed))
    version = version or f"tiny-{seed}-{np.random.default_rng().integers(1 << 32):08x}"
    meta = {"version": version, "created_at": now_iso(), "labels": list(labels),
            "preprocessing": pre.to_dict(), "backbone": "tiny", "metrics": {}}
    inputs = np.random.default_rng(seed).uniform(-1, 1, (4, 3, INPUT_SIZE, INPUT_SIZE)).astype(np.float32)
    meta["reference"] = write_reference(staging, inputs, ModelCard.from_dict(meta))
    registry.add(staging, ModelCard.from_dict(meta))
    if promote:
        promote_version(registry, version, reason="test")
    return version


def make_nan_version(registry: Registry, version: str) -> str:
    """A copy of ``version`` whose ONNX weights are all NaN, with sha256s recomputed to match (so checksums
    pass). Added to the registry unpromoted; returns its name."""
    src = registry.resolve(version)
    name = f"{src.name}-nan"
    dst = registry.models / name
    shutil.copytree(src, dst)
    for p in dst.rglob("*"):
        if p.is_file():
            p.chmod(stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IROTH)
    model = onnx.load(str(dst / ONNX_FILE))
    for init in model.graph.initializer:
        arr = numpy_helper.to_array(init)
        if arr.dtype.kind == "f":
            init.CopyFrom(numpy_helper.from_array(np.full_like(arr, np.nan), init.name))
    onnx.save(model, str(dst / ONNX_FILE))
    meta = json.loads((dst / METADATA_FILE).read_text())
    meta["version"] = name
    meta["files"] = {n: sha256_file(dst / n) for n in meta["files"]}
    (dst / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return name
