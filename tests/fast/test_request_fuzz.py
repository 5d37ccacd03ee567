"""Hostile requests on the ASGI app (tiny model, in process): parameters BentoML's parser must never see,
Hypothesis over every endpoint's parameters, and Schemathesis cases generated from the service's own /docs.json.

The rule for every case: no 5xx, and every 4xx is JSON ``{"error": code, "detail": text}``.
"""
from __future__ import annotations

import typing
from typing import Literal

import pytest

from service.params import RULES, ChoiceParam, IntParam, TextParam
from tests.fast.test_api import AUTH, TOKEN, api, assert_error, jpeg, up  # noqa: F401 - api is a fixture
from tests.request_properties import (
    HUGE,
    assert_no_5xx_and_json_4xx,
    run_parameter_properties,
    run_schema_cases,
)


@pytest.mark.parametrize("call", [
    lambda c: c.post(f"/classify?k={HUGE}", files=up(jpeg("red"))),
    lambda c: c.post("/classify", files=up(jpeg("red")), data={"k": HUGE}),
    lambda c: c.post("/classify_batch", files={"images": ("a.jpg", jpeg("red"), "image/jpeg")}, data={"k": HUGE}),
    lambda c: c.post("/explain", files=up(jpeg("red")), data={"format": HUGE}),
    lambda c: c.post("/feedback", files=up(jpeg("red")), data={"label": HUGE * 4}, headers=AUTH),
    lambda c: c.post("/model", data={"k": HUGE}),
    lambda c: c.post("/model", files={"k": (None, HUGE)}),
    lambda c: c.post("/admin/reload", data={"x": HUGE}, headers={"authorization": f"Bearer {TOKEN}"}),
], ids=["classify-query", "classify-form", "batch-form", "explain-format", "feedback-label", "model-urlencoded",
        "model-multipart", "reload-form"])
def test_oversized_parameters_are_refused_before_bentoml(api, call) -> None:  # noqa: F811
    r = call(api)
    assert r.status_code in (400, 413, 415), (r.status_code, r.text)
    assert_no_5xx_and_json_4xx(r)


@pytest.mark.parametrize("query", ["k=true", "k=1e3", "k=1.5", "k=NaN", "k=Infinity", "k=0x2", "k=%201", "k=1&k=2",
                                   "k=%00", "k=%ff", "x=1", "k=[1]", "k=" + "1" * 5, "&".join(["a=1"] * 100)])
def test_odd_query_values_get_bad_parameter(api, query: str) -> None:  # noqa: F811
    assert_error(api.post(f"/classify?{query}", files=up(jpeg("red"))), 400, "bad_parameter")


def test_query_and_form_conflict_and_repeats_are_refused(api) -> None:  # noqa: F811
    assert_error(api.post("/classify?k=1", files=up(jpeg("red")), data={"k": "2"}), 400, "bad_parameter")
    assert_error(api.post("/classify", files=[("image", ("a.jpg", jpeg("red"), "image/jpeg")), ("k", (None, "1")),
                                              ("k", (None, "2"))]), 400, "bad_parameter")
    assert len(api.post("/classify?k=", files=up(jpeg("red")), data={"k": ""}).json()["probabilities"]) == 3


def test_routes_without_parameters_take_none(api) -> None:  # noqa: F811
    for call in (lambda: api.get("/model?x=1"), lambda: api.post("/model?k=1"), lambda: api.get("/healthz?a=b"),
                 lambda: api.post("/model", json={"x": 1})):
        assert_error(call(), 400, "bad_parameter")
    assert_error(api.post("/model", data={"a": "b"}), 415, "unsupported_media_type")
    assert api.post("/model", json={}).status_code == 200 and api.post("/model").status_code == 200
    assert_error(api.get("/nope?" + "a" * 5000), 400, "bad_parameter")
    assert_error(api.get("/nope?a=1"), 404, "not_found")


def test_parameter_rules_match_the_endpoint_signatures() -> None:
    """service/params.py's rules and the routes' parameter lists agree with what each endpoint declares."""
    from service.api import ClassifierApi
    from service.config import Config
    from service.middleware import upload_routes

    for path, route in upload_routes(Config.from_env()).items():
        method = getattr(ClassifierApi, path.strip("/")).func
        hints = typing.get_type_hints(method, include_extras=False)
        declared = {n for n in hints if n not in ("return", "ctx", route.file_field)}
        assert declared == route.params, path
        for name in declared:
            kind = hints[name]
            args = [a for a in typing.get_args(kind) if a is not type(None)] or [kind]
            rule = RULES[name]
            if typing.get_origin(kind) is Literal:
                assert isinstance(rule, ChoiceParam) and set(rule.choices) == set(typing.get_args(kind)), name
            elif args[0] is int:
                assert isinstance(rule, IntParam), name
            elif args[0] is bool:
                assert isinstance(rule, ChoiceParam) and set(rule.choices) == {"true", "false", "1", "0"}, name
            else:
                assert args[0] is str and isinstance(rule, TextParam), name


def test_hypothesis_over_every_endpoints_parameters(api) -> None:  # noqa: F811
    run_parameter_properties(api, 40, jpeg("red"), AUTH)


def test_schemathesis_cases_from_the_openapi_schema(api) -> None:  # noqa: F811
    seen = run_schema_cases(api, 25, {"/admin/reload": {"authorization": f"Bearer {TOKEN}"}, "/feedback": AUTH})
    assert {"/classify", "/classify_batch", "/explain", "/feedback", "/model", "/admin/reload"} <= {p for p, _ in seen}
    statuses = {s for _, s in seen}
    assert 200 in statuses and 400 in statuses, sorted(statuses)


def test_a_raw_case_missing_answers_fails_unless_the_server_announced_the_close() -> None:
    """Pipelined requests: a connection closed after fewer answers than requests is a failure, but for an answer
    that said ``Connection: close`` (the client then resends the rest, RFC 9112 9.3.2)."""
    from bench.fuzz import Case, judge_raw
    from bench.fuzz_raw import Reply

    case = Case("RAW", "raw", "pipelined", raw=b"...", expected=4)
    ok = Reply(200, {"content-type": "application/json"}, b"{}")
    assert [o.failure for o in judge_raw(case, [ok])] == [False, True]
    closed = Reply(200, {"content-type": "application/json", "connection": "close"}, b"{}")
    assert [o.failure for o in judge_raw(case, [ok, closed])] == [False, False]
    assert [o.failure for o in judge_raw(case, [ok] * 4)] == [False] * 4
