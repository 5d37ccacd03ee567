"""Prometheus metrics (prometheus_client, multiprocess-aware: the API and model services are separate processes).

BentoML's own HTTP metrics are switched off because they label requests by raw path, so random unknown paths
would add series without bound; :class:`HttpMetrics` labels by endpoint, and every unknown path shares ``other``.
"""
from __future__ import annotations

import os
import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)
from starlette.requests import Request
from starlette.responses import Response

__all__ = ["BATCH_SIZE", "DECODE_SECONDS", "HELD", "INFERENCE_SECONDS", "LOW_CONFIDENCE", "MODEL_ERRORS", "MODEL_INFO",
           "NOVELTY", "PREDICTIONS", "REJECTED", "RELOAD_FAILURES", "REQUESTS", "REQUEST_SECONDS", "REVIEW_DECISIONS",
           "REVIEW_DROPPED", "REVIEW_QUEUED", "SCORE", "UNKNOWN", "HttpMetrics", "metrics_endpoint", "observe_answer",
           "render"]

PREDICTIONS = Counter("imgcls_predictions_total", "Images classified, by predicted label", ["label"])
# Drift, per model version: shares are ratios of counters over the answers counted by imgcls_score_count
# (deploy/alerts.yml), e.g. rate(imgcls_unknown_total[1h]) / rate(imgcls_score_count[1h]).
UNKNOWN = Counter("imgcls_unknown_total", "Answers flagged as neither of the model's classes (known=false)",
                  ["version"])
LOW_CONFIDENCE = Counter("imgcls_low_confidence_total", "Answers whose score is under LOW_CONFIDENCE", ["version"])
SCORE = Histogram("imgcls_score", "The answered class's calibrated probability", ["version"],
                  buckets=(0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0))
NOVELTY = Histogram("imgcls_novelty", "Novelty of answered images (over 1: unknown)", ["version"],
                    buckets=(0.25, 0.5, 0.75, 0.9, 1.0, 1.1, 1.25, 1.5, 2.0, 3.0, 5.0))
REVIEW_QUEUED = Counter("imgcls_review_queued_total", "Photos put in the review queue, by reason", ["reason"])
REVIEW_DROPPED = Counter("imgcls_review_dropped_total", "Photos not queued for review: the writer was busy or failed")
REVIEW_DECISIONS = Counter("imgcls_review_decisions_total", "Review decisions, by verdict", ["verdict"])
REJECTED = Counter("imgcls_rejected_inputs_total", "Rejected inputs, by reason", ["reason"])
HELD = Counter("imgcls_refusals_held_total", "4xx answers held back by the per-client refusal throttle")
MODEL_INFO = Gauge("imgcls_model_info", "1 for the model version being served", ["version", "device", "variant"],
                   multiprocess_mode="livemax")
RELOAD_FAILURES = Counter("imgcls_model_reload_failures_total", "Refused new model versions", ["version"])
MODEL_ERRORS = Counter("imgcls_model_errors_total", "Model batches that failed or gave non-finite outputs",
                       ["version"])
DECODE_SECONDS = Histogram("imgcls_decode_seconds", "Decoding and preprocessing one image",
                           buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0))
INFERENCE_SECONDS = Histogram("imgcls_inference_seconds", "ONNX Runtime time for one model batch",
                              buckets=(0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5))
BATCH_SIZE = Histogram("imgcls_model_batch_size", "Images per model batch formed by adaptive batching",
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
REQUESTS = Counter("imgcls_http_requests_total", "HTTP requests, by endpoint (unknown paths: other)",
                   ["endpoint", "method", "status"])
REQUEST_SECONDS = Histogram("imgcls_http_request_seconds", "HTTP request duration, by endpoint", ["endpoint"],
                            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))


def observe_answer(version: str, score: float, novelty: float | None, known: bool | None, low_score: float) -> None:
    """Count one answer in the drift metrics."""
    SCORE.labels(version=version).observe(score)
    if novelty is not None:
        NOVELTY.labels(version=version).observe(novelty)
    if known is False:
        UNKNOWN.labels(version=version).inc()
    if score < low_score:
        LOW_CONFIDENCE.labels(version=version).inc()


def render() -> bytes:
    """Every process's metrics (BentoML sets ``PROMETHEUS_MULTIPROC_DIR`` for the services it starts)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)
    return generate_latest(REGISTRY)


async def metrics_endpoint(request: Request) -> Response:
    return Response(render(), media_type=CONTENT_TYPE_LATEST)


class HttpMetrics:
    """ASGI middleware: request count and duration per known endpoint; any other path counts as ``other``."""

    def __init__(self, app, endpoints: frozenset[str]) -> None:
        self.app, self.endpoints = app, endpoints

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        endpoint = path if path in self.endpoints else "other"
        method = scope["method"] if scope["method"] in ("GET", "POST", "HEAD", "OPTIONS") else "other"
        start, status = time.perf_counter(), [500]

        async def send_wrapper(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            REQUESTS.labels(endpoint, method, str(status[0])).inc()
            REQUEST_SECONDS.labels(endpoint).observe(time.perf_counter() - start)
