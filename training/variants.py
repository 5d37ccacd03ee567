"""Faster copies of an exported model: int8 (static QDQ quantization, per channel) for CPUs, fp16 for GPUs.

Each variant is built from the version's fp32 ``model.onnx`` with ONNX Runtime's and ONNX's public tools, scored
on the test split by the same metrics as fp32 (:func:`training.evaluate.classification_metrics`, on the same
decoded images) and kept only when it loses at most 0.3 points of accuracy and 0.01 of log-loss; a variant that
cannot be built or run is not kept either. What happened is recorded in ``metadata.json`` under ``variants`` and
logged; a kept variant's file is checksummed with the version's other files.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from imgcls.loader import preprocessed_batches
from imgcls.metadata import ModelCard
from imgcls.onnx_model import OnnxClassifier
from imgcls.preprocess import Preprocess
from imgcls.registry import ONNX_FILE, VARIANT_FILES
from training.data import Sample
from training.evaluate import classification_metrics, predict_samples

log = logging.getLogger(__name__)
MAX_ACCURACY_DROP = 0.003  # 0.3 points
MAX_LOG_LOSS_RISE = 0.01
CALIBRATION_IMAGES = 200
# Quantized: the convolutions and what lies between them. The head (Gemm/MatMul) and softmax stay float, so the
# probabilities keep their resolution; every graph output of the fp32 model stays an output.
INT8_OP_TYPES = ["Conv", "Clip", "Relu", "MaxPool", "AveragePool", "Pad", "Resize"]


def calibration_batch(samples: list[Sample], preprocess: Preprocess, n: int = CALIBRATION_IMAGES) -> np.ndarray:
    """Up to ``n`` training images spread evenly over ``samples`` (so every class is seen), preprocessed as served."""
    paths = [str(p) for p, _ in samples[:: max(1, len(samples) // n)][:n]]
    batches = [b for _, b, _ in preprocessed_batches(paths, preprocess) if b is not None]
    if not batches:
        raise ValueError("none of the calibration images could be read")
    return np.concatenate(batches)


def quantize_int8(fp32: Path, out: Path, calibration: np.ndarray, batch_size: int = 16) -> None:
    """Static int8 quantization: QDQ format, per-channel int8 weights, uint8 activations calibrated (min/max) on
    ``calibration`` (preprocessed images); after ONNX Runtime's pre-processing (shape inference, graph fusions)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    input_name = onnx.load(str(fp32)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(range(0, len(calibration), batch_size))

        def get_next(self) -> dict[str, np.ndarray] | None:
            i = next(self.batches, None)
            return None if i is None else {input_name: calibration[i:i + batch_size]}

    root = logging.getLogger()
    quiet = _DropInfo()  # onnxruntime.quantization logs one INFO line per rescaled weight on the root logger
    root.addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            prepared = Path(tmp) / "prepared.onnx"
            quant_pre_process(str(fp32), str(prepared))
            quantize_static(str(prepared), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            op_types_to_quantize=INT8_OP_TYPES,
                            # bounds the calibrator's memory: min/max are folded in every 4 batches
                            extra_options={"CalibMaxIntermediateOutputs": 4})
    finally:
        root.removeFilter(quiet)


class _DropInfo(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO


def convert_fp16(fp32: Path, out: Path) -> None:
    """Weights and activations in float16; inputs and outputs stay float32, so callers feed the same tensors."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(fp32)), keep_io_types=True), str(out))


BUILDERS: dict[str, Callable[[Path, Path, np.ndarray], None]] = {
    "int8": quantize_int8,
    "fp16": lambda fp32, out, _calibration: convert_fp16(fp32, out),
}


def build_variants(model_dir: Path, meta: dict[str, Any], calibration: list[Sample], test: list[Sample],
                   names: tuple[str, ...] = ("int8", "fp16")) -> dict[str, dict[str, Any]]:
    """Build, score and keep or drop each variant in ``names`` inside ``model_dir`` (a version being built, whose
    fp32 ``model.onnx`` is there); returns what to record as ``metadata["variants"]``. Dropped files are deleted."""
    preprocess = Preprocess.from_dict(meta["preprocessing"])
    record: dict[str, dict[str, Any]] = {}
    card = ModelCard.from_dict(meta)  # not yet checksummed: no files recorded
    models: dict[str, OnnxClassifier] = {"fp32": OnnxClassifier(model_dir, device="cpu", card=card,
                                                                variant="fp32")}
    calib = calibration_batch(calibration, preprocess) if "int8" in names else np.zeros(0, np.float32)
    for name in names:
        path, start = model_dir / VARIANT_FILES[name], time.perf_counter()
        try:
            BUILDERS[name](model_dir / ONNX_FILE, path, calib)
            models[name] = OnnxClassifier(model_dir, device="cpu", card=card, variant=name)
            record[name] = {"build_s": round(time.perf_counter() - start, 2)}
        except Exception as e:  # noqa: BLE001 - a variant that cannot be built or loaded is simply not kept
            path.unlink(missing_ok=True)
            record[name] = {"kept": False, "reason": f"could not be built or loaded: {type(e).__name__}: {e}"}
            log.warning("%s variant not kept: %s", name, record[name]["reason"])
    if len(models) == 1:
        return record

    # One pass over the test images: each batch is decoded once and run by every model.
    order = list(models)
    start = time.perf_counter()
    stacked, y, paths, _ = predict_samples(lambda b: np.stack([models[v].predict(b) for v in order], axis=1),
                                           preprocess, test, desc="evaluate variants")
    probs = {v: stacked[:, i] for i, v in enumerate(order)}
    labels = list(meta["labels"])
    base = classification_metrics(y, probs["fp32"], labels, paths)
    for name in order[1:]:
        m = classification_metrics(y, probs[name], labels, paths)
        drop, rise = base["accuracy"] - m["accuracy"], m["log_loss"] - base["log_loss"]
        problems = []
        if drop > MAX_ACCURACY_DROP + 1e-9:
            problems.append(f"accuracy {m['accuracy']:.4f} is {drop * 100:.2f} points below fp32's "
                            f"{base['accuracy']:.4f} (at most {MAX_ACCURACY_DROP * 100:.1f} allowed)")
        if rise > MAX_LOG_LOSS_RISE:
            problems.append(f"log-loss {m['log_loss']:.4f} is {rise:.4f} above fp32's {base['log_loss']:.4f} "
                            f"(at most {MAX_LOG_LOSS_RISE} allowed)")
        kept = not problems
        entry = record[name]
        entry.update({
            "kept": kept, "file": VARIANT_FILES[name], "n": m["n"], "accuracy": m["accuracy"],
            "log_loss": m["log_loss"], "roc_auc": m["roc_auc"], "accuracy_drop": drop, "log_loss_rise": rise,
            "max_abs_diff_probabilities": float(np.abs(probs[name] - probs["fp32"]).max()),
            "evaluated_on": models[name].providers[0],
        })
        if kept:
            log.info("%s variant kept: accuracy %.4f (fp32 %.4f), log-loss %.4f (fp32 %.4f), max |p - p_fp32| %.1e",
                     name, m["accuracy"], base["accuracy"], m["log_loss"], base["log_loss"],
                     entry["max_abs_diff_probabilities"])
        else:
            entry["reason"] = "; ".join(problems)
            del entry["file"]
            (model_dir / VARIANT_FILES[name]).unlink(missing_ok=True)
            log.warning("%s variant not kept: %s", name, entry["reason"])
    for name in order[1:]:
        record[name]["evaluate_s"] = round(time.perf_counter() - start, 2)  # the shared pass
    return record
