"""Seeded fuzzing of every endpoint of a running service: mutated images of every format, decompression bombs,
odd multipart bodies, bad parameters and headers, wrong methods and paths.

    python -m bench.fuzz --url http://127.0.0.1:3000 [--n 20000] [--seed 0] [--concurrency 8]

Prints the status counts per endpoint and every failure. A failure is a 5xx, a dropped connection, or a 4xx whose
body is not a JSON object with an ``error`` key. Exits 1 on any failure. The same seed sends the same requests.
Start the server with ``REFUSAL_RATE=0``: otherwise it answers this one client's refusals 10 a second.
"""
from __future__ import annotations

import argparse
import asyncio
import io
import json
import random
import struct
import sys
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field

import httpx
import numpy as np
from PIL import Image


@dataclass
class Case:
    method: str
    path: str
    what: str  # a short description for failure reports
    content: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)


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
        "png_16bit": _save(Image.fromarray((np.asarray(img.convert("L"), np.uint16) * 257)), "PNG"),
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
ODD_K = ["", "0", "1", "2", "3", "-1", "abc", "1e3", "1.5", " 1", "99999999999999999999", "\x00", "１"]
ODD_LABELS = ["cat", "dog", "", "CAT", "x" * 2000, "../../etc/passwd", "cat\x00", "🐱", "cat dog", "null"]
ODD_AUTH = ["", "Bearer", "s3cret", "Bearer s3cret", "bearer s3cret", "Basic czNjcmV0",
            "Bearer " + "x" * 5000, "Bearer s3cret extra", "Bearer \u00e9"]


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
        parts.append(f'Content-Disposition: form-data; name="{name}"'.encode() + nl + nl + value.encode())
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


def cases(seed: int, n: int) -> list[Case]:
    """The ``n`` requests that ``seed`` makes: the same ones every run."""
    images, big = list(seed_images(seed).values()), bombs(seed)
    rng = random.Random(seed)
    out = [make_case(rng, images, list(big.values())) for _ in range(n)]
    # Always include each bomb once, raw, so every run covers them.
    return out + [Case("POST", "/classify", f"bomb {name}", data, {"Content-Type": "image/png"})
                  for name, data in big.items()]


# -- running -----------------------------------------------------------------------------------------------------
def judge(case: Case, status: int | None, body: bytes, ctype: str) -> Outcome:
    if status is None:
        return Outcome(case, None, "no answer", True)
    if status >= 500:
        return Outcome(case, status, f"5xx: {body[:200]!r}", True)
    if 400 <= status < 500:
        try:
            payload = json.loads(body)
        except ValueError:
            return Outcome(case, status, f"4xx not JSON ({ctype}): {body[:200]!r}", True)
        if not isinstance(payload, dict) or "error" not in payload:
            return Outcome(case, status, f"4xx JSON without 'error': {body[:200]!r}", True)
        return Outcome(case, status, str(payload["error"]), False)
    return Outcome(case, status, None, False)


async def run(url: str, todo: list[Case], concurrency: int, timeout: float) -> list[Outcome]:
    results: list[Outcome] = []
    queue = iter(todo)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        async def worker() -> None:
            for case in queue:
                try:
                    headers = {k: v.encode() for k, v in case.headers.items()}  # bytes: non-ASCII goes as is
                    r = await client.request(case.method, case.path, content=case.content, headers=headers,
                                             params=case.params)
                    results.append(judge(case, r.status_code, r.content, r.headers.get("content-type", "")))
                except httpx.LocalProtocolError as e:  # our request is unsendable (a client-side check)
                    results.append(Outcome(case, -1, f"not sent: {e}", False))
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
    p.add_argument("--n", type=int, default=2000, help="random requests (the bombs are added once each)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--concurrency", type=int, default=8)
    args = p.parse_args()
    start = time.perf_counter()
    outcomes = fuzz(args.url, args.n, args.seed, args.concurrency)
    print(summary(outcomes))
    print(f"{time.perf_counter() - start:.1f} s")
    sys.exit(1 if any(o.failure for o in outcomes) else 0)


if __name__ == "__main__":
    main()
