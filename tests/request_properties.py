"""Property-based requests through any HTTP client (Starlette's test client in the fast tier, httpx against a real
server end to end): Schemathesis cases from the service's own OpenAPI schema (``/docs.json``) and Hypothesis over
every endpoint's parameters. The rule every answer must keep: no 5xx, every 4xx JSON ``{"error", "detail"}``."""
from __future__ import annotations

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

HUGE = "9" * 5000  # over Python's 4,300-digit limit: BentoML's json.loads raised ValueError, answered 500
NUMBERS = st.sampled_from(["0", "-1", "1", "2", "3", "1e3", "1.0", "NaN", "Infinity", "-Infinity", "0x10", " 1",
                           "1 ", "+1", "１", HUGE, "9" * 20, "true", "null", "[]", "{}"])
STRINGS = st.one_of(st.text(max_size=50), st.sampled_from(["red", "cat", "x" * 20_000, "\x00", "\u202ered",
                                                            "png", "json"]))  # httpx sends URLs up to 64 KB
NAMES = st.sampled_from(["k", "label", "format", "image", "images", "x", ""])
PAIRS = st.lists(st.tuples(NAMES, st.one_of(NUMBERS, STRINGS)), max_size=3)


def assert_no_5xx_and_json_4xx(r) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        body = r.json()
        assert isinstance(body.get("error"), str) and isinstance(body.get("detail"), str), body


def send_case(client, case, headers: dict[str, str]):
    """A Schemathesis case sent through ``client`` (Starlette's test client or an httpx client with a base URL):
    the requests library builds the body exactly as Schemathesis would send it."""
    kwargs = case.as_transport_kwargs(base_url=str(client.base_url).rstrip("/"), headers=headers)
    kwargs.pop("cookies", None)
    prepared = requests.Request(**kwargs).prepare()
    return client.request(prepared.method, prepared.url, content=prepared.body or b"",
                          headers=dict(prepared.headers))


def run_schema_cases(client, examples: int, auth: dict[str, dict[str, str]]) -> list[tuple[str, int]]:
    """``examples`` generated cases for every operation of ``client``'s /docs.json, each checked by
    :func:`assert_no_5xx_and_json_4xx`; ``auth``: headers by path. Returns (path, status) of every case."""
    schema = schemathesis.openapi.from_dict(client.get("/docs.json").json())
    seen: list[tuple[str, int]] = []
    for op in (result.ok() for result in schema.get_all_operations()):
        _check_operation(client, op, auth.get(op.path, {}), examples, seen)
    return seen


def _check_operation(client, op, headers: dict[str, str], examples: int, seen: list[tuple[str, int]]) -> None:
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case=op.as_strategy())
    def check(case) -> None:
        r = send_case(client, case, headers)
        seen.append((op.path, r.status_code))
        assert_no_5xx_and_json_4xx(r)

    check()


def _path_with(method: str, path: str, query: list[tuple[str, str]]) -> str:
    return requests.Request(method, "http://x" + path, params=query).prepare().path_url


def run_parameter_properties(client, examples: int, image: bytes, auth: dict[str, str]) -> None:
    """Hypothesis over every endpoint's parameters: query and form pairs of odd names and values on the upload
    routes (raw body or multipart), and odd queries, bodies and content types on the routes without parameters."""
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(["/classify", "/classify_batch", "/explain", "/feedback"]), query=PAIRS, form=PAIRS,
           raw=st.booleans())
    def uploads(path: str, query: list, form: list, raw: bool) -> None:
        url = _path_with("POST", path, query)
        if raw:
            r = client.post(url, content=image, headers={"content-type": "image/jpeg", **auth})
        else:
            field = "images" if path == "/classify_batch" else "image"
            parts = [(field, ("a.jpg", image, "image/jpeg"))] + [(n, (None, v)) for n, v in form]
            r = client.post(url, files=parts, headers=auth)
        assert_no_5xx_and_json_4xx(r)

    @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(path=st.sampled_from(["/model", "/admin/reload", "/healthz", "/metrics", "/docs.json", "/nope"]),
           method=st.sampled_from(["GET", "POST", "PUT"]), query=PAIRS,
           body=st.one_of(st.just(b""), st.binary(max_size=64),
                          st.sampled_from([b"{}", b'{"k": ' + HUGE.encode() + b"}"])),
           ctype=st.sampled_from(["", "application/json", "application/x-www-form-urlencoded", "text/plain"]))
    def others(path: str, method: str, query: list, body: bytes, ctype: str) -> None:
        headers = {"content-type": ctype} if ctype else {}
        assert_no_5xx_and_json_4xx(client.request(method, _path_with(method, path, query), content=body,
                                                  headers=headers))

    uploads()
    others()
