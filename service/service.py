"""The BentoML service: ONNX Runtime behind adaptive batching, strict input handling, metrics, hot model swap.

Run: ``bentoml serve service.service:ImageClassifier`` (settings: service/config.py, README).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import anyio
import bentoml
import numpy as np
from PIL import Image
from bentoml._internal.marshal.dispatcher import CorkDispatcher  # BentoML's adaptive batching (pinned version)
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from imgcls.images import ImageError, decode_image
from imgcls.onnx_model import OnnxClassifier, gpu_visible
from imgcls.preprocess import Preprocess
from imgcls.registry import ModelError, Registry
from service.config import Config
from service.heatmap import overlay_png
from service.http import ApiError, parse_k, parse_upload

log = logging.getLogger("imgcls.service")
request_log = logging.getLogger("imgcls.requests")
if not logging.getLogger("imgcls").handlers:  # BentoML configures only its own loggers
    _handler = logging.StreamHandler()
    _handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("imgcls").addHandler(_handler)
    logging.getLogger("imgcls").setLevel(logging.INFO)
    logging.getLogger("imgcls").propagate = False

PREDICTIONS = bentoml.metrics.Counter(
    name="imgcls_predictions_total", documentation="Images classified, by predicted label", labelnames=["label"])
REJECTED = bentoml.metrics.Counter(
    name="imgcls_rejected_inputs_total", documentation="Rejected inputs, by reason", labelnames=["reason"])
MODEL_INFO = bentoml.metrics.Gauge(
    name="imgcls_model_info", documentation="1 for the model version being served", labelnames=["version", "device"])
RELOAD_FAILURES = bentoml.metrics.Counter(
    name="imgcls_model_reload_failures_total", documentation="Refused new model versions", labelnames=["version"])
DECODE_SECONDS = bentoml.metrics.Histogram(
    name="imgcls_decode_seconds", documentation="Decoding and preprocessing one image",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
INFERENCE_SECONDS = bentoml.metrics.Histogram(
    name="imgcls_inference_seconds", documentation="ONNX Runtime time for one model batch",
    buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
BATCH_SIZE = bentoml.metrics.Histogram(
    name="imgcls_model_batch_size", documentation="Images per model batch formed by adaptive batching",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128))

app = FastAPI(title="Image classifier", description="Cats vs dogs (or any labels the model carries).")


def _overloaded() -> None:
    raise ApiError(503, "overloaded", "the model queue is full; retry shortly", {"Retry-After": "1"})


@bentoml.service(
    name="image_classifier",
    workers=1,  # one process owns the ONNX Runtime session; its threads use every core
    resources={"gpu": 1} if gpu_visible() else {"cpu": str(os.cpu_count() or 1)},
    traffic={"timeout": 60},
    logging={"access": {"enabled": False}},  # replaced by one JSON line per request (AccessLog)
)
@bentoml.asgi_app(app, path="/")
class ImageClassifier:
    """Loads the current model in ``__init__`` (warm before /readyz); one batched inference path.

    With no loadable model (none promoted yet, or a broken one) it starts unready and loads the first good
    version promoted later.
    """

    def __init__(self) -> None:
        self.config = Config.from_env()
        self.registry = Registry(self.config.artifacts)
        self._swap_lock = threading.Lock()
        self._refused: str | None = None
        self._model: OnnxClassifier | None = None
        try:
            self.reload()
        except ApiError as e:
            log.error("no model loaded at start: %s", e.message)
        self._in_queue = 0
        self.dispatcher = CorkDispatcher(
            max_latency_in_ms=self.config.max_latency_ms, max_batch_size=self.config.max_batch_size,
            fallback=_overloaded, get_batch_size=lambda _: 1,
        )
        self._infer_batched = self.dispatcher(self._infer)
        self._decode_limiter = anyio.CapacityLimiter(max(2, os.cpu_count() or 1))
        if self.config.model == "current" and self.config.poll_seconds > 0:  # follow promotions
            threading.Thread(target=self._watch, name="model-watcher", daemon=True).start()

    # -- model lifecycle ------------------------------------------------------------------------------------------
    def __is_ready__(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> OnnxClassifier:
        model = self._model
        if model is None:
            raise ApiError(503, "no_model", "no model is loaded yet; promote one (python -m training promote)",
                           {"Retry-After": "5"})
        return model

    def _load(self, ref: str) -> OnnxClassifier:
        model = OnnxClassifier(self.registry.resolve(ref), device=self.config.device,
                               threads=self.config.ort_threads or None)
        model.warmup((1, min(8, self.config.max_batch_size)))
        log.info("loaded model %s on %s (providers %s)", model.version, model.device, model.providers)
        return model

    def reload(self) -> dict[str, Any]:
        """Load what ``MODEL`` names now and swap it in; a broken version is refused and the old one stays."""
        with self._swap_lock:
            old = self._model
            try:
                target = self.registry.resolve(self.config.model).name
            except ModelError as e:
                raise ApiError(409, "no_model", str(e)) from e
            if old is not None and target == old.version:
                return {"version": old.version, "previous": old.version, "changed": False}
            try:
                new = self._load(self.config.model)
            except Exception as e:  # noqa: BLE001 - any failure to load keeps the old model serving
                RELOAD_FAILURES.labels(version=target).inc()
                self._refused = target
                log.error("refused model %s, still serving %s: %s", target, old and old.version, e)
                raise ApiError(422, "model_refused", f"model {target} was refused: {e}") from e
            self._model = new  # one reference assignment: each batch uses the old or the new session whole
            if old is not None:
                MODEL_INFO.labels(version=old.version, device=old.device).set(0)
            MODEL_INFO.labels(version=new.version, device=new.device).set(1)
            self._refused = None
            log.info("serving model %s (previous: %s)", new.version, old and old.version)
            return {"version": new.version, "previous": old and old.version, "changed": True}

    def _watch(self) -> None:
        while True:
            time.sleep(self.config.poll_seconds)
            current = self.registry.current()
            if current and current not in (self._model and self._model.version, self._refused):
                try:
                    self.reload()
                except ApiError:
                    pass  # logged and counted in reload()
                except Exception:  # noqa: BLE001 - the watcher must outlive a bad moment of the registry
                    log.exception("model watcher: reload failed")

    # -- inference ------------------------------------------------------------------------------------------------
    async def _infer(self, jobs: Sequence[tuple[np.ndarray, OnnxClassifier]]) -> list[Any]:
        """One adaptive batch. Each image runs on the model whose preprocessing made it (they differ only for
        the moments around a swap), so an answer never mixes two versions."""
        out: list[Any] = [None] * len(jobs)
        for model in {id(m): m for _, m in jobs}.values():
            index = [i for i, (_, m) in enumerate(jobs) if m is model]
            start = time.perf_counter()
            probs = await anyio.to_thread.run_sync(model.predict, np.stack([jobs[i][0] for i in index]))
            INFERENCE_SECONDS.observe(time.perf_counter() - start)
            BATCH_SIZE.observe(len(index))
            for i, p in zip(index, probs):
                out[i] = (p, model)
        return out

    async def _decode(self, data: bytes, preprocess: Preprocess) -> tuple[Image.Image, np.ndarray]:
        def work() -> tuple[Image.Image, np.ndarray]:
            start = time.perf_counter()
            img = decode_image(data, draft_size=preprocess.resize_size, max_pixels=self.config.max_pixels)
            x = preprocess(img)
            DECODE_SECONDS.observe(time.perf_counter() - start)
            return img, x
        return await anyio.to_thread.run_sync(work, limiter=self._decode_limiter)

    async def classify_bytes(self, data: bytes, k: int | None) -> dict[str, Any]:
        """Decode, preprocess and classify one image through the adaptive batcher."""
        model = self.model
        if self._in_queue >= self.config.max_queue:  # refuse before spending any work on it
            _overloaded()
        self._in_queue += 1
        try:
            _, x = await self._decode(data, model.preprocess)
            probs, model = await self._infer_batched((x, model))
        finally:
            self._in_queue -= 1
        return _result(probs, model, k)


def _result(probs: np.ndarray, model: OnnxClassifier, k: int | None) -> dict[str, Any]:
    order = np.argsort(-probs)[: k or len(probs)]
    label = model.labels[int(order[0])]
    PREDICTIONS.labels(label=label).inc()
    return {
        "label": label,
        "score": float(probs[order[0]]),
        "probabilities": [{"label": model.labels[int(i)], "score": float(probs[i])} for i in order],
        "model": {"name": model.metadata["backbone"], "version": model.version},
    }


def _service(request: Request) -> ImageClassifier:
    return bentoml.get_current_service()


def _reject(e: ApiError | ImageError) -> JSONResponse:
    REJECTED.labels(reason=e.reason).inc()
    return JSONResponse({"error": e.reason, "detail": e.message}, e.status, headers=getattr(e, "headers", None))


@app.exception_handler(ApiError)
async def _api_error(request: Request, e: ApiError) -> JSONResponse:
    return _reject(e)


@app.exception_handler(ImageError)
async def _image_error(request: Request, e: ImageError) -> JSONResponse:
    return _reject(e)


class AccessLog:
    """One JSON log line per request (a plain ASGI middleware: Starlette's BaseHTTPMiddleware costs more)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, seen = time.perf_counter(), {}

        async def send_and_note(message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
                seen["model"] = dict(message.get("headers", [])).get(b"x-model-version", b"").decode() or None
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            request_log.info(json.dumps({
                "method": scope["method"], "path": scope["path"], "status": seen.get("status", 500),
                "ms": round((time.perf_counter() - start) * 1000, 2), "model": seen.get("model"),
            }))


app.add_middleware(AccessLog)


@app.post("/classify")
async def classify(request: Request) -> JSONResponse:
    """One image (multipart field ``image`` or a raw image body) -> label, score, probabilities, model."""
    svc = _service(request)
    upload = await parse_upload(request, svc.config.max_body_bytes, max_files=1)
    k = parse_k(request.query_params.get("k") or upload.fields.get("k"), len(svc.model.labels))
    result = await svc.classify_bytes(upload.files[0].data, k)
    return JSONResponse(result, headers={"x-model-version": result["model"]["version"]})


@app.post("/classify_batch")
async def classify_batch(request: Request) -> JSONResponse:
    """Many images (multipart, any file fields) -> one result per image in order; bad images get error entries."""
    svc = _service(request)
    upload = await parse_upload(request, svc.config.max_body_bytes, max_files=svc.config.max_batch_images)
    k = parse_k(request.query_params.get("k") or upload.fields.get("k"), len(svc.model.labels))

    async def one(i: int, data: bytes, results: list) -> None:
        try:
            results[i] = await svc.classify_bytes(data, k)
        except (ImageError, ApiError) as e:
            REJECTED.labels(reason=e.reason).inc()
            results[i] = {"error": e.reason, "detail": e.message, "status": e.status}

    results: list[Any] = [None] * len(upload.files)
    async with anyio.create_task_group() as tg:
        for i, f in enumerate(upload.files):
            tg.start_soon(one, i, f.data, results)
    for r, f in zip(results, upload.files):
        r["filename"] = f.filename
    return JSONResponse({"results": results, "model": {"version": svc.model.version}})


@app.post("/explain")
async def explain(request: Request) -> Response:
    """The class activation map of the predicted (or ``label``) class: a PNG overlay, or JSON with ``format=json``."""
    svc = _service(request)
    upload = await parse_upload(request, svc.config.max_body_bytes, max_files=1)
    model = svc.model
    if model.head is None or not model.has_features:
        raise ApiError(409, "no_cam", f"model {model.version} ({model.metadata['backbone']}) has no linear head "
                                      "over a feature map, so it has no class activation map")
    img, x = await svc._decode(upload.files[0].data, model.preprocess)
    probs, fmap = await anyio.to_thread.run_sync(model.predict_with_features, x[None])
    wanted = request.query_params.get("label") or upload.fields.get("label")
    if wanted is not None and wanted not in model.labels:
        raise ApiError(422, "unknown_label", f"label {wanted!r} is not one of {model.labels}")
    index = model.labels.index(wanted) if wanted else int(probs[0].argmax())
    cam = model.class_activation_map(fmap[0], index)
    headers = {"x-model-version": model.version, "x-label": model.labels[index],
               "x-score": f"{float(probs[0][index]):.6f}"}
    if (request.query_params.get("format") or upload.fields.get("format")) == "json":
        return JSONResponse({"label": model.labels[index], "score": float(probs[0][index]),
                             "cam": np.round(cam, 5).tolist(), "shape": list(cam.shape),
                             "model": {"name": model.metadata["backbone"], "version": model.version}},
                            headers=headers)
    return Response(overlay_png(model.preprocess.resize_crop(img), cam), media_type="image/png", headers=headers)


@app.get("/model")
async def model_info(request: Request) -> JSONResponse:
    """The loaded version's metadata and metrics, and the providers its session really uses."""
    svc = _service(request)
    meta = json.loads(json.dumps(svc.model.metadata))
    meta.pop("history", None)
    for split in meta.get("metrics", {}).values():
        split.pop("misclassified", None)
    meta["runtime"] = {"providers": svc.model.providers, "device": svc.model.device, "config": svc.config.public()}
    return JSONResponse(meta)


@app.post("/feedback", status_code=201)
async def feedback(request: Request) -> JSONResponse:
    """An image and its correct ``label``, stored durably (content-hash name) for the next retraining."""
    svc = _service(request)
    upload = await parse_upload(request, svc.config.max_body_bytes, max_files=1)
    label = upload.fields.get("label") or request.query_params.get("label")
    if not label:
        raise ApiError(400, "no_label", "send the correct label as form field 'label'")
    if label not in svc.model.labels:
        raise ApiError(422, "unknown_label", f"label {label!r} is not one of {svc.model.labels}")
    data = upload.files[0].data
    await svc._decode(data, svc.model.preprocess)  # only real, decodable images are kept
    digest = hashlib.sha256(data).hexdigest()
    path, duplicate = await anyio.to_thread.run_sync(store_feedback, svc.config.feedback_dir, label, digest, data)
    return JSONResponse({"stored": str(path), "sha256": digest, "label": label, "duplicate": duplicate}, 201)


def store_feedback(root: Path, label: str, digest: str, data: bytes) -> tuple[Path, bool]:
    """Write-then-rename into ``root/label/<sha256>.img``; the same image twice collapses into one file."""
    folder = root / label
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{digest}.img"
    if path.exists():
        return path, True
    tmp = folder / f".{digest}.{os.getpid()}.{threading.get_ident()}.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path, False


@app.post("/admin/reload")
async def admin_reload(request: Request) -> JSONResponse:
    """Swap in the model ``MODEL`` names now (normally: the newly promoted current one). Bearer ``ADMIN_TOKEN``."""
    svc = _service(request)
    if not svc.config.admin_token:
        raise ApiError(403, "admin_disabled", "set ADMIN_TOKEN to enable /admin/reload")
    given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
    if not hmac.compare_digest(given.encode(), svc.config.admin_token.encode()):
        raise ApiError(401, "unauthorized", "missing or wrong bearer token")
    return JSONResponse(await anyio.to_thread.run_sync(svc.reload))


@app.get("/demo")
async def demo() -> HTMLResponse:
    """TEMP: the demo page, until the new service serves it."""
    return HTMLResponse((Path(__file__).parent / "static" / "demo.html").read_text(encoding="utf-8"))
