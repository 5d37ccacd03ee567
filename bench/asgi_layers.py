"""What each of the service's own ASGI layers costs per request, in process, without a server or a model.

    python -m bench.asgi_layers [--requests 2000] [--rounds 5] [--workers 2]

Builds the service's stack (:class:`service.middleware.ApiLayers`) in front of an app that reads the body and
answers a small JSON document (as an endpoint would), and posts the test photos through it as multipart uploads
(field ``image``, as ``bench.bench_peers`` sends them) in 64 KiB body messages, as uvicorn hands them on: first to
the innermost layer, then to each layer above it in turn. Each stack's CPU time per request (``time.process_time``)
is measured in ``--rounds`` alternating rounds; the figure is the median, and the cost of a layer is its stack's
figure minus the one below it. The access log goes where a worker's goes (stderr), so run it with ``2>/dev/null``;
Prometheus counts in a multiprocess folder, as in a worker.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="requests per stack per round")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--workers", type=int, default=2, help="WORKERS: above 1, connections are recycled")
    return p


async def _endpoint(scope, receive, send) -> None:
    while (await receive()).get("more_body"):
        pass
    body = b'{"label":"cat","score":0.99,"probabilities":[{"label":"cat","score":0.99}],"model":{}}'
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"x-model-version", b"v1")]})
    await send({"type": "http.response.body", "body": body})


def stacks(config) -> list[tuple[str, object]]:
    """(name, app) for each stack: the endpoint alone, then one more of ApiLayers' layers each, outermost last.
    The layers are the service's own stack (:class:`service.middleware.ApiLayers`), walked down through ``app``."""
    from service.middleware import ApiLayers

    chain, app = [], ApiLayers(_endpoint, config).app
    while app is not _endpoint:
        chain.append(app)
        app = app.app
    return [("endpoint alone", _endpoint), *((f"+ {type(layer).__name__}", layer) for layer in reversed(chain))]


async def _run(app, requests: list[tuple[dict, list[bytes]]], n: int) -> float:
    """CPU seconds per request for ``n`` requests through ``app``."""
    async def one(scope: dict, chunks: list[bytes]) -> None:
        messages = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]
        it = iter(messages)

        async def receive() -> dict:
            return next(it, {"type": "http.disconnect"})

        async def send(message) -> None:
            pass

        await app(scope, receive, send)

    start = time.process_time()
    for i in range(n):
        scope, chunks = requests[i % len(requests)]
        await one(scope, chunks)
    return (time.process_time() - start) / n


def main(args: argparse.Namespace) -> None:
    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="asgi-layers-"))
    from bench.common import test_photos
    from service.config import Config
    from service.logs import configure_json_logging
    from service.uploads import encode_multipart

    configure_json_logging()
    config = Config.from_env({"WORKERS": str(args.workers)})
    requests = []
    for i, photo in enumerate(test_photos()[:200]):
        body, ctype = encode_multipart([("image", photo.name, "image/jpeg", photo.read_bytes())], {})
        headers = [(b"host", b"127.0.0.1"), (b"content-type", ctype.encode()),
                   (b"content-length", str(len(body)).encode())]
        scope = {"type": "http", "method": "POST", "path": "/classify", "query_string": b"", "headers": headers,
                 "client": ("127.0.0.1", 40000 + i % 16), "server": ("127.0.0.1", 3000), "scheme": "http",
                 "http_version": "1.1", "root_path": "", "asgi": {"version": "3.0"}}
        requests.append((scope, [body[j:j + 65536] for j in range(0, len(body), 65536)]))
    built = stacks(config)
    figures: dict[str, list[float]] = {name: [] for name, _ in built}
    loop = asyncio.new_event_loop()
    for _name, app in built:  # warm up
        loop.run_until_complete(_run(app, requests, 200))
    for _ in range(args.rounds):
        for name, app in built:
            figures[name].append(loop.run_until_complete(_run(app, requests, args.requests)))
    below = None
    print(f"{'stack':<26} {'us/request':>10} {'layer us':>9}   (median of {args.rounds} rounds, "
          f"{args.requests} requests each)", file=sys.stdout)
    for name, _ in built:
        us = statistics.median(figures[name]) * 1e6
        print(f"{name:<26} {us:>10.1f} {'' if below is None else f'{us - below:>9.1f}'}")
        below = us


if __name__ == "__main__":
    main(get_args_parser().parse_args())
