"""Fuzzing in every run: 2,000 seeded hostile requests over every endpoint of a real server, plus every raw-socket
case once, plus Schemathesis cases generated from the server's own /docs.json and Hypothesis over every endpoint's
parameters.

Zero 5xx, zero dropped connections, every 4xx a JSON ``{"error", "detail"}`` (uvicorn's own plain-text 400 for
malformed HTTP framing is the one exception, accepted only where a raw case sends such framing:
bench/fuzz_raw.py), and no traceback or warning in the server's log. The server runs a tiny real ONNX model
(tests/tiny_model.py), so the whole decode -> batch -> ONNX Runtime path runs in seconds without photos.
"""
from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import httpx

from bench.fuzz import cases, fuzz, log_problems, summary
from bench.fuzz_raw import raw_cases
from bench.tiny_server import FUZZ_SETTINGS, serve_tiny
from tests import synthetic
from tests.request_properties import run_parameter_properties, run_schema_cases

N = 2000


def test_cases_are_seeded_and_cover_every_endpoint_and_every_kind() -> None:
    a, b = cases(7, 300), cases(7, 300)
    assert [(c.method, c.path, c.content, c.headers, c.params, c.raw) for c in a] == \
        [(c.method, c.path, c.content, c.headers, c.params, c.raw) for c in b]
    assert cases(8, 300)[0].content != a[0].content or cases(8, 300)[1].content != a[1].content
    every = cases(0, N)
    paths = {c.path for c in every}
    assert {"/classify", "/classify_batch", "/explain", "/feedback", "/admin/reload", "/model"} <= paths
    whats = " ".join(c.what for c in every)
    for kind in ("params shape", "body kind", "headers kind", "pipelined", "chunk", "HTTP/1.0", "100-continue"):
        assert kind in whats, kind
    huge_k = [c for c in every if any(k == "k" and len(v) >= 5000 for k, v in
                                      (c.params.items() if isinstance(c.params, dict) else c.params))]
    assert huge_k, "the corpus must send 5,000-digit numbers"
    assert len(raw_cases(random.Random(0), b"x")) >= 40


def test_fuzzing_every_endpoint_gives_no_5xx_only_json_4xx_and_a_clean_log(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with serve_tiny(tmp_path, log, **FUZZ_SETTINGS) as (url, _):
        outcomes = fuzz(url, N, seed=0, concurrency=8)
        with httpx.Client(base_url=url, timeout=60) as client:
            seen = run_schema_cases(client, 20, {"/admin/reload": {"authorization": "Bearer s3cret"},
                                                 "/feedback": {"authorization": "Bearer fuzz-feedback"}})
            run_parameter_properties(client, 30, synthetic.image_bytes("red", 0),
                                     {"authorization": "Bearer fuzz-feedback"})
    report = summary(outcomes)
    print(report)
    assert len(outcomes) >= N
    statuses = Counter(o.status for o in outcomes)
    assert {200, 201, 400, 401, 413, 415, 422} <= set(statuses), statuses  # the good and the bad paths ran
    failures = [o for o in outcomes if o.failure]
    assert not failures, report
    framing = [o for o in outcomes if o.error == "uvicorn_framing"]
    assert framing and all(o.case.raw is not None and o.case.framing for o in framing)
    # Strict bearer parsing: the token without "Bearer " opens nothing (the review found it accepted).
    bare = [o.status for o in outcomes if o.case.path == "/admin/reload" and isinstance(o.case.headers, dict)
            and o.case.headers.get("Authorization") in ("s3cret", "Bearer s3cret extra", "Basic czNjcmV0")]
    assert bare and set(bare) == {401}, bare
    assert {p for p, _ in seen} >= {"/classify", "/classify_batch", "/explain", "/feedback", "/model"}
    problems = log_problems(log.read_text(errors="replace"))
    assert not problems, problems[:10]
