"""Inference on the served model: :class:`Inference` (plain Python, used in process by the API service) and
:class:`ModelService`, the same methods as a BentoML service for the split topology (service/split.py).

:meth:`Inference.infer` takes uint8 crops already decoded and cropped by the API; it normalises them, runs one
ONNX Runtime batch and checks the outputs. Answers are dicts (``{"error": ...}`` for failures), so a batch never
fails as a whole for one caller's sake and the same answers cross a process boundary unchanged.
"""
from __future__ import annotations

import logging
import time
from typing import Any

import bentoml
import numpy as np

from imgcls.novelty import embed, is_known
from imgcls.onnx_model import OnnxClassifier, providers_for
from imgcls.reference import check_probabilities
from imgcls.registry import public_metadata
from service.config import Config
from service.errors import ApiError
from service.lifecycle import exit_with_parent, linger_after_sigterm
from service.logs import configure_json_logging
from service.metrics import BATCH_SIZE, INFERENCE_SECONDS, MODEL_ERRORS
from service.model_holder import ModelHolder

log = logging.getLogger("imgcls.inference")
CONFIG = Config.from_env()


def _answer(model: OnnxClassifier, probs: np.ndarray, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"version": model.version, "name": model.metadata["backbone"], "variant": model.variant,
            "labels": model.labels, "probs": probs, **(extra or {})}


def _failure(e: ApiError) -> dict[str, Any]:
    """An :class:`ApiError` as an answer (the API raises it again, same status, same reason)."""
    return {"error": e.reason, "detail": e.message, "status": e.status}


class Inference:
    """Loads the model named by ``MODEL`` (warm and checked before it serves) and follows promotions."""

    def __init__(self, config: Config) -> None:
        self.config = config
        providers_for(config.device)  # DEVICE=cuda without a usable CUDA provider stops the start-up here
        self.holder = ModelHolder(config)
        try:
            self.holder.reload()
        except ApiError as e:
            log.error("no model loaded at start: %s", e.message)
        self.holder.start_watching()

    @property
    def ready(self) -> bool:
        return self.holder.ready

    def infer(self, crops: list[np.ndarray]) -> list[dict[str, Any]]:
        """Class probabilities for uint8 HWC crops at the model's input size, one answer per crop.

        An answer is ``{"error": ...}`` when there is no model, when the crop was made for another input size
        (a swap happened meanwhile; the caller crops again), or when the model failed (it is withdrawn)."""
        try:
            model = self.holder.model
        except ApiError as e:
            return [_failure(e)] * len(crops)
        size = model.preprocess.input_size
        out: list[dict[str, Any]] = [{"error": "stale_input", "input_size": size, "resize_size":
                                      model.preprocess.resize_size}] * len(crops)
        index = [i for i, c in enumerate(crops) if c.shape == (size, size, 3)]
        if not index:
            return out
        batch = np.empty((len(index), 3, size, size), np.float32)
        for j, i in enumerate(index):
            model.preprocess.normalize(crops[i], batch[j])
        start = time.perf_counter()
        try:
            answer = model.classify(batch)  # calibrated probabilities, and novelty where the version has a detector
            probs = answer.probabilities
            check_probabilities(probs, len(batch), len(model.labels), model.version)
        except Exception as e:  # noqa: BLE001 - a failing model must not answer, nor keep serving
            MODEL_ERRORS.labels(version=model.version).inc()
            self.holder.withdraw(model, f"inference failed: {e}")
            failed = {"error": "model_error", "detail": f"model {model.version} failed: {e}"}
            return [failed] * len(crops)
        INFERENCE_SECONDS.observe(time.perf_counter() - start)
        BATCH_SIZE.observe(len(index))
        for j, i in enumerate(index):
            out[i] = _answer(model, probs[j], None if answer.novelty is None else
                             {"novelty": round(float(answer.novelty[j]), 6), "known": bool(answer.known[j])})
        return out

    def explain(self, crop: np.ndarray, label: str | None = None) -> dict[str, Any]:
        """Probabilities and the class activation map (h, w in [0, 1]) of ``label`` (default: the top class)."""
        try:
            model = self.holder.model
            if model.head is None or not model.has_features:
                raise ApiError(409, "no_cam", f"model {model.version} ({model.metadata['backbone']}) has no linear "
                                              "head over a feature map, so it has no class activation map")
            if label is not None and label not in model.labels:
                raise ApiError(422, "unknown_label", f"label {label!r} is not one of {model.labels}")
            size = model.preprocess.input_size
            if crop.shape != (size, size, 3):
                return {"error": "stale_input", "input_size": size, "resize_size": model.preprocess.resize_size}
            x = model.preprocess.normalize(crop)[None]
            probs, fmap = model.predict_with_features(x)
            check_probabilities(probs, 1, len(model.labels), model.version)
            novelty = None if model.detector is None else float(model.detector.novelty(embed(fmap))[0])
        except ApiError as e:
            return _failure(e)
        index = model.labels.index(label) if label else int(probs[0].argmax())
        extra = {} if novelty is None else {"novelty": novelty, "known": is_known(novelty)}
        return _answer(model, probs[0], {"index": index, "cam": model.class_activation_map(fmap[0], index), **extra})

    def describe(self) -> dict[str, Any]:
        """The served version's metadata (trimmed) and the runtime it really uses."""
        try:
            model = self.holder.model
        except ApiError as e:
            return _failure(e)
        meta = public_metadata(model.metadata)
        meta["runtime"] = {"providers": model.providers, "device": model.device,
                           "variant": model.variant, "config": self.config.public()}
        return meta

    def reload(self) -> dict[str, Any]:
        """Swap in the model ``MODEL`` names now."""
        try:
            return self.holder.reload()
        except ApiError as e:
            return _failure(e)


@bentoml.service(
    name="image_classifier_model",
    workers=1,  # one process owns the ONNX Runtime session; its threads use every core (or the GPU)
    traffic={"timeout": 60},
    metrics={"enabled": False},  # service/metrics.py
    logging={"access": {"enabled": False}},
)
class ModelService:
    """:class:`Inference` as a BentoML service: ``infer`` is batchable, so BentoML's adaptive batching merges the
    calls of the API workers into model batches (the split topology, service/split.py)."""

    def __init__(self) -> None:
        configure_json_logging()
        exit_with_parent()
        linger_after_sigterm(CONFIG.shutdown_grace_s)
        self.model = Inference(CONFIG)

    def __is_ready__(self) -> bool:
        return self.model.ready

    @bentoml.api(batchable=True, max_batch_size=CONFIG.max_batch_size, max_latency_ms=CONFIG.max_latency_ms)
    def infer(self, crops: list[np.ndarray]) -> list[dict[str, Any]]:
        """Class probabilities for uint8 HWC crops at the model's input size, one answer per crop."""
        return self.model.infer(crops)

    @bentoml.api
    def explain(self, crop: np.ndarray, label: str | None = None) -> dict[str, Any]:
        """Probabilities and the class activation map of ``label`` (default: the top class)."""
        return self.model.explain(crop, label)

    @bentoml.api
    def describe(self) -> dict[str, Any]:
        """The served version's metadata (trimmed) and the runtime it really uses."""
        return self.model.describe()

    @bentoml.api
    def reload(self) -> dict[str, Any]:
        """Swap in the model ``MODEL`` names now."""
        return self.model.reload()
