"""The HTTP API's endpoints: :class:`ClassifierApi`.

Typed BentoML endpoints (schemas: service/schemas.py); images go to the model's thread, which decodes them with
its batch, through ``self.model_client`` (service/model_client.py); costly ones are decoded here first. An endpoint
raises :class:`~imgcls.errors.ImgclsError`; :func:`answers_errors` turns it into the JSON ``{"error", "detail"}``
answer (:func:`service.errors.error_response`).
The service that serves this API: service/service.py.
"""
from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import anyio
import bentoml
import numpy as np
from bentoml.validators import ContentType
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from imgcls.cam import overlay_png
from imgcls.errors import ImgclsError
from imgcls.feedback import FeedbackStore, RateLimiter
from imgcls.images import finish_decode, open_image
from imgcls.preprocess import Preprocess
from service.answers import Explanation, Prediction, StaleInput
from service.auth import bearer_matches
from service.config import Config
from service.errors import error_response, overloaded
from service.lifecycle import exit_with_parent, remove_stale_server_files
from service.logs import configure_json_logging
from service.metrics import DECODE_SECONDS, PREDICTIONS, REJECTED, metrics_endpoint, observe_answer
from service.model_client import LocalModel
from service.review import REVIEW_ROUTES
from service.review_recorder import ReviewRecorder
from service.schemas import BatchItem, BatchResult, Classification, FeedbackReceipt, ModelRef, Probability
from service.upload_file import UploadedFile

__all__ = ["ClassifierApi", "answers_errors", "web"]
STATIC = Path(__file__).parent / "static"
ImageFile = UploadedFile  # any file, in memory: decode_image decides what is an image, and answers 415/422 with why
PngFile = Annotated[Path, ContentType("image/png")]
COSTLY_PIXELS = 4_000_000  # decoding more than this takes tens of ms or more: such images share one slow lane


def answers_errors(func):
    """Turn an :class:`ImgclsError` raised by an endpoint into its JSON answer and status."""
    @functools.wraps(func)
    async def wrapper(self, *args, ctx: bentoml.Context, **kwargs):
        try:
            return await func(self, *args, ctx=ctx, **kwargs)
        except ImgclsError as e:
            REJECTED.labels(reason=e.reason).inc()
            ctx.response.status_code = e.status
            for k, v in e.headers.items():
                ctx.response.headers[k] = v
            return error_response(e)
    return wrapper


async def _demo_page(request: Request) -> Response:
    return FileResponse(STATIC / "demo.html", media_type="text/html")


async def _model_get(request: Request) -> Response:
    """GET /model: the same answer as POST /model (BentoML endpoints are POST)."""
    svc: ClassifierApi = bentoml.get_current_service()
    try:
        return JSONResponse(await svc._describe())
    except ImgclsError as e:
        return error_response(e)


web = Starlette(routes=[Route("/demo", _demo_page), Route("/model", _model_get, methods=["GET"]),
                        Route("/metrics", metrics_endpoint), *REVIEW_ROUTES])


