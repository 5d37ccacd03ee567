"""Seeded fuzzing of every endpoint of a running service: mutated images of every format, decompression bombs,
odd multipart bodies, bad parameters (huge, float, NaN, hex... numbers; 100 KB, NUL, invalid UTF-8, right-to-left
strings; repeated, conflicting and unknown ones), JSON or text where a file belongs, nested, truncated and
many-part forms, bad boundaries and charsets, header floods, wrong methods and paths, and raw-socket requests an
HTTP client would not send (bad Content-Length and chunk sizes, Expect: 100-continue, HTTP/1.0, pipelining:
bench/fuzz_raw.py).

    python -m bench.fuzz --serve [--n 20000] [--seed 0] [--concurrency 8]      # a server on a tiny model
    python -m bench.fuzz --url http://127.0.0.1:3000 [--log server.log] ...     # a running server

Prints the status counts per endpoint and every failure. A failure is a 5xx, a dropped connection, a 4xx whose
body is not a JSON object ``{"error", "detail"}``, or (with the server's log) a traceback or a WARNING/ERROR
line in it. The one exception is uvicorn's own plain-text 400 for malformed HTTP framing, accepted only for the
raw cases that send such framing (bench/fuzz_raw.py says why). Exits 1 on any failure. The same seed sends the
same requests. A server started by hand needs ``REFUSAL_RATE=0``: otherwise it answers this one client's
refusals 10 a second.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import re
import struct
import sys
import tempfile
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import httpx
import numpy as np
from PIL import Image

from bench.fuzz_raw import (
    UVICORN_FRAMING_BODY,
    UVICORN_FRAMING_LOG,
    exchange,
    raw_cases,
)
from bench.tiny_server import FUZZ_SETTINGS, serve_tiny


@dataclass
class Case:
    method: str
    path: str
    what: str  # a short description for failure reports
    content: bytes = b""
    headers: dict[str, str] | list[tuple[str, str]] = field(default_factory=dict)
    params: dict[str, str] | list[tuple[str, str]] = field(default_factory=dict)
    raw: bytes | None = None  # sent as is over a socket (bench/fuzz_raw.py)
    expected: int = 1  # answers a raw request must get
    framing: bool = False  # a raw case uvicorn may refuse itself (plain-text 400)
    half_close: bool = False  # a raw case that stops sending: it may get no answer


@dataclass
class Outcome:
    case: Case
    status: int | None  # None: no answer (connection dropped, timeout)
    error: str | None  # the JSON "error" code, or why the answer is a failure
    failure: bool


# -- seed images -------------------------------------------------------------------------------------------------
def _picture(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Smooth colours plus noise: compresses like a photo, not like a flat fill."""
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) % 256], -1)
    return Image.fromarray(np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8), "RGB")


def _save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def seed_images(seed: int) -> dict[str, bytes]:
    """Valid images of every format and mode the service reads, small enough to fuzz fast."""
    rng = np.random.default_rng(seed)
    img = _picture(rng, 96, 72)
    exif = Image.Exif()
    exif[0x0112] = 6
    frames = [_picture(rng, 48, 48).convert("P") for _ in range(3)]
    seeds = {
        "jpeg": _save(img, "JPEG", quality=85),
        "jpeg_progressive_exif": _save(img, "JPEG", progressive=True, exif=exif),
        "jpeg_gray": _save(img.convert("L"), "JPEG"),
        "jpeg_cmyk": _save(img.convert("CMYK"), "JPEG"),
        "jpeg_large": _save(_picture(rng, 1600, 1200), "JPEG", quality=80),
        "png": _save(img, "PNG"),
        "png_rgba": _save(img.convert("RGBA"), "PNG"),
        "png_palette_interlaced": _save(img.convert("P"), "PNG", interlace=1),
        "png_16bit": _save(Image.fromarray(np.asarray(img.convert("L"), np.uint16) * 257), "PNG"),
        "gif_animated": _save(frames[0], "GIF", save_all=True, append_images=frames[1:], loop=0),
        "webp_lossy": _save(img, "WEBP", quality=80),
        "webp_lossless": _save(img, "WEBP", lossless=True),
        "webp_animated": _save(img, "WEBP", save_all=True, append_images=[img.rotate(90)]),
        "tiff": _save(img, "TIFF"),
        "tiff_lzw": _save(img, "TIFF", compression="tiff_lzw"),
        "tiff_jpeg": _save(img, "TIFF", compression="jpeg"),
        "bmp": _save(img, "BMP"),
        "tiny_1x1": _save(Image.new("RGB", (1, 1)), "PNG"),
        "wide_4000x1": _save(Image.new("RGB", (4000, 1)), "PNG"),
    }
    return seeds


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bombs(seed: int) -> dict[str, bytes]:
    """Small files that claim (or really have) far more pixels than the limits allow."""
    rng = np.random.default_rng(seed + 1)
    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)
    jpeg = bytearray(_save(_picture(rng, 16, 16), "JPEG"))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 65000, 65000)  # height, width
    gif = bytearray(_save(Image.new("P", (8, 8)), "GIF"))
    gif[6:10] = struct.pack("<HH", 65535, 65535)  # logical screen
    return {
        "png_header_100000x100000": b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b""),
        "png_zeros_8000x8000": _save(Image.new("1", (8000, 8000)), "PNG"),
        "jpeg_sof_65000x65000": bytes(jpeg),
        "gif_screen_65535": bytes(gif),
        "webp_lossless_4100x4000": _save(Image.new("RGB", (4100, 4000), (10, 20, 30)), "WEBP", lossless=True),
    }


