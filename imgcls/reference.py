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

from imgcls.metadata import ModelCard
from imgcls.onnx_model import OnnxClassifier, available_variants
from imgcls.registry import ModelError, verify

__all__ = ["ATOL", "REFERENCE_FILE", "REFERENCE_IMAGES", "check_probabilities", "check_reference", "write_reference"]

REFERENCE_FILE = "reference.npz"
REFERENCE_IMAGES = 4  # enough to catch damaged weights; small enough to keep in every version (~0.6 MB)
ATOL = 1e-3  # on probabilities: far above CPU/GPU float32 noise (1e-6), far below any real change of weights


def write_reference(model_dir: Path, inputs: np.ndarray, card: ModelCard) -> dict[str, Any]:
    """Run the model in ``model_dir`` (not yet in the registry), each of its variants, on the first
    :data:`REFERENCE_IMAGES` of ``inputs`` and save them with the probabilities as ``reference.npz``
    (``probabilities`` for fp32, ``probabilities_<variant>`` for the others). Returns a summary for the metadata.

    Inputs are stored as float16 (half the size) and the expected outputs computed from those same rounded
    inputs, so a later check compares like with like."""
    x = np.ascontiguousarray(inputs[:REFERENCE_IMAGES]).astype(np.float16)
    arrays: dict[str, np.ndarray] = {"inputs": x}
    for variant in available_variants(model_dir, card):
        model = OnnxClassifier(model_dir, device="cpu", card=card, variant=variant)
        probs = model.predict(x.astype(np.float32))
        check_probabilities(probs, len(x), len(model.labels), model.version)
        arrays[_key(variant)] = probs.astype(np.float32)
    np.savez_compressed(model_dir / REFERENCE_FILE, **arrays)
    return {"file": REFERENCE_FILE, "images": int(len(x)), "atol": ATOL,
            "variants": [k.removeprefix("probabilities_") if k != "probabilities" else "fp32"
                         for k in arrays if k != "inputs"]}


def _key(variant: str) -> str:
    return "probabilities" if variant == "fp32" else f"probabilities_{variant}"


def check_reference(model: OnnxClassifier | Path | str, *, atol: float | None = None) -> None:
    """Raise :class:`ModelError` unless ``model`` reproduces its reference batch: within ``atol`` of what the same
    variant gave at training (default :data:`ATOL`, looser for fp16, whose GPU kernels round differently).

    ``model`` is a loaded classifier (its variant is checked), or a version folder: then every variant it holds is
    loaded on CPU (checksums verified) and checked, as ``promote`` does. A version from before reference batches
    gets a weaker check: finite probabilities summing to 1 on a fixed synthetic batch."""
    if not isinstance(model, OnnxClassifier):
        folder = Path(model)
        try:
            card = verify(folder)
            models = [OnnxClassifier(folder, device="cpu", variant=v) for v in available_variants(folder, card)]
        except ModelError:
            raise
        except Exception as e:  # noqa: BLE001 - ONNX Runtime raises its own types for an unloadable file
            raise ModelError(f"model {folder.name} cannot be loaded: {e}") from e
        for m in models:
            check_reference(m, atol=atol)
        return
    path = model.model_dir / REFERENCE_FILE
    expected = None
    if path.is_file():
        with np.load(path) as ref:
            x = ref["inputs"].astype(np.float32)
            if _key(model.variant) in ref.files:
                expected = ref[_key(model.variant)]
    else:
        s = model.preprocess.input_size
        x = np.random.default_rng(0).standard_normal((2, 3, s, s), dtype=np.float32)
    try:
        probs = model.predict(x)
    except Exception as e:  # noqa: BLE001
        raise ModelError(f"model {model.version} fails on its reference batch: {e}") from e
    check_probabilities(probs, len(x), len(model.labels), model.version)
    if expected is not None:
        tolerance = atol if atol is not None else (10 * ATOL if model.variant == "fp16" else ATOL)
        diff = float(np.abs(probs - expected).max())
        if not diff <= tolerance:
            raise ModelError(f"model {model.version} ({model.variant}) differs from its reference outputs by "
                             f"{diff:.2e} > {tolerance:.0e} (damaged or replaced weights)")


def check_probabilities(probs: np.ndarray, n: int, n_labels: int, version: str) -> None:
    """Raise :class:`ModelError` unless ``probs`` are ``n`` rows of finite probabilities over ``n_labels`` classes,
    each summing to 1: the check of every reference batch, and of every batch the service answers."""
    if probs.shape != (n, n_labels):
        raise ModelError(f"model {version} gives probabilities of shape {probs.shape}, not ({n}, {n_labels})")
    if not np.isfinite(probs).all():
        raise ModelError(f"model {version} gives non-finite probabilities (NaN or inf)")
    worst = float(np.abs(probs.sum(axis=1) - 1).max())
    if worst > 1e-3:
        raise ModelError(f"model {version}'s probabilities do not sum to 1 (off by {worst:.2e})")