class ClassifierApi:
    """Cats vs dogs (or whatever labels the served model carries): classify, explain, take feedback.

    The endpoints; the model is reached through ``self.model_client``."""

    def __init__(self, config: Config, model_client: LocalModel) -> None:
        configure_json_logging()
        if bentoml.server_context.worker_index is not None:  # a worker of `bentoml serve`, not a test's app
            exit_with_parent()
            remove_stale_server_files()
        self.config = config
        self.model_client = model_client
        self.decode_limiter = anyio.CapacityLimiter(self.config.decode_threads)  # bounds decoding CPU and memory
        self.slow_lane = anyio.Semaphore(1)  # images that cost over COSTLY_PIXELS to decode, one at a time
        self.feedback_store = FeedbackStore(self.config.feedback_dir, max_bytes=self.config.feedback_max_bytes,
                                            max_files=self.config.feedback_max_files,
                                            max_pixels=self.config.max_pixels_full)
        self.feedback_limiter = RateLimiter(self.config.feedback_rate, self.config.feedback_burst)
        self.review = ReviewRecorder(self.config) if self.config.review_dir else None  # REVIEW_DIR: off by default
        self.in_flight = 0
        self._sizes: tuple[int, int] | None = None  # (resize_size, input_size) of the served model

    # -- endpoints --------------------------------------------------------------------------------------------------
    @bentoml.api(route="/classify")
    @answers_errors
    async def classify(self, image: ImageFile, k: int | None = None, flag: bool = False, *,
                       ctx: bentoml.Context) -> Classification:
        """Classify one image (multipart field ``image``, or a raw ``image/*`` body): label, score, probabilities
        (``k``: only the top k), model, and whether it looks like any known class at all. ``flag=true`` asks for
        the photo to be reviewed by a person (kept where the service has a review queue, ``REVIEW_DIR``)."""
        result = await self._classify(image.read_bytes(), k, flag)
        ctx.response.headers["x-model-version"] = result.model.version
        return result

    @bentoml.api(route="/classify_batch")
    @answers_errors
    async def classify_batch(self, images: list[ImageFile], k: int | None = None, *,
                             ctx: bentoml.Context) -> BatchResult:
        """Classify several images (repeated multipart field ``images``); a bad image gets an error entry and the
        others are still answered."""
        async def one(i: int, path: UploadedFile) -> BatchItem:
            try:
                return BatchItem(index=i, result=await self._classify(path.read_bytes(), k))
            except ImgclsError as e:
                if e.reason in ("no_model", "model_error", "overloaded"):
                    raise
                REJECTED.labels(reason=e.reason).inc()
                return BatchItem(index=i, error=e.reason, detail=e.message, status=e.status)

        results: list[BatchItem | None] = [None] * len(images)

        async def run(i: int, path: UploadedFile) -> None:
            results[i] = await one(i, path)

        async with anyio.create_task_group() as tg:
            for i, path in enumerate(images):
                tg.start_soon(run, i, path)
        return BatchResult(results=results)

    @bentoml.api(route="/explain")
    @answers_errors
    async def explain(self, image: ImageFile, label: str | None = None, format: Literal["png", "json"] = "png", *,
                      ctx: bentoml.Context) -> PngFile:
        """The class activation map of the predicted class (or ``label``) over the model's centre crop, as a PNG;
        ``format=json`` gives the raw map instead. Headers ``x-label``, ``x-score``, ``x-model-version``."""
        answer, crop = await self.explain_image(image.read_bytes(), label)
        index, probs, cam = answer.index, answer.probs, answer.cam
        name = answer.labels[index]
        headers = {"x-model-version": answer.version, "x-label": name, "x-score": f"{float(probs[index]):.6f}"}
        if answer.known is not None:
            headers["x-known"] = str(answer.known).lower()
        ctx.response.headers.update(headers)
        if format == "json":
            return JSONResponse({"label": name, "score": float(probs[index]), "known": answer.known,
                                 "novelty": answer.novelty, "cam": np.round(cam, 5).tolist(),
                                 "shape": list(cam.shape), "model": _model_ref(answer).model_dump()}, headers=headers)
        png = overlay_png(Image.fromarray(crop), cam)
        return Response(png, media_type="image/png", headers=headers)

    @bentoml.api(route="/feedback")
    @answers_errors
    async def feedback(self, image: ImageFile, label: str, *, ctx: bentoml.Context) -> FeedbackReceipt:
        """Store an image with its correct ``label`` for the next retraining (201). ``Authorization: Bearer
        $FEEDBACK_TOKEN``; rate-limited per client (429) and bounded in total (507); only the re-encoded pixels are
        kept, and an image already stored under another label is recorded as a conflict (409)."""
        if self.config.feedback_token:
            if not bearer_matches(ctx.request.headers.get("authorization"), self.config.feedback_token):
                raise ImgclsError(401, "unauthorized", "missing or wrong bearer token (FEEDBACK_TOKEN)")
        elif not self.config.feedback_open:
            raise ImgclsError(403, "feedback_disabled", "set FEEDBACK_TOKEN (or FEEDBACK_OPEN=1) to take feedback")
        client = ctx.request.client.host if ctx.request.client else "unknown"
        meta = await self._describe()
        if label not in meta["labels"]:
            raise ImgclsError(422, "unknown_label", f"label {label!r} is not one of {meta['labels']}")
        self.feedback_limiter.check(client)
        stored = await anyio.to_thread.run_sync(self.feedback_store.add, image.read_bytes(), label,
                                                limiter=self.decode_limiter)
        ctx.response.status_code = 201
        return FeedbackReceipt(sha256=stored.sha256, label=label, duplicate=stored.duplicate)

    @bentoml.api(route="/model")
    @answers_errors
    async def model(self, *, ctx: bentoml.Context) -> dict[str, Any]:
        """The served version's metadata and metrics, and the ONNX Runtime providers its session really uses."""
        return await self._describe()

    @bentoml.api(route="/admin/reload")
    @answers_errors
    async def admin_reload(self, *, ctx: bentoml.Context) -> dict[str, Any]:
        """Swap in the model ``MODEL`` names now (normally the newly promoted one). ``Authorization: Bearer
        $ADMIN_TOKEN``."""
        if not self.config.admin_token:
            raise ImgclsError(403, "admin_disabled", "set ADMIN_TOKEN to enable /admin/reload")
        if not bearer_matches(ctx.request.headers.get("authorization"), self.config.admin_token):
            raise ImgclsError(401, "unauthorized", "missing or wrong bearer token")
        answer = await self.model_client.reload()
        self._sizes = None
        return answer

    # -- the classification path -----------------------------------------------------------------------------------
    async def explain_image(self, data: bytes, label: str | None = None) -> tuple[Explanation, np.ndarray]:
        """The explanation of ``label`` (default: the top class) for an encoded image, and the crop it is over."""
        crop = await self._decode(data)
        try:
            return await self.model_client.explain(crop, label), crop
        except StaleInput as e:  # the model was swapped for one of another input size
            self._sizes = (e.resize_size, e.input_size)
            crop = await self._decode(data)
            return await self.model_client.explain(crop, label), crop

    async def _describe(self) -> dict[str, Any]:
        answer = await self.model_client.describe()
        pre = answer["preprocessing"]
        self._sizes = (int(pre["resize_size"]), int(pre["input_size"]))
        return answer

    async def _decode(self, data: bytes) -> np.ndarray:
        """Decode and centre-crop at the served model's size (explain, and the slow lane): the uint8 HWC crop the
        model's thread normalises.

        The header is read first: an image that costs more than ``COSTLY_PIXELS`` to decode (JPEGs count at
        their reduced decoding scale) waits for the one-slot slow lane, so a client looping large PNGs or WebPs
        cannot make every other request queue behind its decodes."""
        if self._sizes is None:
            await self._describe()
        resize, size = self._sizes
        preprocess = Preprocess(input_size=size, resize_size=resize)
        img = open_image(data, draft_size=resize, max_pixels=self.config.max_pixels,
                         max_pixels_full=self.config.max_pixels_full)
        costly = img.size[0] * img.size[1] > COSTLY_PIXELS

        def work() -> np.ndarray:
            start = time.perf_counter()
            crop = np.asarray(preprocess.resize_crop(finish_decode(img)))
            DECODE_SECONDS.observe(time.perf_counter() - start)
            return crop

        if costly:
            async with self.slow_lane:
                return await anyio.to_thread.run_sync(work, limiter=self.decode_limiter)
        return await anyio.to_thread.run_sync(work, limiter=self.decode_limiter)

    async def _decoded_if_costly(self, data: bytes) -> bytes | np.ndarray:
        """``data`` as it is (the model's thread decodes it with its batch: no thread hand-off of its own), or, for
        an image that costs more than ``COSTLY_PIXELS`` to decode, its crop from the one-slot slow lane, so that it
        holds up no batch."""
        if self._sizes is None:
            await self._describe()
        img = open_image(data, draft_size=self._sizes[0], max_pixels=self.config.max_pixels,
                         max_pixels_full=self.config.max_pixels_full)
        return await self._decode(data) if img.size[0] * img.size[1] > COSTLY_PIXELS else data

    async def _classify(self, data: bytes, k: int | None, flagged: bool = False) -> Classification:
        if self.in_flight >= self.config.max_queue:  # refuse before spending any work on it
            raise overloaded()
        self.in_flight += 1
        try:
            try:
                answer = await self.model_client.infer(await self._decoded_if_costly(data))
            except StaleInput as e:  # a crop of the slow lane, made before a swap to a model of another input size
                self._sizes = (e.resize_size, e.input_size)
                answer = await self.model_client.infer(await self._decode(data))
        finally:
            self.in_flight -= 1
        result = _classification(answer, k)
        observe_answer(result.model.version, result.score, result.novelty, result.known, self.config.low_confidence)
        if self.review is not None:
            self.review.offer(data, result, flagged)
        return result


def _model_ref(answer: Prediction) -> ModelRef:
    return ModelRef(name=answer.name, version=answer.version, variant=answer.variant)


def _classification(answer: Prediction, k: int | None) -> Classification:
    labels, probs = answer.labels, np.asarray(answer.probs)
    if k is not None and not 1 <= k <= len(labels):
        raise ImgclsError(400, "bad_parameter", f"k must be between 1 and {len(labels)}, not {k}")
    order = np.argsort(-probs)[: k or len(probs)]
    label = labels[int(order[0])]
    PREDICTIONS.labels(label=label).inc()
    known = answer.known
    return Classification(
        label=label, score=float(probs[order[0]]),
        probabilities=[Probability(label=labels[int(i)], score=float(probs[i])) for i in order],
        model=_model_ref(answer), known=known,
        novelty=None if answer.novelty is None else float(answer.novelty))
