"""Schemathesis cases from the service's own OpenAPI schema (``/docs.json``), sent through any HTTP client, and the
rule every answer to hostile input must keep: no 5xx, every 4xx JSON ``{"error": code, "detail": text}``."""
from __future__ import annotations

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings


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
