"""ONNX export with a dynamic batch axis, in one file, checked against torch on real images."""
from __future__ import annotations

import contextlib
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from imgcls.loader import preprocessed_batches
from imgcls.preprocess import Preprocess
from training.models import TransferModel

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4


class ExportError(RuntimeError):
    pass


class _Exported(nn.Module):
    """Outputs ``probabilities`` (N, classes) and ``features`` (N, K, h, w), the last convolutional feature map."""

    def __init__(self, model: TransferModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.model.features(x)
        return torch.softmax(self.model.head(self.model.pool(fmap)), dim=1), fmap


def parity_batch(paths: list[Path], preprocess: Preprocess) -> np.ndarray:
    """The readable images among ``paths``, preprocessed as served: the real inputs the export check compares on."""
    batches = [b for _, b, _ in preprocessed_batches(paths, preprocess) if b is not None]
    if not batches:
        raise ExportError("none of the images chosen for the ONNX parity check could be read")
    return np.concatenate(batches)


def export_onnx(model: TransferModel, path: Path, check_batch: np.ndarray, opset: int = 18) -> dict:
    """Export ``model`` to ``path`` and compare ONNX Runtime with torch on ``check_batch`` (real, preprocessed).

    Raises :class:`ExportError` when the largest absolute difference of probabilities exceeds 1e-4.
    """
    import onnxruntime as ort

    model = model.eval().to(memory_format=torch.contiguous_format)
    wrapper = _Exported(model).eval()
    example = torch.from_numpy(check_batch[:2])
    # torch.onnx prints progress to stdout; keep stdout for the CLI's own output.
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(
            wrapper, (example,), str(path), input_names=["input"], output_names=["probabilities", "features"],
            dynamic_shapes={"x": {0: torch.export.Dim("batch", min=1, max=4096)}}, opset_version=opset,
            dynamo=True, external_data=False, optimize=True,
        )
    with torch.inference_mode():
        expected_probs, expected_fmap = (t.numpy() for t in wrapper(torch.from_numpy(check_batch)))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs, fmap = session.run(["probabilities", "features"], {"input": check_batch})
    diff = float(np.abs(probs - expected_probs).max())
    fmap_diff = float(np.abs(fmap - expected_fmap).max())
    # A second batch size proves the batch axis is really dynamic.
    single = session.run(["probabilities"], {"input": check_batch[:1]})[0]
    diff = max(diff, float(np.abs(single - expected_probs[:1]).max()))
    log.info("ONNX parity on %d real images: max |p_onnx - p_torch| = %.2e", len(check_batch), diff)
    if not diff <= PARITY_TOLERANCE:
        path.unlink(missing_ok=True)
        raise ExportError(f"ONNX Runtime differs from torch by {diff:.2e} > {PARITY_TOLERANCE:.0e} in probabilities")
    return {"opset": opset, "parity_images": int(len(check_batch)), "max_abs_diff_probabilities": diff,
            "max_abs_diff_features": fmap_diff}


def head_weights(model: TransferModel) -> dict[str, np.ndarray] | None:
    """The linear head's weights (for CAMs computed with numpy at serving time), when the head is linear."""
    linear = model.linear_head
    if linear is None:
        return None
    return {"weight": linear.weight.detach().numpy().astype(np.float32),
            "bias": linear.bias.detach().numpy().astype(np.float32)}
