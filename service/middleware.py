"""The HTTP layers every topology puts in front of its endpoints, built from the settings in one place.

Outermost first: with several workers, keep-alive connections are recycled so that they spread over the workers;
metrics and the request id see every request; the refusal throttle holds back floods of 4xx answers; errors are
reshaped to ``{"error", "detail"}``; uploads are read, bounded and checked before an endpoint.
"""
from __future__ import annotations

import bentoml

from service.config import Config
from service.errors import JsonErrors
from service.keepalive import ConnectionRecycle, WorkerLoads
from service.lifecycle import SLOTS, server_file
from service.logs import RequestIdAndAccessLog
from service.metrics import HttpMetrics
from service.throttle import RefusalThrottle
from service.upload_budget import ByteBudget
from service.uploads import UploadRequests, UploadRoute

__all__ = ["BARE_ROUTES", "KNOWN_PATHS", "ApiLayers", "upload_routes"]
# With several workers, a keep-alive connection ends after this many requests (service/keepalive.py): often enough
# to even out a burst of connections within seconds, rarely enough that the reconnections cost next to nothing.
KEEPALIVE_REQUESTS = 16


def upload_routes(config: Config) -> dict[str, UploadRoute]:
    """The endpoints that take uploads: their file field, how many files, and the other parameters they take."""
    return {
        "/classify": UploadRoute("image", 1, frozenset({"k", "flag"}), check_image=True),
        "/classify_batch": UploadRoute("images", config.max_batch_images, frozenset({"k"})),
        "/explain": UploadRoute("image", 1, frozenset({"label", "format"}), check_image=True),
        "/feedback": UploadRoute("image", 1, frozenset({"label"})),
    }


# The routes that take no parameters (service/params.py refuses any they are given).
BARE_ROUTES = frozenset({"/model", "/admin/reload", "/demo", "/metrics", "/livez", "/readyz", "/healthz"})
KNOWN_PATHS = frozenset({"/classify", "/classify_batch", "/explain", "/feedback", "/model", "/admin/reload", "/demo",
                         "/metrics", "/", "/docs.json", "/schema.json", "/livez", "/readyz", "/healthz",
                         "/review", "/review/items"})


class ApiLayers:
    """ASGI middleware: the whole stack above, configured by :meth:`Config.from_env` when BentoML builds the app
    (not at import, so a test or a process sees the settings of its environment then)."""

    def __init__(self, app, config: Config | None = None) -> None:
        config = config or Config.from_env()
        app = UploadRequests(app, routes=upload_routes(config), max_body_bytes=config.max_body_bytes,
                             stall_timeout_s=config.stall_timeout_s, max_pixels=config.max_pixels,
                             max_pixels_full=config.max_pixels_full, bare_routes=BARE_ROUTES,
                             # UPLOAD_BUDGET_BYTES bounds the whole server: each worker holds its share
                             budget=ByteBudget(max(config.upload_budget_bytes // config.workers,
                                                   config.max_body_bytes), config.upload_wait_s))
        app = JsonErrors(app)
        app = RefusalThrottle(app, rate=config.refusal_rate, burst=config.refusal_burst)
        app = RequestIdAndAccessLog(app)
        app = HttpMetrics(app, endpoints=KNOWN_PATHS)
        self.app = ConnectionRecycle(app, KEEPALIVE_REQUESTS, _worker_loads(config)) if config.workers > 1 else app

    async def __call__(self, scope, receive, send) -> None:
        await self.app(scope, receive, send)


def _worker_loads(config: Config) -> WorkerLoads | None:
    """This worker's slot among the server's workers' loads (None outside a BentoML worker)."""
    index = bentoml.server_context.worker_index
    if index is None or config.workers >= SLOTS:
        return None
    return WorkerLoads(server_file("load"), index, config.workers)
