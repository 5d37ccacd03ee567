"""A model version's reference batch: real preprocessed inputs and the probabilities its model gave them.

Written into the version folder at training time (``reference.npz``, checksummed with the other files) and run
again before a version may serve: by ``Registry.promote`` and by the service before it swaps a version in. A
version whose weights were damaged (NaN, zeros, another model's), even with checksums recomputed to match, gives
outputs that are not finite, do not sum to 1, or differ from the recorded ones, and is refused.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from imgcls.onnx_model import OnnxClassifier
from imgcls.registry import ModelError

REFERENCE_FILE = "reference.npz"
REFERENCE_IMAGES = 4  # enough to catch damaged weights; small enough to keep in every version (~0.6 MB)
ATOL = 1e-3  # on probabilities: far above CPU/GPU float32 noise (1e-6), far below any real change of weights


def write_reference(model_dir: Path, inputs: np.ndarray, metadata: dict[str, Any]) -> dict[str, Any]:
    """Run the model in ``model_dir`` (not yet in the registry) on the first :data:`REFERENCE_IMAGES` of
    ``inputs`` and save them with its probabilities as ``reference.npz``. Returns a summary for the metadata.

    Inputs are stored as float16 (half the size) and the expected outputs computed from those same rounded
    inputs, so a later check compares like with like."""
    x = np.ascontiguousarray(inputs[:REFERENCE_IMAGES]).astype(np.float16)
    model = OnnxClassifier(model_dir, device="cpu", metadata=metadata)
    probs = model.predict(x.astype(np.float32))
    _check_outputs(probs, len(x), len(model.labels), model.version)
    np.savez_compressed(model_dir / REFERENCE_FILE, inputs=x, probabilities=probs.astype(np.float32))
    return {"file": REFERENCE_FILE, "images": int(len(x)), "atol": ATOL}


def check_reference(model: OnnxClassifier | Path | str, *, atol: float = ATOL) -> None:
    """Raise :class:`ModelError` unless ``model`` (a loaded classifier or a version folder, which is then loaded
    on CPU and checksum-verified) reproduces its reference batch within ``atol``.

    A version from before reference batches gets a weaker check: finite probabilities summing to 1 on a fixed
    synthetic batch."""
    if not isinstance(model, OnnxClassifier):
        try:
            model = OnnxClassifier(Path(model), device="cpu")
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types for an unloadable file
            raise ModelError(f"model {Path(model).name} cannot be loaded: {e}") from e
    path = model.model_dir / REFERENCE_FILE
    if path.is_file():
        with np.load(path) as ref:
            x, expected = ref["inputs"].astype(np.float32), ref["probabilities"]
    else:
        s = model.preprocess.input_size
        x, expected = np.random.default_rng(0).standard_normal((2, 3, s, s), dtype=np.float32), None
    try:
        probs = model.predict(x)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"model {model.version} fails on its reference batch: {e}") from e
    _check_outputs(probs, len(x), len(model.labels), model.version)
    if expected is not None:
        diff = float(np.abs(probs - expected).max())
        if not diff <= atol:
            raise ModelError(f"model {model.version} differs from its reference outputs by {diff:.2e} > {atol:.0e}"
                             " (damaged or replaced weights)")


def _check_outputs(probs: np.ndarray, n: int, n_labels: int, version: str) -> None:
    if probs.shape != (n, n_labels):
        raise ModelError(f"model {version} gives probabilities of shape {probs.shape}, not ({n}, {n_labels})")
    if not np.isfinite(probs).all():
        raise ModelError(f"model {version} gives non-finite probabilities (NaN or inf) on its reference batch")
    worst = float(np.abs(probs.sum(axis=1) - 1).max())
    if worst > 1e-3:
        raise ModelError(f"model {version}'s probabilities do not sum to 1 (off by {worst:.2e})")
