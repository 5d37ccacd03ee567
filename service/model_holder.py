"""The model being served: load, verify, warm up, check, swap and watch for promotions.

Swap rules (one place to change them): a new version is loaded beside the old one, verified against its sha256s,
warmed up, and must reproduce its reference batch (``imgcls.reference``: finite probabilities summing to one, equal
to those recorded at training within a tolerance); only then is it swapped in with
one reference assignment, so in-flight batches finish on the session they started with. A version that fails any
step is refused (logged, counted) and the old one keeps serving; ``MODEL=current`` follows promotions by polling.

Every worker process holds its own model. A reload asked of one worker (``POST /admin/reload``) is passed on to the
others through a small file they all watch (:func:`service.lifecycle.server_file`, named after their server):
they reload within a second. The server is ready only while every worker serves a model
(:class:`service.lifecycle.ServingWorkers`): a request may reach any of them.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import bentoml
import numpy as np

from imgcls.errors import ImgclsError
from imgcls.onnx_model import OnnxClassifier
from imgcls.reference import check_reference
from imgcls.registry import ModelError, Registry, write_atomic
from service.config import Config
from service.lifecycle import ServingWorkers, server_file
from service.metrics import MODEL_INFO, RELOAD_FAILURES

__all__ = ["ModelHolder"]

log = logging.getLogger("imgcls.model")


class ModelHolder:
    """Holds the serving :class:`OnnxClassifier`; ``classifier`` raises a 503 :class:`ModelError` while there is
    none."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.registry = Registry(config.artifacts)
        self._lock = threading.Lock()
        self._model: OnnxClassifier | None = None
        self.refused: str | None = None
        self.last_error: str | None = None
        self.serving = ServingWorkers(server_file("serving"), bentoml.server_context.worker_index, config.workers)
        self.siblings = server_file("reload")  # where a worker tells the other workers of its server to reload

    @property
    def ready(self) -> bool:
        """This worker serves a model, and so does every other worker of the server."""
        return self.serving.all_serving()

    @property
    def classifier(self) -> OnnxClassifier:
        """The version being served now (each caller keeps its reference for a whole batch)."""
        model = self._model
        if model is None:
            raise ModelError(f"no model is being served: {self.last_error or 'none loaded yet'}; promote a good one "
                             "(imgcls promote VERSION)", 503, "no_model", {"Retry-After": "5"})
        return model

    def load(self, ref: str) -> OnnxClassifier:
        """Load, verify, warm up and check one version; raises on any failure."""
        model = OnnxClassifier(self.registry.resolve(ref), device=self.config.device, variant=self.config.variant,
                               threads=self.config.ort_threads or None, tensorrt_cache=self.config.tensorrt_cache)
        s = model.preprocess.input_size
        for n in (1, min(8, self.config.max_batch_size)):
            model.predict(np.zeros((n, 3, s, s), np.float32))
        check_reference(model)  # the version's own reference inputs must give its recorded outputs
        log.info("loaded model %s on %s (providers %s)", model.version, model.device, model.providers)
        return model

    def reload(self) -> dict[str, Any]:
        """Load what ``MODEL`` names now and swap it in; a broken version is refused and the old one stays."""
        with self._lock:
            old = self._model
            try:
                target = self.registry.resolve(self.config.model).name
            except ModelError as e:
                self.last_error = str(e)
                raise ModelError(str(e), 409, "no_model") from e
            if old is not None and target == old.version:
                return {"version": old.version, "previous": old.version, "changed": False}
            try:
                new = self.load(self.config.model)
            except Exception as e:  # noqa: BLE001 - any failure to load keeps the old model serving
                RELOAD_FAILURES.labels(version=target).inc()
                self.refused, self.last_error = target, f"model {target} was refused: {e}"
                log.error("refused model %s, still serving %s: %s", target, old and old.version, e)
                raise ModelError(self.last_error, 422, "model_refused") from e
            self._model = new  # one reference assignment: each batch uses the old or the new session whole
            self.serving.mark(True)
            if old is not None:
                MODEL_INFO.labels(version=old.version, device=old.device, variant=old.variant).set(0)
            MODEL_INFO.labels(version=new.version, device=new.device, variant=new.variant).set(1)
            self.refused, self.last_error = None, None
            log.info("serving model %s (previous: %s)", new.version, old and old.version)
            return {"version": new.version, "previous": old and old.version, "changed": True}

    def reload_everywhere(self) -> dict[str, Any]:
        """:meth:`reload` here, and in every other worker of this server (they watch ``self.siblings``)."""
        try:
            return self.reload()
        finally:
            if self.config.workers > 1:
                write_atomic(self.siblings, uuid.uuid4().hex)

    def withdraw(self, model: OnnxClassifier, reason: str) -> None:
        """Stop serving ``model`` after it failed at inference time (readiness turns 503 until a good version is
        promoted; the same version is not loaded again)."""
        with self._lock:
            if self._model is model:
                self._model, self.refused, self.last_error = None, model.version, reason
                self.serving.mark(False)
                MODEL_INFO.labels(version=model.version, device=model.device, variant=model.variant).set(0)
                log.error("withdrew model %s: %s", model.version, reason)

    def start_watching(self) -> None:
        follows = self.config.model == "current" and self.config.poll_seconds > 0
        if follows or self.config.workers > 1:
            threading.Thread(target=self._watch, args=(follows,), name="model-watcher", daemon=True).start()

    def _watch(self, follows: bool) -> None:
        asked = _read(self.siblings)
        while True:
            time.sleep(self.config.poll_seconds if follows else 1.0)
            try:
                signal = _read(self.siblings)
                if signal != asked:  # another worker was asked to reload
                    asked = signal
                    self.reload()
                    continue
                current = self.registry.current() if follows else None
                if current and current not in (self._model and self._model.version, self.refused):
                    self.reload()
            except ImgclsError:
                pass  # logged and counted in reload()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad moment of the registry
                log.exception("model watcher: reload failed")


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None
