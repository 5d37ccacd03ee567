"""Inference on the served model: :class:`Inference`, plain Python, called by the endpoints through
:class:`service.model_client.LocalModel`.

:meth:`Inference.infer` takes encoded images (or, for the few that are costly to decode, crops the API made in its
slow lane); it decodes and preprocesses them, runs one ONNX Runtime batch and checks the outputs. It answers each
image on its own (a :class:`~service.answers.Prediction` or an :class:`~imgcls.errors.ImgclsError`), so a batch
never fails as a whole for one caller's sake.
"""
from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from imgcls.cam import class_activation_map
from imgcls.errors import ImgclsError
from imgcls.images import decode_image
from imgcls.novelty import embed, is_known
from imgcls.onnx_model import OnnxClassifier, providers_for
from imgcls.reference import check_probabilities
from imgcls.registry import ModelError
from service.answers import Explanation, Prediction, StaleInput
from service.config import Config
from service.metrics import BATCH_SIZE, DECODE_SECONDS, INFERENCE_SECONDS, MODEL_ERRORS
from service.model_holder import ModelHolder

__all__ = ["Inference"]
log = logging.getLogger("imgcls.inference")


def _prediction(model: OnnxClassifier, probs: np.ndarray, novelty: float | None = None,
                known: bool | None = None) -> Prediction:
    return Prediction(version=model.version, name=model.card.backbone, variant=model.variant,
                      labels=model.labels, probs=probs, novelty=novelty, known=known)


class Inference:
    """Loads the model named by ``MODEL`` (warm and checked before it serves) and follows promotions."""

    def __init__(self, config: Config) -> None:
        self.config = config
        # numpy's OpenBLAS pool (the open-set products) would spin on every core after each small product, taking
        # them from decoding and ONNX Runtime: one thread does those products faster here (docs/request_path.md)
        threadpool_limits(1, user_api="blas")
        providers_for(config.device)  # DEVICE=cuda without a usable CUDA provider stops the start-up here
        self.decoders = ThreadPoolExecutor(config.decode_threads, "decode") if config.decode_threads > 1 else None
        self.holder = ModelHolder(config)
        try:
            self.holder.reload()
        except ImgclsError as e:
            log.error("no model loaded at start: %s", e.message)
        self.holder.start_watching()

    @property
    def ready(self) -> bool:
        return self.holder.ready

    def infer(self, images: list[bytes | np.ndarray]) -> list[Prediction | ImgclsError]:
        """Class probabilities for each image, one answer each: an encoded image (decoded and preprocessed here,
        as ``imgcls batch`` does, at the served model's size) or a uint8 HWC crop already made at the model's input
        size (an image decoded in the API's slow lane).

        An answer is an error when the image cannot be decoded, when there is no model, when a crop was made for
        another input size (:class:`StaleInput`: a swap happened meanwhile; the caller crops again), or when the
        model failed (it is withdrawn)."""
        try:
            model = self.holder.classifier
        except ImgclsError as e:
            return [e] * len(images)
        pre, size = model.preprocess, model.preprocess.input_size
        batch = np.empty((len(images), 3, size, size), np.float32)

        def prepare(i: int) -> ImgclsError | None:
            """images[i] into batch[i], or the reason it cannot be."""
            image = images[i]
            try:
                if isinstance(image, bytes):
                    start = time.perf_counter()
                    pre(decode_image(image, draft_size=pre.resize_size, max_pixels=self.config.max_pixels,
                                     max_pixels_full=self.config.max_pixels_full), batch[i])
                    DECODE_SECONDS.observe(time.perf_counter() - start)
                elif image.shape == (size, size, 3):
                    pre.normalize(image, batch[i])
                else:
                    raise StaleInput(pre.resize_size, size)
            except ImgclsError as e:
                return e
            return None

        # A worker with one CPU decodes here, one image after another; one with several, in its decoding threads
        out: list[Prediction | ImgclsError | None] = (
            list(self.decoders.map(prepare, range(len(images)))) if self.decoders and len(images) > 1
            else [prepare(i) for i in range(len(images))])
        index = [i for i, error in enumerate(out) if error is None]
        if not index:
            return out
        if len(index) < len(images):
            batch = batch[index]
        start = time.perf_counter()
        try:
            answer = model.classify(batch)  # calibrated probabilities, and novelty where the version has a detector
            probs = answer.probabilities
            check_probabilities(probs, len(batch), len(model.labels), model.version)
        except Exception as e:  # noqa: BLE001 - a failing model must not answer, nor keep serving
            MODEL_ERRORS.labels(version=model.version).inc()
            self.holder.withdraw(model, f"inference failed: {e}")
            failed = ModelError(f"model {model.version} failed: {e}", headers={"Retry-After": "5"})
            return [failed if answer is None else answer for answer in out]
        INFERENCE_SECONDS.observe(time.perf_counter() - start)
        BATCH_SIZE.observe(len(index))
        for j, i in enumerate(index):
            out[i] = _prediction(model, probs[j]) if answer.novelty is None else _prediction(
                model, probs[j], round(float(answer.novelty[j]), 6), bool(answer.known[j]))
        return out

    def explain(self, crop: np.ndarray, label: str | None = None) -> Explanation:
        """Probabilities and the class activation map (h, w in [0, 1]) of ``label`` (default: the top class);
        raises :class:`ImgclsError` (:class:`StaleInput` for a crop of another size)."""
        model = self.holder.classifier
        if model.head is None or not model.has_features:
            raise ImgclsError(409, "no_cam", f"model {model.version} ({model.card.backbone}) has no linear "
                                             "head over a feature map, so it has no class activation map")
        if label is not None and label not in model.labels:
            raise ImgclsError(422, "unknown_label", f"label {label!r} is not one of {model.labels}")
        size = model.preprocess.input_size
        if crop.shape != (size, size, 3):
            raise StaleInput(model.preprocess.resize_size, size)
        x = model.preprocess.normalize(crop)[None]
        probs, fmap = model.predict_with_features(x)
        check_probabilities(probs, 1, len(model.labels), model.version)
        novelty = None if model.detector is None else float(model.detector.novelty(embed(fmap))[0])
        index = model.labels.index(label) if label else int(probs[0].argmax())
        base = _prediction(model, probs[0], novelty, None if novelty is None else bool(is_known(novelty)))
        return Explanation(**vars(base), index=index, cam=class_activation_map(model.head["weight"][index], fmap[0]))

    def describe(self) -> dict[str, Any]:
        """The served version's metadata (trimmed) and the runtime it really uses."""
        model = self.holder.classifier
        meta = model.card.public()
        meta["runtime"] = {"providers": model.providers, "device": model.device,
                           "variant": model.variant, "config": self.config.public()}
        return meta

    def reload(self) -> dict[str, Any]:
        """Swap in the model ``MODEL`` names now, in every worker (raises :class:`ImgclsError` when it cannot here)."""
        return self.holder.reload_everywhere()
