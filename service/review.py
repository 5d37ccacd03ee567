"""The review page and its endpoints: a person labels the photos in the review queue (``REVIEW_DIR``).

``GET /review`` is the page (static, no data in it: it asks for the token and sends it as a bearer header). The data
endpoints need ``Authorization: Bearer $REVIEW_TOKEN`` (constant-time compare, service/auth.py):

- ``GET /review/items``: the queued photos (oldest first) with what the model answered, and the model's labels;
- ``GET /review/items/{id}/image``: the stored (re-encoded) photo; ``.../cam``: its class activation map (PNG) by
  the model served now;
- ``POST /review/items/{id}`` with JSON ``{"verdict": "label", "label": L}`` (confirm or correct), or
  ``{"verdict": "neither"}`` / ``{"verdict": "unusable"}``: the decision. A label becomes feedback in the feedback
  store (imgcls/feedback.py; a conflicting label is recorded there and answered 409 as POST /feedback does); every
  decision is appended to the store's ``reviews.jsonl`` for retraining; the photo leaves the queue. A decision that
  fails otherwise (the feedback store full, 507) leaves the photo in the queue.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import bentoml
from PIL import Image
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Route

from imgcls.cam import overlay_png
from imgcls.errors import ImgclsError
from imgcls.review import VERDICTS, Decision, ReviewQueue, record_decision
from service.auth import bearer_matches
from service.errors import error_response
from service.metrics import REJECTED, REVIEW_DECISIONS

__all__ = ["LIST_LIMIT", "REVIEW_ROUTES"]
PAGE = Path(__file__).parent / "static" / "review.html"
LIST_LIMIT = 200  # items per GET /review/items
_MAX_DECISION_BYTES = 4096


def _guarded(handler):
    """Check that the queue is on and the bearer token right, then run ``handler(request, svc, queue)``; an
    :class:`ImgclsError` becomes its JSON answer."""
    async def endpoint(request: Request) -> Response:
        try:
            svc = bentoml.get_current_service()
            config, recorder = svc.config, svc.review
            if recorder is None:
                raise ImgclsError(403, "review_disabled", "the review queue is off: set REVIEW_DIR")
            if not config.review_token:
                raise ImgclsError(403, "review_disabled", "set REVIEW_TOKEN to open the review endpoints")
            if not bearer_matches(request.headers.get("authorization"), config.review_token):
                raise ImgclsError(401, "unauthorized", "missing or wrong bearer token (REVIEW_TOKEN)")
            return await handler(request, svc, recorder.queue)
        except ImgclsError as e:
            REJECTED.labels(reason=e.reason).inc()
            return error_response(e)
    return endpoint


def _not_found(item_id: str) -> ImgclsError:
    return ImgclsError(404, "not_found", f"no review item {item_id[:40]!r}: already decided, evicted, or never queued")


async def _page(request: Request) -> Response:
    return FileResponse(PAGE, media_type="text/html")


async def _items(request: Request, svc: Any, queue: ReviewQueue) -> Response:
    items = await anyio.to_thread.run_sync(queue.list, LIST_LIMIT)
    count, size = await anyio.to_thread.run_sync(queue.usage)
    labels = (await svc.model_client.describe())["labels"]
    return JSONResponse({"items": [i.public() for i in items], "labels": labels, "count": count, "bytes": size,
                         "limits": {"items": queue.max_items, "bytes": queue.max_bytes}})


async def _photo(request: Request, queue: ReviewQueue) -> bytes:
    """The stored photo of the item the path names (404 when there is none)."""
    item_id = request.path_params["item"]
    data = await anyio.to_thread.run_sync(queue.image, item_id)
    if data is None:
        raise _not_found(item_id)
    return data


async def _image(request: Request, svc: Any, queue: ReviewQueue) -> Response:
    return Response(await _photo(request, queue), media_type="image/jpeg", headers={"cache-control": "no-store"})


async def _cam(request: Request, svc: Any, queue: ReviewQueue) -> Response:
    answer, crop = await svc.explain_image(await _photo(request, queue))
    png = await anyio.to_thread.run_sync(overlay_png, Image.fromarray(crop), answer.cam)
    return Response(png, media_type="image/png", headers={"cache-control": "no-store", "x-label":
                    answer.labels[answer.index], "x-model-version": answer.version})


async def _decision_body(request: Request, labels: list[str]) -> tuple[str, str | None]:
    body = b""
    async for chunk in request.stream():  # read no more than a decision can be
        body += chunk
        if len(body) > _MAX_DECISION_BYTES:
            raise ImgclsError(413, "body_too_large", f"a decision is a small JSON object (at most "
                                                     f"{_MAX_DECISION_BYTES} bytes)")
    try:
        data = json.loads(body)
    except ValueError as e:
        raise ImgclsError(400, "bad_json", f"the body must be JSON like {{\"verdict\": \"label\", \"label\": "
                                           f"\"{labels[0]}\"}}: {e}") from e
    if not isinstance(data, dict) or data.get("verdict") not in VERDICTS:
        raise ImgclsError(422, "bad_verdict", f"verdict must be one of {list(VERDICTS)}")
    verdict, label = data["verdict"], data.get("label")
    if verdict == "label" and label not in labels:
        raise ImgclsError(422, "unknown_label", f"label {label!r} is not one of {labels}")
    if verdict != "label" and label is not None:
        raise ImgclsError(422, "bad_verdict", f"verdict {verdict!r} takes no label")
    return verdict, label


async def _decide(request: Request, svc: Any, queue: ReviewQueue) -> Response:
    item_id = request.path_params["item"]
    labels = (await svc.model_client.describe())["labels"]
    verdict, label = await _decision_body(request, labels)
    feedback_dir = svc.feedback_store.root

    def decide() -> tuple[Decision, ImgclsError | None]:
        with queue.claim(item_id) as claimed:
            if claimed is None:
                raise _not_found(item_id)
            item, image = claimed
            answered = {k: item.record.get(k) for k in ("label", "score", "known", "reason")}
            answered["version"] = (item.record.get("model") or {}).get("version")
            refusal, sha, outcome = None, None, "recorded"
            if verdict == "label":
                try:
                    stored = svc.feedback_store.add(image, label)
                    sha, outcome = stored.sha256, "duplicate" if stored.duplicate else "stored"
                except ImgclsError as e:
                    if e.reason != "label_conflict":
                        raise  # the photo goes back into the queue
                    refusal, outcome = e, "conflict"  # recorded by the feedback store; the decision is made
            decision = Decision(item_id, verdict, label, sha, answered, outcome)
            record_decision(feedback_dir, decision)
            return decision, refusal

    decision, refusal = await anyio.to_thread.run_sync(decide)
    REVIEW_DECISIONS.labels(verdict=verdict).inc()
    if refusal is not None:
        raise refusal
    return JSONResponse({"item": item_id, "verdict": verdict, "label": label, "outcome": decision.outcome,
                         "sha256": decision.sha256})


REVIEW_ROUTES = [
    Route("/review", _page, methods=["GET"]),
    Route("/review/items", _guarded(_items), methods=["GET"]),
    Route("/review/items/{item}/image", _guarded(_image), methods=["GET"]),
    Route("/review/items/{item}/cam", _guarded(_cam), methods=["GET"]),
    Route("/review/items/{item}", _guarded(_decide), methods=["POST"]),
]
