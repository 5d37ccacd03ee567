"""The promotion rule: a version may serve only if it matches its checksums and reproduces its reference batch.

It sits above the registry (which stores and verifies files) because the reference check runs the model in ONNX
Runtime (:mod:`imgcls.reference`).
"""
from __future__ import annotations

from imgcls.reference import check_reference
from imgcls.registry import ModelError, Registry

__all__ = ["promote"]


def promote(registry: Registry, ref: str, reason: str = "manual") -> str:
    """Point ``registry``'s ``current`` at version ``ref`` after checking it; returns the version's name.
    Raises :class:`ModelError` for an unknown, damaged or misbehaving version (``current`` is left as it was)."""
    model_dir = registry.resolve(ref)
    if model_dir.parent != registry.models:
        raise ModelError(f"{model_dir} is not a version of this registry ({registry.models})")
    check_reference(model_dir)  # verifies the checksums first
    return registry.set_current(model_dir.name, reason)
