"""Requests an HTTP client would not send as written: raw bytes over a socket, for bench/fuzz.py.

Bad ``Content-Length`` and chunk sizes, ``Expect: 100-continue``, HTTP/1.0, pipelined requests, header floods,
odd request lines and bodies cut short. httpx normalises or refuses all of these, so they go over a plain socket
and the answers are parsed here.

uvicorn (under BentoML) answers malformed HTTP framing itself, before any ASGI code of ours runs, with a plain-text
``400 Invalid HTTP request received.`` and a WARNING line on the ``uvicorn.error`` logger; neither the body nor
the log level is a public uvicorn option. That exact answer, and only that, is accepted for these cases
(:data:`UVICORN_FRAMING_BODY`); every answer that reaches the service must be JSON as usual.
"""
from __future__ import annotations

import random
import socket
import time
from dataclasses import dataclass

UVICORN_FRAMING_BODY = b"Invalid HTTP request received."
UVICORN_FRAMING_LOG = '"logger": "uvicorn.error", "message": "Invalid HTTP request received."'


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


def _request(method: str, path: str, headers: list[tuple[str, str]] | list[tuple[bytes, bytes]], body: bytes = b"",
             version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {path} {version}".encode("latin-1")]
    lines += [(k if isinstance(k, bytes) else k.encode("latin-1")) + b": "
              + (v if isinstance(v, bytes) else v.encode("latin-1")) for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def _chunked(body: bytes, size: int) -> bytes:
    out = b"".join(b"%x\r\n" % len(body[i:i + size]) + body[i:i + size] + b"\r\n" for i in range(0, len(body), size))
    return out + b"0\r\n\r\n"


def raw_cases(rng: random.Random, image: bytes) -> list[tuple[str, bytes, int, bool, bool]]:
    """(what, bytes to send, answers expected, may be a uvicorn framing 400, half-close after sending) for every
    raw case, with values drawn from ``rng``; ``image`` is a small valid image. A half-closed request may get no
    answer (the client stopped sending); every other one must get all it expects."""
    host = ("Host", "fuzz")
    img_h = [host, ("Content-Type", "image/jpeg")]
    n = len(image)
    huge = "9" * rng.choice([5000, 4301, 20000])
    cases = [
        ("content-length not a number", _request("POST", "/classify", img_h + [("Content-Length", "abc")], image),
         1, True, False),
        ("content-length negative", _request("POST", "/classify", img_h + [("Content-Length", "-1")], image),
         1, True, False),
        ("content-length with exponent", _request("POST", "/classify", img_h + [("Content-Length", "1e3")], image),
         1, True, False),
        ("two content-lengths", _request("POST", "/classify", img_h + [("Content-Length", str(n)),
                                                                       ("Content-Length", str(n + 5))], image),
         1, True, False),
        ("content-length over the body, then EOF",
         _request("POST", "/classify", img_h + [("Content-Length", str(n + rng.randint(1, 5000)))], image),
         1, True, True),
        ("content-length under the body (the rest reads as a second, broken request)",
         _request("POST", "/classify", img_h + [("Content-Length", str(max(1, n // 2)))], image), 1, True, False),
        ("content-length 20 digits", _request("POST", "/classify", img_h + [("Content-Length", "9" * 20)], image),
         1, True, False),
        ("chunked upload", _request("POST", "/classify", img_h + [("Transfer-Encoding", "chunked")],
                                    _chunked(image, rng.choice([1, 7, 500, 4096]))), 1, False, False),
        ("chunk size not hex", _request("POST", "/classify", img_h + [("Transfer-Encoding", "chunked")],
                                        b"zz\r\n" + image + b"\r\n0\r\n\r\n"), 1, True, False),
        ("chunk size 2^64", _request("POST", "/classify", img_h + [("Transfer-Encoding", "chunked")],
                                     b"ffffffffffffffffff\r\n" + image + b"\r\n0\r\n\r\n"), 1, True, False),
        ("chunk size negative", _request("POST", "/classify", img_h + [("Transfer-Encoding", "chunked")],
                                         b"-5\r\n" + image[:5] + b"\r\n0\r\n\r\n"), 1, True, False),
        ("chunk longer than its size", _request("POST", "/classify", img_h + [("Transfer-Encoding", "chunked")],
                                                b"4\r\n" + image[:40] + b"\r\n0\r\n\r\n"), 1, True, False),
        ("chunked without the last chunk, then EOF",
         _request("POST", "/classify", img_h + [("Transfer-Encoding", "chunked")], _chunked(image, 100)[:-5]),
         1, True, True),
        ("chunked and content-length", _request("POST", "/classify", img_h + [("Transfer-Encoding", "chunked"),
                                                                               ("Content-Length", str(n))],
                                                _chunked(image, 64)), 1, True, False),
        ("transfer-encoding gzip", _request("POST", "/classify", img_h + [("Transfer-Encoding", "gzip")], image),
         1, True, False),
        ("expect 100-continue", _request("POST", "/classify", img_h + [("Expect", "100-continue"),
                                                                       ("Content-Length", str(n))], image),
         1, False, False),
        ("expect something else", _request("POST", "/classify", img_h + [("Expect", "200-ok"),
                                                                         ("Content-Length", str(n))], image),
         1, True, False),
        ("HTTP/1.0 GET", _request("GET", "/model", [], version="HTTP/1.0"), 1, False, False),
        ("HTTP/1.0 upload", _request("POST", "/classify", [("Content-Type", "image/jpeg"),
                                                            ("Content-Length", str(n))], image, "HTTP/1.0"),
         1, False, False),
        ("HTTP/1.0 upload without length", _request("POST", "/classify", [("Content-Type", "image/jpeg")], image,
                                                    "HTTP/1.0"), 1, True, True),
        ("HTTP/0.9", b"GET /model\r\n\r\n", 1, True, True),
        ("HTTP/2.0 request line", _request("GET", "/model", [host], version="HTTP/2.0"), 1, True, False),
        ("pipelined", b"".join([_request("GET", "/livez", [host]),
                                _request("POST", "/classify?k=1", img_h + [("Content-Length", str(n))], image),
                                _request("GET", f"/model?k={huge}", [host]),
                                _request("POST", "/classify", img_h + [("Content-Length", str(n))], image)]),
         4, False, False),
        ("pipelined then garbage", _request("GET", "/model", [host]) + b"\x00\xff garbage\r\n\r\n", 1, True, False),
        ("300 headers", _request("GET", "/model", [host] + [(f"X-H{i}", "v" * rng.randint(1, 50))
                                                            for i in range(300)]), 1, False, False),
        ("one 64 KB header", _request("GET", "/model", [host, ("X-Big", "b" * 65536)]), 1, True, False),
        ("header with NUL", _request("GET", "/model", [host, (b"X-Nul", b"a\x00b")]), 1, True, False),
        ("header without colon", _request("GET", "/model", [host]).replace(b"\r\n\r\n", b"\r\nNoColonHere\r\n\r\n"),
         1, True, False),
        ("folded header", _request("GET", "/model", [host, ("X-Fold", "a")]).replace(b"X-Fold: a",
                                                                                    b"X-Fold: a\r\n continued"),
         1, True, False),
        ("space in method", _request("GE T", "/model", [host]), 1, True, False),
        ("unknown method", _request("BREW", "/model", [host]), 1, True, False),
        ("non-ASCII path", _request("GET", "/mod\u00e9l", [host]), 1, True, False),
        ("raw bytes in query", b"GET /model?k=\x80\xff HTTP/1.1\r\nHost: fuzz\r\n\r\n", 1, True, False),
        ("absolute-form URL", _request("GET", "http://fuzz/model", [host]), 1, True, False),
        ("100 KB path", _request("GET", "/" + "a" * 100_000, [host]), 1, True, False),
        ("5,000-digit k in the query", _request("POST", f"/classify?k={huge}", img_h + [("Content-Length", str(n))],
                                               image), 1, False, False),
        ("100 KB label in the query", _request("POST", "/explain?label=" + "l" * 100_000,
                                               img_h + [("Content-Length", str(n))], image), 1, True, False),
        ("%-encoded invalid UTF-8 in the query", _request("POST", "/classify?k=%ff%fe",
                                                          img_h + [("Content-Length", str(n))], image),
         1, False, False),
        ("NUL in the query", _request("POST", "/feedback?label=%00cat", img_h + [("Content-Length", str(n))], image),
         1, False, False),
        ("empty request", b"\r\n\r\n", 1, True, True),
        ("garbage", bytes(rng.randrange(256) for _ in range(rng.randint(1, 300))) + b"\r\n\r\n", 1, True, True),
    ]
    return cases


def exchange(host: str, port: int, data: bytes, expected: int, half_close: bool, timeout: float) -> list[Reply]:
    """Send ``data`` on a new connection and read up to ``expected`` answers (fewer if the server closes or goes
    quiet for ``timeout`` s); 1xx interim answers are skipped."""
    replies: list[Reply] = []
    buf = b""
    with socket.create_connection((host, port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if half_close:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass  # the server may close as soon as it has seen enough; read what it answered
        deadline = time.monotonic() + timeout
        while len(replies) < expected and time.monotonic() < deadline:
            parsed = _parse(buf)
            if parsed is not None:
                reply, buf = parsed
                if reply.status >= 200:
                    replies.append(reply)
                continue
            try:
                chunk = s.recv(65536)
            except (TimeoutError, OSError):
                break
            if not chunk:
                break
            buf += chunk
        if len(replies) < expected:
            parsed = _parse(buf, eof=True)
            if parsed is not None and parsed[0].status >= 200:
                replies.append(parsed[0])
    return replies


def _parse(buf: bytes, eof: bool = False) -> tuple[Reply, bytes] | None:
    """One complete answer from the start of ``buf`` and the rest, or None if it is not all there yet."""
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    lines = buf[:head_end].decode("latin-1").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return Reply(0, {}, buf), b""  # not HTTP: judged as a failure
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    rest = buf[head_end + 4:]
    if status < 200 or status in (204, 304):
        return Reply(status, headers, b""), rest
    if "content-length" in headers:
        size = int(headers["content-length"])
        return (Reply(status, headers, rest[:size]), rest[size:]) if len(rest) >= size else None
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body, pos = b"", 0
        while True:
            line_end = rest.find(b"\r\n", pos)
            if line_end < 0:
                return None
            size = int(rest[pos:line_end].split(b";")[0], 16)
            if len(rest) < line_end + 2 + size + 2:
                return None
            body += rest[line_end + 2:line_end + 2 + size]
            pos = line_end + 2 + size + 2
            if size == 0:
                return Reply(status, headers, body), rest[pos:]
    return (Reply(status, headers, rest), b"") if eof else None
