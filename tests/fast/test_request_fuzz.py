"""Hostile requests on the ASGI app (tiny model, in process): parameters BentoML's parser must never see,
Hypothesis over every endpoint's parameters, and Schemathesis cases generated from the service's own /docs.json.

The rule for every case: no 5xx, and every 4xx is JSON ``{"error": code, "detail": text}``.
"""
from __future__ import annotations

import typing
from typing import Literal

import pytest
import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.params import RULES, ChoiceParam, IntParam, TextParam
from tests.fast.test_api import AUTH, TOKEN, api, assert_error, jpeg, up  # noqa: F401 - api is a fixture
from tests.schema_cases import assert_no_5xx_and_json_4xx, run_schema_cases

HUGE = "9" * 5000  # over Python's 4,300-digit limit: json.loads raised ValueError, answered 500
FAST = settings(max_examples=40, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


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
    from service.config import Config
    from service.middleware import upload_routes
    from service.service import ClassifierApi

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
            else:
                assert args[0] is str and isinstance(rule, TextParam), name


NUMBERS = st.sampled_from(["0", "-1", "1", "2", "3", "1e3", "1.0", "NaN", "Infinity", "-Infinity", "0x10", " 1",
                           "1 ", "+1", "１", HUGE, "9" * 20, "true", "null", "[]", "{}"])
STRINGS = st.one_of(st.text(max_size=50), st.sampled_from(["red", "blue", "x" * 20_000, "\x00", "\u202ered",
                                                            "png", "json"]))  # httpx sends URLs up to 64 KB
NAMES = st.sampled_from(["k", "label", "format", "image", "images", "x", ""])


@FAST
@given(path=st.sampled_from(["/classify", "/classify_batch", "/explain", "/feedback"]),
       query=st.lists(st.tuples(NAMES, st.one_of(NUMBERS, STRINGS)), max_size=3),
       form=st.lists(st.tuples(NAMES, st.one_of(NUMBERS, STRINGS)), max_size=3),
       raw=st.booleans())
def test_hypothesis_over_every_upload_parameter(api, path, query, form, raw) -> None:  # noqa: F811
    field = "images" if path == "/classify_batch" else "image"
    url = requests.Request("POST", "http://testserver" + path, params=query).prepare().url
    if raw:
        r = api.post(url, content=jpeg("red"), headers={"content-type": "image/jpeg", **AUTH})
    else:
        parts = [(field, ("a.jpg", jpeg("blue"), "image/jpeg"))] + [(n, (None, v)) for n, v in form]
        r = api.post(url, files=parts, headers=AUTH)
    assert_no_5xx_and_json_4xx(r)


@FAST
@given(path=st.sampled_from(["/model", "/admin/reload", "/healthz", "/metrics", "/docs.json", "/nope"]),
       method=st.sampled_from(["GET", "POST", "PUT"]),
       query=st.lists(st.tuples(NAMES, st.one_of(NUMBERS, STRINGS)), max_size=3),
       body=st.one_of(st.just(b""), st.binary(max_size=64), st.sampled_from([b"{}", b'{"k": ' + HUGE.encode() + b"}"])),
       ctype=st.sampled_from(["", "application/json", "application/x-www-form-urlencoded", "text/plain"]))
def test_hypothesis_over_the_other_routes(api, path, method, query, body, ctype) -> None:  # noqa: F811
    url = requests.Request(method, "http://testserver" + path, params=query).prepare().url
    headers = {"content-type": ctype} if ctype else {}
    r = api.request(method, url, content=body, headers=headers)
    assert_no_5xx_and_json_4xx(r)


def test_schemathesis_cases_from_the_openapi_schema(api) -> None:  # noqa: F811
    seen = run_schema_cases(api, 25, {"/admin/reload": {"authorization": f"Bearer {TOKEN}"}, "/feedback": AUTH})
    assert {"/classify", "/classify_batch", "/explain", "/feedback", "/model", "/admin/reload"} <= {p for p, _ in seen}
    statuses = {s for _, s in seen}
    assert 200 in statuses and 400 in statuses, sorted(statuses)
