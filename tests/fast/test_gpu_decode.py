"""imgcls.gpu_decode: nvImageCodec batches mapped back by index, the CPU path as fallback, the same failures.

The decoding runs on nvImageCodec for real: its CPU backend (libjpeg-turbo) here, its GPU backend where a GPU
decodes (that case skips elsewhere, saying why). Skipped as a whole where ``nvidia-nvimgcodec-cu13`` is not
installed. Probabilities on real photos are compared in tests/e2e/test_gpu_decode_parity.py."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from imgcls.loader import preprocessed_batches
from imgcls.onnx_model import choose_providers, tensorrt_precision
from imgcls.preprocess import Preprocess
from tests import synthetic

nvimgcodec = pytest.importorskip("nvidia.nvimgcodec", reason="nvidia-nvimgcodec-cu13 is not installed")

from imgcls.gpu_decode import BatchDecoder, GpuDecodeUnavailable, nvimgcodec_decoder  # noqa: E402

PRE = Preprocess(input_size=32, resize_size=40, mean=(0.5,) * 3, std=(0.5,) * 3)


def decoder_or_skip(backend: str):
    try:
        return nvimgcodec_decoder(backend)
    except GpuDecodeUnavailable as e:
        pytest.skip(f"no {backend} decoding here: {e}")


@pytest.fixture(params=["cpu", "gpu"])
def backend(request) -> str:
    return request.param


def cut(jpeg: bytes) -> bytes:
    """The first two thirds of a JPEG: its header reads, but it lacks the end-of-image marker."""
    return jpeg[: len(jpeg) * 2 // 3]


def bogus_huffman(jpeg: bytes) -> bytes:
    """A complete JPEG with a broken Huffman table: its header reads, so it goes to nvImageCodec, which fails."""
    at = jpeg.find(b"\xff\xc4") + 5
    return jpeg[:at] + b"\xff" * 4 + jpeg[at + 4:]


def mixed_files(folder: Path) -> list[str]:
    """JPEGs with, in the middle, a text file, a truncated JPEG, one with a broken Huffman table, a PNG, a grayscale
    JPEG, a JPEG large enough for reduced-scale decoding, a rotated one (EXIF) and a missing path."""
    files = []
    for i in range(10):
        files.append(folder / f"ok{i}.jpg")
        files[-1].write_bytes(synthetic.image_bytes("red", i))
    odd = {"text.jpg": b"not an image\n", "cut.jpg": cut(synthetic.image_bytes("blue", 1, size=(80, 60))),
           "huffman.jpg": bogus_huffman(synthetic.image_bytes("blue", 6)),
           "flat.png": synthetic.image_bytes("green", 2, "PNG"), "big.jpg": synthetic.image_bytes("blue", 3,
                                                                                                size=(200, 120))}
    gray = io.BytesIO()
    synthetic.image("green", 4).convert("L").save(gray, "JPEG")
    odd["gray.jpg"] = gray.getvalue()
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    synthetic.image("red", 5, size=(70, 40)).save(rotated, "JPEG", exif=exif)
    odd["rotated.jpg"] = rotated.getvalue()
    for name, data in odd.items():
        (folder / name).write_bytes(data)
    middle = [folder / n for n in odd] + [folder / "missing.jpg"]
    return [str(p) for p in files[:5] + middle + files[5:]]


def test_batches_match_the_cpu_path_index_for_index(tmp_path: Path, backend: str) -> None:
    paths = mixed_files(tmp_path)
    decoder = BatchDecoder(PRE, decoder_or_skip(backend), workers=2)
    try:
        got = list(decoder.batches(paths, batch_size=7, prefetch=1))
    finally:
        decoder.close()
    want = list(preprocessed_batches(paths, PRE, batch_size=7))
    assert len(got) == len(want) == 3
    for (ok, array, failures), (ok_cpu, array_cpu, failures_cpu) in zip(got, want, strict=True):
        assert ok == ok_cpu
        assert failures == failures_cpu  # same indices, reasons and details
        if backend == "cpu":  # libjpeg-turbo on both sides: the same pixels
            np.testing.assert_allclose(array, array_cpu, atol=1e-6)
        else:  # nvJPEG's IDCT rounds differently: a few levels of 255 at most
            assert np.abs(array - array_cpu).mean() < 2 * (2 / 255)
    reasons = {Path(paths[i]).name: f.reason for _, _, fs in got for i, f in fs.items()}
    assert reasons == {"text.jpg": "not_an_image", "cut.jpg": "corrupt", "huffman.jpg": "corrupt",
                       "missing.jpg": "not_found"}
    # the PNG, the large, the rotated and the truncated JPEG took the CPU path; the broken one too, after nvImageCodec
    assert decoder.stats == {"nvimgcodec": 11, "nvimgcodec_failed": 1, "cpu": 5, "one_by_one": 0}


class DroppingDecoder:
    """nvImageCodec 0.7/0.8 as documented: a batch's failed images are left out of the returned list."""

    def __init__(self, decoder) -> None:
        self.decoder = decoder

    def decode(self, src, **kwargs):
        out = self.decoder.decode(src, **kwargs)
        return [img for img in out if img is not None] if isinstance(out, list) else out


