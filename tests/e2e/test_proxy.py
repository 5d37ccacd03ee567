"""deploy/nginx.conf with a real nginx in front of the real server (the tiny model): a client that sends its
headers a byte at a time is cut by the proxy (uvicorn alone never cuts it), and everything else still reaches the
service, whose JSON answers (408 for a stalled upload, 413 over the body limit) pass through unchanged, and a
client cannot pass for others with its own X-Forwarded-For."""
from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from imgcls.registry import Registry
from tests.conftest import ROOT, serve
from tests.live_server import free_port
from tests.tiny_model import add_tiny_version

HEADER_TIMEOUT_S = 10  # client_header_timeout in deploy/nginx.conf


@pytest.fixture(scope="module")
def proxied(tmp_path_factory) -> tuple[str, str]:
    """(proxy URL, service URL): the service on the tiny model, nginx with deploy/nginx.conf in front."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
    if nginx is None:
        if os.environ.get("REQUIRE_PROXY"):
            pytest.fail("nginx is not installed (.ci/run installs Debian's nginx-light)")
        pytest.skip("nginx is not installed (.ci/run installs Debian's nginx-light)")
    tmp = tmp_path_factory.mktemp("proxy")
    reg = Registry(tmp / "artifacts")
    add_tiny_version(reg, promote=True)
    # FORWARDED_ALLOW_IPS="*" and a small refusal burst, as docker-compose.yml runs it (all but the burst). One
    # worker: the refusal throttle counts per worker (docs/operations.md), and its timing is what is checked here.
    with serve(reg.root, tmp / "server.log", BODY_STALL_TIMEOUT_S="2", MAX_BODY_BYTES=str(300_000),
               MODEL_POLL_S="0", FORWARDED_ALLOW_IPS="*", REFUSAL_BURST="5", REFUSAL_RATE="5", WORKERS="1") as url:
        port = free_port()
        conf = (ROOT / "deploy" / "nginx.conf").read_text()
        for old, new in (("server classifier:3000;", f"server {url.removeprefix('http://')};"),
                         ("listen 8080;", f"listen 127.0.0.1:{port};")):
            assert old in conf
            conf = conf.replace(old, new)
        (tmp / "nginx.conf").write_text(conf)
        log = open(tmp / "nginx.log", "w")
        proc = subprocess.Popen([nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"),
                                 "-g", f"daemon off; pid {tmp / 'nginx.pid'};"], stdout=log, stderr=subprocess.STDOUT)
        proxy = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 20
            while True:
                assert proc.poll() is None, (tmp / "nginx.log").read_text()
                try:
                    if httpx.get(f"{proxy}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, (tmp / "nginx.log").read_text()
                time.sleep(0.2)
            yield proxy, url
        finally:
            proc.terminate()
            proc.wait(10)


def png(size: int = 64) -> bytes:
    buf = io.BytesIO()
    Image.radial_gradient("L").resize((size, size)).convert("RGB").save(buf, "PNG")
    return buf.getvalue()


def seconds_until_cut(url: str, limit_s: float) -> float | None:
    """Send a request line, then header bytes one per second; seconds until the server closes the connection, or
    None if it is still open after ``limit_s``."""
    host, port = url.removeprefix("http://").split(":")
    start = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=limit_s + 5) as s:
        s.sendall(b"POST /classify HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        s.settimeout(1.0)
        while time.monotonic() - start < limit_s:
            try:
                if s.recv(4096) == b"":
                    return time.monotonic() - start
            except TimeoutError:
                pass
            except OSError:
                return time.monotonic() - start
            try:
                s.sendall(b"a")
            except OSError:
                return time.monotonic() - start
    return None


def test_the_proxy_cuts_a_client_that_sends_its_headers_a_byte_a_second(proxied) -> None:
    proxy, direct = proxied
    results: dict[str, float | None] = {}
    threads = [threading.Thread(target=lambda k=k, u=u: results.__setitem__(k, seconds_until_cut(
                   u, HEADER_TIMEOUT_S + 5)))
               for k, u in (("proxy", proxy), ("direct", direct))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results["proxy"] is not None and results["proxy"] <= HEADER_TIMEOUT_S + 3, results
    assert results["direct"] is None, results  # why the proxy is there: uvicorn alone keeps the connection open
    assert httpx.post(f"{proxy}/classify", content=png(), headers={"content-type": "image/png"}).status_code == 200


def test_requests_and_the_services_json_answers_pass_through(proxied) -> None:
    proxy, _ = proxied
    r = httpx.post(f"{proxy}/classify", content=png(), headers={"content-type": "image/png", "x-request-id": "abc-123"})
    assert r.status_code == 200 and r.json()["label"] and r.headers["x-request-id"] == "abc-123"

    big = httpx.post(f"{proxy}/classify", content=b"\0" * 400_000, headers={"content-type": "image/png"})
    assert big.status_code == 413 and big.json()["error"], big.text

    body = png(160)

    def steady():  # slow but steady: 25 chunks, 0.2 s apart (5 s in all)
        step = len(body) // 25 + 1
        for i in range(0, len(body), step):
            time.sleep(0.2)
            yield body[i:i + step]

    r = httpx.post(f"{proxy}/classify", content=steady(), headers={"content-type": "image/png"}, timeout=30)
    assert r.status_code == 200, r.text

    def stalled():
        yield body[:100]
        time.sleep(6)  # longer than BODY_STALL_TIMEOUT_S=2
        yield body[100:]

    try:
        r = httpx.post(f"{proxy}/classify", content=stalled(), headers={"content-type": "image/png"}, timeout=30)
        assert r.status_code == 408 and r.json()["error"] == "request_timeout", r.text
    except httpx.RemoteProtocolError:
        pytest.fail("the stalled upload was cut without the service's 408 JSON answer")


def test_a_client_cannot_pass_for_others_through_the_proxy(proxied) -> None:
    """Per-client limits key on the address the proxy saw: a client at 127.0.0.3 sending 15 refused requests, each
    claiming another X-Forwarded-For, is still one client to the refusal throttle (5 at once, then 5 a second)."""
    proxy, _ = proxied

    def refused(i: int) -> float:
        t = time.perf_counter()
        r = client.post(f"{proxy}/classify", content=b"not an image", timeout=30,
                        headers={"Content-Type": "image/jpeg", "X-Forwarded-For": f"10.9.{i}.1"})
        assert r.status_code == 415, r.text
        return time.perf_counter() - t

    client = httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.3"),
                          limits=httpx.Limits(max_connections=15))
    with client, ThreadPoolExecutor(15) as pool:
        seconds = sorted(pool.map(refused, range(15)))
    assert seconds[-1] >= 0.9 * (15 - 5) / 5, seconds  # one client: 10 past the burst, 0.2 s apart
