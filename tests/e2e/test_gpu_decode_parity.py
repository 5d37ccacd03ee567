"""GPU JPEG decoding (nvImageCodec) against the CPU path on real photos: the model's probabilities within 1e-3.

Runs only where nvImageCodec decodes on a GPU (bench/gpu/run.sh runs it there on the carried photos and model:
``GPU_BENCH_PHOTOS``, ``GPU_BENCH_ARTIFACTS``); elsewhere it skips, saying why. Both paths feed the same model
session, so the difference measured is the decoding's alone."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from imgcls.loader import preprocessed_batches
from imgcls.registry import Registry
from tests.conftest import DATA

TOLERANCE = 1e-3


def gpu_decoder():
    try:
        from imgcls.gpu_decode import GpuDecodeUnavailable, nvimgcodec_decoder
    except ImportError as e:
        pytest.skip(f"nvImageCodec is not importable: {e}")
    try:
        return nvimgcodec_decoder("gpu")
    except GpuDecodeUnavailable as e:
        pytest.skip(f"no GPU decoding here: {e}")


def test_gpu_decoded_photos_give_the_cpu_paths_probabilities(request) -> None:
    decoder = gpu_decoder()
    from imgcls.gpu_decode import BatchDecoder
    from imgcls.onnx_model import OnnxClassifier

    photos = Path(os.environ.get("GPU_BENCH_PHOTOS") or DATA / "test")
    artifacts = os.environ.get("GPU_BENCH_ARTIFACTS") or request.getfixturevalue("trained")
    paths = [str(p) for p in sorted(photos.rglob("*.jpg"))]
    assert paths, f"no photos under {photos}"
    model = OnnxClassifier(Registry(artifacts).resolve("current"), device="auto", variant="fp32")
    batch = BatchDecoder(model.preprocess, decoder, workers=os.cpu_count() or 2)
    try:
        gpu = list(batch.batches(paths, 64))
    finally:
        batch.close()
    cpu = list(preprocessed_batches(paths, model.preprocess, 64))
    worst, pixels = 0.0, 0.0
    for (ok, array, failures), (ok_cpu, array_cpu, failures_cpu) in zip(gpu, cpu, strict=True):
        assert ok == ok_cpu and failures == failures_cpu
        if array is not None:
            worst = max(worst, float(np.abs(model.predict(array) - model.predict(array_cpu)).max()))
            pixels = max(pixels, float(np.abs(array - array_cpu).max()) * 255 * model.preprocess.std[0])
    print(f"{len(paths)} photos on {model.providers[0]}: nvImageCodec decoded {batch.stats}; largest probability "
          f"difference {worst:.2e}, largest pixel difference {pixels:.1f} of 255")
    assert batch.stats["nvimgcodec"] > 0.9 * len(paths), batch.stats  # the photos really took the GPU path
    assert worst <= TOLERANCE