def test_a_decoder_that_drops_failures_is_mapped_back_one_by_one(tmp_path: Path) -> None:
    good = [synthetic.image_bytes("red", i) for i in range(4)]
    items = [good[0], good[1], bogus_huffman(good[0]), good[2], good[3]]
    decoder = BatchDecoder(PRE, DroppingDecoder(decoder_or_skip("cpu")))
    out = np.full((5, 3, 32, 32), np.nan, np.float32)
    try:
        failures = decoder.decode_into(items, out)
    finally:
        decoder.close()
    assert list(failures) == [2] and failures[2].reason == "corrupt"
    assert decoder.stats["one_by_one"] == 1
    _, want, _ = next(preprocessed_batches([str(write_file(tmp_path, i, d)) for i, d in enumerate(items)], PRE, 5))
    np.testing.assert_allclose(out[[0, 1, 3, 4]], want, atol=1e-6)  # each image in its own row


def write_file(folder: Path, i: int, data: bytes) -> Path:
    path = folder / f"{i}.jpg"
    path.write_bytes(data)
    return path


def test_no_gpu_decoder_without_a_gpu() -> None:
    from imgcls.onnx_model import gpu_visible

    if gpu_visible():
        pytest.skip("a GPU is visible here")
    with pytest.raises(GpuDecodeUnavailable):
        nvimgcodec_decoder("gpu")


def test_batch_job_decode_gpu_is_refused_without_a_gpu_and_auto_decodes_on_the_cpu(request, tmp_path: Path) -> None:
    from imgcls.batch import BatchError, Options, run_job
    from imgcls.onnx_model import gpu_visible
    from imgcls.registry import Registry

    if gpu_visible():
        pytest.skip("a GPU is visible here")
    tiny_registry = request.getfixturevalue("tiny_registry")  # after the skip: the GPU machine trains nothing
    (tmp_path / "in").mkdir()
    paths = mixed_files(tmp_path / "in")
    model = Registry(tiny_registry).resolve("current")
    with pytest.raises(BatchError, match="--decode gpu"):
        run_job(str(tmp_path / "in"), tmp_path / "gpu.jsonl", model, opts=Options(decode="gpu", progress=False))
    summary = run_job(str(tmp_path / "in"), tmp_path / "auto.jsonl", model,
                      opts=Options(decode="auto", progress=False, batch_size=4))
    assert summary["inputs"] == len(paths) - 1  # the missing path is not found by the folder walk
    rows = [json.loads(line) for line in (tmp_path / "auto.jsonl").read_text().splitlines()]
    assert {Path(r["path"]).name: r["error"] for r in rows if r["error"]} == {
        "text.jpg": "not_an_image", "cut.jpg": "corrupt", "huffman.jpg": "corrupt"}


def test_tensorrt_gets_its_engine_cache_and_the_fp16_flag(tmp_path: Path) -> None:
    providers = choose_providers("cuda", ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                          "CPUExecutionProvider"], True, tmp_path)
    name, options = tensorrt_precision(providers, fp16=True)[0]
    assert name == "TensorrtExecutionProvider"
    assert options["trt_engine_cache_enable"] and options["trt_engine_cache_path"] == str(tmp_path)
    assert options["trt_fp16_enable"] is True
    assert tensorrt_precision(providers, fp16=False)[0][1]["trt_fp16_enable"] is False
    assert tensorrt_precision(["CPUExecutionProvider"], fp16=True) == ["CPUExecutionProvider"]