# -- mutations ---------------------------------------------------------------------------------------------------
def mutate(rng: random.Random, data: bytes, pool: list[bytes]) -> bytes:
    """One to four random edits: bit flips, byte runs, truncation, insertion, duplication, splicing, junk."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(9)
        n = len(buf)
        if n == 0:
            buf += rng.randbytes(rng.randint(1, 64))
        elif op == 0:  # flip bits
            for _ in range(rng.randint(1, 8)):
                buf[rng.randrange(n)] ^= 1 << rng.randrange(8)
        elif op == 1:  # overwrite a run with an interesting byte
            i = rng.randrange(n)
            buf[i:i + rng.randint(1, 16)] = bytes([rng.choice([0, 0xFF, 0x7F, 0x80])]) * rng.randint(1, 16)
        elif op == 2:  # truncate
            del buf[rng.randrange(n):]
        elif op == 3:  # insert random bytes
            i = rng.randrange(n)
            buf[i:i] = rng.randbytes(rng.randint(1, 256))
        elif op == 4:  # duplicate a range
            i = rng.randrange(n)
            buf[i:i] = buf[i:i + rng.randint(1, 512)]
        elif op == 5:  # splice with another seed
            other = rng.choice(pool)
            buf = buf[: rng.randrange(n)] + other[rng.randrange(len(other)):]
        elif op == 6:  # append junk (HTML, ZIP, more image)
            buf += rng.choice([b"<html><script>alert(1)</script></html>", b"PK\x03\x04" + rng.randbytes(64),
                               rng.choice(pool)])
        elif op == 7:  # big-endian field set to a huge value near the start (sizes, lengths)
            i = rng.randrange(min(n, 64))
            buf[i:i + 4] = struct.pack(">I", rng.choice([0, 1, 0x7FFFFFFF, 0xFFFFFFFF, 65535]))
        else:  # keep only the header
            del buf[rng.randint(1, min(n, 64)):]
    return bytes(buf)


# -- requests ----------------------------------------------------------------------------------------------------
ODD_K = ["", "0", "1", "2", "3", "-1", "-0", "+1", "abc", "1e3", "1E-2", "1.5", "1.0", " 1", "1 ", "0x10", "1_0",
         "99999999999999999999", "9" * 4301, "9" * 5000, "-" + "9" * 5000, "NaN", "nan", "Infinity", "-Infinity",
         "inf", "1e400", "true", "null", "[1]", '{"k": 1}', "\x00", "１", "\u202e1"]
ODD_LABELS = ["cat", "dog", "", "CAT", "x" * 2000, "x" * 100_000, "../../etc/passwd", "cat\x00", "\x00", "🐱",
              "cat dog", "null", "\u202ecat", "\u200fdog\u200e", "\ud800", "cat\r\nX-Injected: 1", '"cat"', "9" * 5000]
ODD_AUTH = ["", "Bearer", "s3cret", "Bearer s3cret", "bearer s3cret", "Basic czNjcmV0",
            "Bearer " + "x" * 5000, "Bearer s3cret extra", "Bearer \u00e9", "Bearer fuzz-feedback"]


def multipart(rng: random.Random, files: list[tuple[str, bytes]], fields: dict[str, str]) -> tuple[bytes, str]:
    """A multipart body and its Content-Type, sometimes malformed on purpose."""
    boundary = rng.choice(["b0undary", "x" * 70, "----WebKitFormBoundary" + rng.randbytes(8).hex(), "a b\"c"])
    nl = b"\r\n" if rng.random() > 0.05 else b"\n"
    parts = []
    for name, data in files:
        filename = rng.choice(["x.jpg", "", "../../x.png", "a\"b.jpg", "\u00e9\u00e8.webp", "x" * 300])
        ctype = rng.choice(["image/jpeg", "application/octet-stream", "text/plain", "", "image/png; charset=x"])
        head = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"'.encode()
        if ctype:
            head += nl + f"Content-Type: {ctype}".encode()
        parts.append(head + nl + nl + data)
    for name, value in fields.items():
        parts.append(f'Content-Disposition: form-data; name="{name}"'.encode() + nl + nl
                     + value.encode("utf-8", "surrogatepass"))
    body = b"".join(b"--" + boundary.encode() + nl + p + nl for p in parts) + b"--" + boundary.encode() + b"--" + nl
    ctype = f"multipart/form-data; boundary={boundary}"
    odd = rng.random()
    if odd < 0.03:
        body = body[: -len(boundary) - 6]  # no closing boundary
    elif odd < 0.05:
        ctype = "multipart/form-data"  # no boundary
    elif odd < 0.07:
        ctype = "multipart/form-data; boundary=other"  # the wrong one
    elif odd < 0.09:
        body = body.replace(b"Content-Disposition", b"Content-Dispositio", 1)  # a part without a name
    elif odd < 0.10:
        body = b"--" + boundary.encode() + nl + b"garbage-without-headers" + nl * 2  # one broken part, no end
    return body, ctype


def _field_part(name: bytes, value: bytes, nl: bytes = b"\r\n", extra: bytes = b"") -> bytes:
    return b'Content-Disposition: form-data; name="' + name + b'"' + extra + nl + nl + value


def _form(parts: list[bytes], boundary: bytes = b"fuzzb0undary") -> bytes:
    return b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts) + b"--" + boundary + b"--\r\n"


def _image_part(image: bytes, name: bytes = b"image") -> bytes:
    return (b'Content-Disposition: form-data; name="' + name + b'"; filename="x.jpg"\r\n'
            b"Content-Type: image/jpeg\r\n\r\n" + image)


def param_case(rng: random.Random, image: bytes) -> Case:
    """Odd parameters: numbers and strings of every shape, repeated, in both query and form, unknown, as bytes
    that are not UTF-8."""
    path = rng.choice(["/classify", "/classify_batch", "/explain", "/feedback", "/model", "/admin/reload"])
    name = rng.choice(["k", "k", "label", "format", "x", "", "K", "k[]", "image"])
    value = rng.choice(ODD_K + ODD_LABELS)
    shape = rng.randrange(6)
    field_name = b"images" if path == "/classify_batch" else b"image"
    query: list[tuple[str, str]] = []
    fields: list[tuple[bytes, bytes]] = []
    if shape == 0:  # query, once
        query = [(name, value)]
    elif shape == 1:  # query, twice, maybe different
        query = [(name, value), (name, rng.choice([value, "1", "cat"]))]
    elif shape == 2:  # form, twice
        fields = [(name.encode(), value.encode("utf-8", "surrogatepass"))] * 2
    elif shape == 3:  # query and form both
        query, fields = [(name, value)], [(name.encode(), rng.choice(ODD_K).encode("utf-8", "surrogatepass"))]
    elif shape == 4:  # bytes that are not UTF-8, in a value or a name
        bad = rng.choice([b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\x80" * 100])
        fields = [(name.encode(), bad)] if rng.random() < 0.5 else [(bad, b"1")]
    else:  # several unknown fields
        fields = [(f"field{i}".encode(), b"v" * rng.randint(0, 5000)) for i in range(rng.randint(1, 20))]
    parts = [_field_part(n, v) for n, v in fields] + [_image_part(image, field_name)]
    rng.shuffle(parts)
    body = _form(parts) if path not in ("/model", "/admin/reload") or rng.random() < 0.3 else b""
    headers = {"Content-Type": "multipart/form-data; boundary=fuzzb0undary"} if body else {}
    headers["Authorization"] = "Bearer s3cret" if path == "/admin/reload" else "Bearer fuzz-feedback"
    return Case("POST", path, f"params shape {shape} {name!r}={value[:20]!r}", body, headers, query)


def body_case(rng: random.Random, image: bytes) -> Case:
    """Bodies of the wrong kind or shape: JSON or text where a file belongs, nested and truncated multipart, bad
    boundaries and charsets, many parts."""
    path = rng.choice(["/classify", "/classify_batch", "/explain", "/feedback"])
    field_name = b"images" if path == "/classify_batch" else b"image"
    kind = rng.randrange(10)
    ctype = "multipart/form-data; boundary=fuzzb0undary"
    if kind == 0:
        ctype, body = "application/json", json.dumps({"image": "aGVsbG8=", "k": 1}).encode()
    elif kind == 1:
        ctype, body = rng.choice(["text/plain", "text/plain; charset=utf-16", "application/x-www-form-urlencoded"]), \
            rng.choice([b"image=cat.jpg&k=1", "k=1".encode("utf-16"), b"hello"])
    elif kind == 2:  # a text field where the file belongs
        body = _form([_field_part(field_name, rng.choice([b"http://127.0.0.1/x.jpg", b"/etc/passwd", image[:50]]))])
    elif kind == 3:  # multipart inside multipart
        inner = _form([_image_part(image, field_name)], b"inner")
        body = _form([b'Content-Disposition: form-data; name="' + field_name + b'"\r\n'
                      b"Content-Type: multipart/mixed; boundary=inner\r\n\r\n" + inner])
    elif kind == 4:  # cut anywhere
        full = _form([_field_part(b"k", b"1"), _image_part(image, field_name)])
        body = full[: rng.randrange(1, len(full))]
    elif kind == 5:  # odd boundaries
        boundary = rng.choice([b"", b"x" * 200, b'"quoted"', b"a b", b"\xff\xfe", b"--", b"b" * 5000])
        body = _form([_image_part(image, field_name)], boundary or b"x")
        ctype = "multipart/form-data; boundary=" + boundary.decode("latin-1")
    elif kind == 6:  # charsets
        ctype += rng.choice(["; charset=utf-16", "; charset=nope", "; charset=utf-7", "; charset="])
        extra = [_field_part(b"_charset_", b"utf-16")] if rng.random() < 0.5 else []
        body = _form(extra + [_field_part(b"k", "1".encode("utf-16")), _image_part(image, field_name)])
    elif kind == 7:  # many parts
        n = rng.choice([100, 1000, 5000])
        body = _form([_field_part(b"f%d" % i, b"v") for i in range(n)] + [_image_part(image, field_name)])
    elif kind == 8:  # many files
        body = _form([_image_part(image, field_name)] * rng.choice([2, 65, 500]))
    else:  # a part with odd headers
        head = rng.choice([b"Content-Disposition: form-data\r\n\r\n",
                           b"Content-Disposition: attachment; name=x\r\n\r\n",
                           b"X: y\r\n\r\n", b'Content-Disposition: form-data; name="' + b"n" * 10000 + b'"\r\n\r\n',
                           b"Content-Disposition: form-data; name=image; filename*=UTF-8''%ff.jpg\r\n\r\n"])
        body = b"--fuzzb0undary\r\n" + head + image + b"\r\n--fuzzb0undary--\r\n"
    headers = {"Content-Type": ctype, "Authorization": "Bearer fuzz-feedback"}
    return Case("POST", path, f"body kind {kind} {len(body)} B", body, headers)


def header_case(rng: random.Random, image: bytes) -> Case:
    """Header floods: hundreds of headers, one of 64 KB, repeated Content-Type, odd Host."""
    path = rng.choice(["/classify", "/model", "/livez"])
    kind = rng.randrange(4)
    headers: list[tuple[str, str]] = [("Content-Type", "image/jpeg")]
    if kind == 0:
        headers += [(f"X-Flood-{i}", "v" * rng.randint(0, 100)) for i in range(rng.choice([100, 300, 1000]))]
    elif kind == 1:
        headers.append((rng.choice(["X-Big", "Cookie", "User-Agent", "Authorization"]), "b" * 65536))
    elif kind == 2:
        headers += [("Content-Type", rng.choice(["text/plain", "image/png", "multipart/form-data"]))] * 3
    else:
        headers += [("X-Request-Id", rng.choice(["\u00e9" * 10, "a" * 5000, "../x", "{}"]))]
    method = "GET" if path != "/classify" else "POST"
    return Case(method, path, f"headers kind {kind}", image if method == "POST" else b"", headers)


def make_case(rng: random.Random, images: list[bytes], big: list[bytes]) -> Case:
    """One random request. About a third carry an unmutated valid image, so the model path runs too."""
    r = rng.random()
    image = rng.choice(images)
    if rng.random() < 0.02:
        image = rng.choice(big)
    elif rng.random() < 0.65:
        image = mutate(rng, image, images)
    endpoint = rng.choices(["/classify", "/classify_batch", "/explain", "/feedback", "/admin/reload", "get", "odd"],
                           weights=[35, 15, 15, 15, 5, 8, 7])[0]
    params = {}
    if rng.random() < 0.3:
        params["k"] = rng.choice(ODD_K)
    if endpoint in ("/classify", "/explain") and r < 0.5:  # a raw body
        ctype = rng.choice(["image/jpeg", "image/png", "application/octet-stream", "", "text/plain",
                            "application/json", "image/", "multipart/form-data", "image/jpeg; charset=utf-8"])
        if endpoint == "/explain" and rng.random() < 0.5:
            params.update(label=rng.choice(ODD_LABELS), format=rng.choice(["json", "png", "xml", ""]))
        return Case("POST", endpoint, f"raw {ctype!r} {len(image)} B", image,
                    {"Content-Type": ctype} if ctype else {}, params)
    if endpoint in ("/classify", "/explain"):
        n = 1 if rng.random() < 0.9 else rng.randint(0, 3)
        fields = {"k": rng.choice(ODD_K)} if rng.random() < 0.2 else {}
        if endpoint == "/explain" and rng.random() < 0.5:
            fields.update(label=rng.choice(ODD_LABELS), format=rng.choice(["json", "png", "xml"]))
        body, ctype = multipart(rng, [(rng.choice(["image", "file", "img"]), image) for _ in range(n)], fields)
        return Case("POST", endpoint, f"multipart {n} files {len(body)} B", body, {"Content-Type": ctype}, params)
    if endpoint == "/classify_batch":
        n = rng.choice([0, 1, 2, 5, 16, 65, 100])
        files = [(f"f{i}", rng.choice([image, rng.choice(images), mutate(rng, rng.choice(images), images)]))
                 for i in range(n)]
        fields = {f"field{i}": "v" * rng.randint(0, 100) for i in range(rng.choice([0, 0, 1, 40]))}
        body, ctype = multipart(rng, files, fields)
        return Case("POST", endpoint, f"multipart {n} files {len(fields)} fields", body, {"Content-Type": ctype},
                    params)
    if endpoint == "/feedback":
        fields = {"label": rng.choice(ODD_LABELS)} if rng.random() < 0.9 else {}
        body, ctype = multipart(rng, [("image", image)], fields)
        headers = {"Content-Type": ctype}
        if rng.random() < 0.5:
            headers["Authorization"] = rng.choice(ODD_AUTH)
        return Case("POST", endpoint, f"feedback label={fields.get('label', '-')[:20]!r}", body, headers, params)
    if endpoint == "/admin/reload":
        auth = rng.choice(ODD_AUTH)
        return Case("POST", endpoint, f"auth {auth[:30]!r}", b"", {"Authorization": auth} if auth else {})
    if endpoint == "get":
        return Case("GET", rng.choice(["/model", "/readyz", "/livez", "/healthz", "/metrics"]), "get", b"", {}, params)
    method, path = rng.choice([("GET", "/classify"), ("PUT", "/feedback"), ("DELETE", "/model"),
                               ("GET", "/nope"), ("POST", "/nope"), ("GET", "/../../etc/passwd"),
                               ("POST", "/classify/"), ("PATCH", "/classify_batch"), ("GET", "/classify?k=%ff")])
    return Case(method, path, f"{method} {path}", image if method != "GET" else b"",
                {"Content-Type": "image/jpeg"} if method != "GET" else {})


def any_case(rng: random.Random, images: list[bytes], big: list[bytes]) -> Case:
    """One random request of the whole corpus: images and forms (make_case), parameters, bodies, headers, raw."""
    r = rng.random()
    small = rng.choice(images[:3])
    if r < 0.15:
        return param_case(rng, small)
    if r < 0.25:
        return body_case(rng, small)
    if r < 0.29:
        return header_case(rng, small)
    if r < 0.35:
        what, data, expected, framing, half_close = rng.choice(raw_cases(rng, small))
        return Case("RAW", "raw", what, raw=data, expected=expected, framing=framing, half_close=half_close)
    return make_case(rng, images, big)


def cases(seed: int, n: int) -> list[Case]:
    """The ``n`` requests that ``seed`` makes: the same ones every run."""
    images, big = list(seed_images(seed).values()), bombs(seed)
    rng = random.Random(seed)
    out = [any_case(rng, images, list(big.values())) for _ in range(n)]
    # Every raw case once, so that every run covers them.
    out += [Case("RAW", "raw", what, raw=data, expected=expected, framing=framing, half_close=half_close)
            for what, data, expected, framing, half_close in raw_cases(random.Random(seed), images[0])]
    # Always include each bomb once, raw, so every run covers them.
    return out + [Case("POST", "/classify", f"bomb {name}", data, {"Content-Type": "image/png"})
                  for name, data in big.items()]


# -- running -----------------------------------------------------------------------------------------------------
def judge(case: Case, status: int | None, body: bytes, ctype: str) -> Outcome:
    if status is None:
        return Outcome(case, None, "no answer", True)
    if status >= 500 or status < 100:
        return Outcome(case, status, f"5xx or not HTTP: {body[:200]!r}", True)
    if 400 <= status < 500:
        if case.framing and status == 400 and body == UVICORN_FRAMING_BODY:
            return Outcome(case, status, "uvicorn_framing", False)
        try:
            payload = json.loads(body)
        except ValueError:
            return Outcome(case, status, f"4xx not JSON ({ctype}): {body[:200]!r}", True)
        if not isinstance(payload, dict) or not isinstance(payload.get("error"), str) \
                or not isinstance(payload.get("detail"), str):
            return Outcome(case, status, f"4xx JSON without 'error' and 'detail': {body[:200]!r}", True)
        return Outcome(case, status, payload["error"], False)
    return Outcome(case, status, None, False)


def judge_raw(case: Case, replies: list) -> list[Outcome]:
    """One outcome per answer a raw case got; a missing answer is a failure unless the case stopped sending, or the
    last answer said ``Connection: close`` (the server announced it would take no more requests on the connection,
    as it may with several workers (service/keepalive.py); a pipelining client resends the rest, RFC 9112 9.3.2)."""
    out = [judge(case, r.status, r.body, r.headers.get("content-type", "")) for r in replies]
    announced = bool(replies) and replies[-1].headers.get("connection", "").lower() == "close"
    if len(replies) < case.expected and not case.half_close and not announced:
        out.append(Outcome(case, None, f"{len(replies)} of {case.expected} answers", True))
    return out or [Outcome(case, 0, "no answer after half-close", False)]


def log_problems(text: str) -> list[str]:
    """Tracebacks and WARNING/ERROR lines of a server log, but uvicorn's one line for malformed framing."""
    lines = text.splitlines()
    bad = [ln for ln in lines if "Traceback" in ln]
    bad += [ln for ln in lines if re.search(r"\b(WARNING|ERROR|CRITICAL)\b", ln) and UVICORN_FRAMING_LOG not in ln]
    return bad


