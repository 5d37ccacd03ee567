"""Service settings: the one place the service reads its environment variables (documented in the README).

:meth:`Config.from_env` is called when a service instance (or its middleware stack) is built, never at import, and
the result is passed down as one object.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from imgcls.cpus import usable_cpus
from imgcls.images import DEFAULT_MAX_PIXELS, DEFAULT_MAX_PIXELS_FULL
from imgcls.registry import DEFAULT_ROOT, default_feedback_dir

__all__ = ["Config"]
_TRUE = ("1", "true", "yes")


@dataclass(frozen=True)
class Config:
    model: str  # MODEL: current, a version, or a version folder; only "current" follows promotions
    artifacts: Path  # ARTIFACTS_DIR
    device: str  # DEVICE: auto | cuda | cpu (cuda where CUDA cannot start is an error at start-up)
    variant: str  # MODEL_VARIANT: auto | fp32 | int8 | fp16 (auto: fp16 on CUDA, int8 on CPUs with VNNI/AMX)
    workers: int  # WORKERS: server processes, each with its own model (one per usable CPU: usable_cpus)
    tracing: bool  # TRACING=1: BentoML's OpenTelemetry spans for every request (off: they cost CPU on each one)
    ort_threads: int  # ORT_THREADS: ONNX Runtime intra-op threads per worker (usable CPUs / WORKERS)
    max_batch_size: int  # MAX_BATCH_SIZE: largest model batch the adaptive batcher forms
    max_body_bytes: int  # MAX_BODY_BYTES: request bodies over this get 413
    max_pixels: int  # MAX_PIXELS: JPEGs over this get 413 (checked before decoding; they decode at reduced scale)
    max_batch_images: int  # MAX_BATCH_IMAGES: /classify_batch requests with more images get 413
    max_queue: int  # MAX_QUEUE: images waiting for the model beyond this get 503 + Retry-After
    poll_seconds: float  # MODEL_POLL_S: how often to look for a newly promoted model (0: never)
    admin_token: str  # ADMIN_TOKEN: bearer token for POST /admin/reload (unset: endpoint disabled)
    feedback_dir: Path  # FEEDBACK_DIR: where POST /feedback stores labelled images
    feedback_token: str  # FEEDBACK_TOKEN: bearer token for POST /feedback
    feedback_open: bool  # FEEDBACK_OPEN=1: take feedback without a token (deliberately open)
    feedback_rate: float  # FEEDBACK_RATE: feedback requests per second per client, on average
    feedback_burst: int  # FEEDBACK_BURST: feedback requests a client may send at once
    feedback_max_bytes: int  # FEEDBACK_MAX_BYTES: total size of stored feedback; beyond it 507
    feedback_max_files: int  # FEEDBACK_MAX_FILES: stored feedback images; beyond it 507
    max_pixels_full: int  # MAX_PIXELS_FULL: the pixel limit for formats decoded at full size (PNG, WebP, ...)
    stall_timeout_s: float  # BODY_STALL_TIMEOUT_S: an upload that sends nothing for this long gets 408
    upload_budget_bytes: int  # UPLOAD_BUDGET_BYTES: upload bytes held in memory at once (service/upload_budget.py)
    upload_wait_s: float  # UPLOAD_WAIT_S: an upload waits this long for room in that budget, then gets 503 (keep it
    # well under the 60 s request timeout of the service options, past which BentoML itself answers 504)
    decode_threads: int  # DECODE_THREADS: images a worker decodes at once (bounds decoding CPU and memory)
    refusal_rate: float  # REFUSAL_RATE: a client's 4xx answers beyond its burst go out at this rate a second (0: off)
    refusal_burst: int  # REFUSAL_BURST: 4xx answers a client gets at once before they are held back
    # ORT_TENSORRT=1: TensorRT first on CUDA, its engines cached in ORT_TRT_CACHE_DIR (default
    # <artifacts>/cache/tensorrt) so that only the first start of a model builds them; None: no TensorRT
    tensorrt_cache: Path | None
    review_dir: Path | None  # REVIEW_DIR: the review queue (imgcls/review.py); unset: no queue (the default)
    review_token: str  # REVIEW_TOKEN: bearer token of the /review endpoints (unset: they answer 403)
    review_max_bytes: int  # REVIEW_MAX_BYTES: the queue's size limit (oldest items out first)
    review_max_items: int  # REVIEW_MAX_ITEMS: the queue's item limit (oldest items out first)
    review_sample: float  # REVIEW_SAMPLE: the share of confident answers queued as well
    low_confidence: float  # LOW_CONFIDENCE: answers scored under this are low-confidence (queued; counted in metrics)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> Config:
        """The settings from ``environ`` (default: this process's environment); unset or empty means default."""
        def _env(name: str, default, cast=str):
            raw = environ.get(name)
            return default if raw in (None, "") else cast(raw)

        artifacts = Path(_env("ARTIFACTS_DIR", str(DEFAULT_ROOT)))
        cpus = usable_cpus()
        workers = _env("WORKERS", cpus, int)
        if workers < 1:
            raise ValueError(f"WORKERS must be at least 1, not {workers}")
        per_worker = max(1, cpus // workers)  # each worker's share of the CPUs
        tensorrt = _env("ORT_TENSORRT", "") in _TRUE
        return cls(
            model=_env("MODEL", "current"),
            artifacts=artifacts,
            device=_env("DEVICE", "auto"),
            variant=_env("MODEL_VARIANT", "auto"),
            workers=workers,
            tracing=_env("TRACING", "0") in _TRUE,
            ort_threads=_env("ORT_THREADS", per_worker, int),
            max_batch_size=_env("MAX_BATCH_SIZE", 32, int),
            max_body_bytes=_env("MAX_BODY_BYTES", 10 * 1024 * 1024, int),
            max_pixels=_env("MAX_PIXELS", DEFAULT_MAX_PIXELS, int),
            max_batch_images=_env("MAX_BATCH_IMAGES", 64, int),
            max_queue=_env("MAX_QUEUE", 256, int),
            poll_seconds=_env("MODEL_POLL_S", 2.0, float),
            admin_token=_env("ADMIN_TOKEN", ""),
            feedback_dir=Path(_env("FEEDBACK_DIR", str(default_feedback_dir(artifacts)))),
            feedback_token=_env("FEEDBACK_TOKEN", ""),
            feedback_open=_env("FEEDBACK_OPEN", "0") in _TRUE,
            feedback_rate=_env("FEEDBACK_RATE", 1.0, float),
            feedback_burst=_env("FEEDBACK_BURST", 10, int),
            feedback_max_bytes=_env("FEEDBACK_MAX_BYTES", 1 << 30, int),
            feedback_max_files=_env("FEEDBACK_MAX_FILES", 20_000, int),
            max_pixels_full=_env("MAX_PIXELS_FULL", DEFAULT_MAX_PIXELS_FULL, int),
            stall_timeout_s=_env("BODY_STALL_TIMEOUT_S", 15.0, float),
            upload_budget_bytes=_env("UPLOAD_BUDGET_BYTES", 128 * 1024 * 1024, int),
            upload_wait_s=_env("UPLOAD_WAIT_S", 30.0, float),
            decode_threads=_env("DECODE_THREADS", per_worker, int),
            refusal_rate=_env("REFUSAL_RATE", 10.0, float),
            refusal_burst=_env("REFUSAL_BURST", 50, int),
            tensorrt_cache=Path(_env("ORT_TRT_CACHE_DIR", str(artifacts / "cache" / "tensorrt"))) if tensorrt else None,
            review_dir=Path(_env("REVIEW_DIR", "")) if _env("REVIEW_DIR", "") else None,
            review_token=_env("REVIEW_TOKEN", ""),
            review_max_bytes=_env("REVIEW_MAX_BYTES", 256 << 20, int),
            review_max_items=_env("REVIEW_MAX_ITEMS", 5_000, int),
            review_sample=_env("REVIEW_SAMPLE", 0.01, float),
            low_confidence=_env("LOW_CONFIDENCE", 0.8, float),
        )

    def public(self) -> dict:
        return {f.name: str(getattr(self, f.name)) for f in fields(self) if not f.name.endswith("token")}