def as_raw(case: Case) -> bytes:
    """``case`` as the bytes of an HTTP/1.1 request, for what httpx will not send (a URL over 64 KB, a lone
    surrogate, a header value it refuses): values are UTF-8 (lone surrogates kept) and %-encoded."""
    pairs = case.params.items() if isinstance(case.params, dict) else case.params
    query = urlencode([(k.encode("utf-8", "surrogatepass"), v.encode("utf-8", "surrogatepass")) for k, v in pairs])
    target = case.path + ("?" + query if query else "")
    items = case.headers.items() if isinstance(case.headers, dict) else case.headers
    lines = [f"{case.method} {target} HTTP/1.1".encode(), b"Host: fuzz", b"Connection: close",
             f"Content-Length: {len(case.content)}".encode()]
    lines += [k.encode("latin-1", "replace") + b": " + v.encode("utf-8", "surrogatepass") for k, v in items]
    return b"\r\n".join(lines) + b"\r\n\r\n" + case.content


async def run(url: str, todo: list[Case], concurrency: int, timeout: float) -> list[Outcome]:
    results: list[Outcome] = []
    queue = iter(todo)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    where = urlsplit(url)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def worker() -> None:
            for case in queue:
                if case.raw is not None:
                    replies = await asyncio.to_thread(exchange, where.hostname, where.port, case.raw, case.expected,
                                                      case.half_close, min(timeout, 20))
                    results.extend(judge_raw(case, replies))
                    continue
                try:
                    items = case.headers.items() if isinstance(case.headers, dict) else case.headers
                    headers = [(k, v.encode()) for k, v in items]  # bytes: non-ASCII goes as is
                    r = await client.request(case.method, case.path, content=case.content, headers=headers,
                                             params=case.params)
                    results.append(judge(case, r.status_code, r.content, r.headers.get("content-type", "")))
                except (httpx.LocalProtocolError, httpx.InvalidURL, UnicodeEncodeError):  # httpx refuses to send it
                    raw = Case(case.method, case.path, f"raw, as httpx would not: {case.what}", raw=as_raw(case),
                               framing=True)
                    replies = await asyncio.to_thread(exchange, where.hostname, where.port, raw.raw, 1, False,
                                                      min(timeout, 20))
                    results.extend(judge_raw(raw, replies))
                except httpx.HTTPError as e:
                    results.append(Outcome(case, None, f"{type(e).__name__}: {e}", True))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def fuzz(url: str, n: int, seed: int = 0, concurrency: int = 8, timeout: float = 60) -> list[Outcome]:
    return asyncio.run(run(url, cases(seed, n), concurrency, timeout))


def summary(outcomes: list[Outcome]) -> str:
    by_endpoint: dict[str, Counter] = {}
    for o in outcomes:
        key = o.case.path if o.case.path in ("/classify", "/classify_batch", "/explain", "/feedback",
                                             "/admin/reload") else "other"
        by_endpoint.setdefault(key, Counter())[o.status] += 1
    lines = [f"{len(outcomes)} requests; status counts: "
             + ", ".join(f"{s}: {c}" for s, c in sorted(Counter(o.status for o in outcomes).items(), key=str))]
    for key, counts in sorted(by_endpoint.items()):
        lines.append(f"  {key:16s} " + ", ".join(f"{s}: {c}" for s, c in sorted(counts.items(), key=str)))
    errors = Counter(o.error for o in outcomes if o.status and 400 <= o.status < 500 and not o.failure)
    raw = Counter(o.status for o in outcomes if o.case.raw is not None)
    lines.append("  raw-socket answers: " + ", ".join(f"{s}: {c}" for s, c in sorted(raw.items(), key=str))
                 + " (0: none after a half-close)")
    lines.append("  4xx error codes: " + ", ".join(f"{e}: {c}" for e, c in errors.most_common()))
    failures = [o for o in outcomes if o.failure]
    lines.append(f"failures (5xx, no answer, 4xx without a JSON error): {len(failures)}")
    kinds = Counter((o.case.method, o.case.path, o.status, (o.error or "")[:60]) for o in failures)
    examples = {}
    for o in failures:
        examples.setdefault((o.case.method, o.case.path, o.status, (o.error or "")[:60]), o)
    # The worst first (no answer, 5xx), one example per kind.
    for key, count in sorted(kinds.items(), key=lambda kv: (kv[0][2] or 999) < 500):
        o = examples[key]
        lines.append(f"  {count} x {o.case.method} {o.case.path} -> {o.status}: {o.error} (e.g. [{o.case.what}])")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:3000")
    p.add_argument("--serve", action="store_true", help="start a server on a tiny model and fuzz that (ignores --url)")
    p.add_argument("--log", type=Path, help="the server's log, checked for tracebacks and warnings after the run")
    p.add_argument("--n", type=int, default=2000, help="random requests (the bombs and raw cases are added once each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fuzz-") as tmp:
        log = args.log
        if args.serve:
            log = Path(tmp) / "server.log"
            with serve_tiny(Path(tmp), log, **FUZZ_SETTINGS) as (url, _):
                outcomes = fuzz(url, args.n, args.seed, args.concurrency)
        else:
            outcomes = fuzz(args.url, args.n, args.seed, args.concurrency)
        print(summary(outcomes))
        problems = log_problems(log.read_text(errors="replace")) if log else []
        if log:
            print(f"server log: {len(problems)} traceback/warning/error line(s) (uvicorn's framing warning excepted)")
            for line in problems[:20]:
                print("  " + line[:300])
    print(f"{time.perf_counter() - start:.1f} s")
    sys.exit(1 if problems or any(o.failure for o in outcomes) else 0)


if __name__ == "__main__":
    main()
