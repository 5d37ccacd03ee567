"""Query and form parameters, checked before BentoML parses them.

BentoML reads every query and form value with ``json.loads`` and lets pydantic coerce it: a ``k`` of 5,000 digits
raised ``ValueError`` (Python's limit on integer digits) and escaped as a 500; ``k=true`` became 1; ``k=1&k=2``
silently kept one. Here each endpoint's parameters are checked against what it takes (one rule per parameter
name, :data:`RULES`), and anything else is refused with 400 ``bad_parameter`` naming the problem.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from urllib.parse import parse_qsl

from imgcls.errors import ImgclsError

__all__ = ["MAX_QUERY_BYTES", "RULES", "ChoiceParam", "IntParam", "TextParam", "bad", "checked", "merged",
           "parse_query"]

MAX_QUERY_BYTES = 4096  # a query string longer than this is refused on every route (ours need a few bytes)


@dataclass(frozen=True)
class IntParam:
    max_digits: int = 4

    def check(self, name: str, value: str) -> None:
        if not re.fullmatch(rf"-?[0-9]{{1,{self.max_digits}}}", value):
            raise bad(f"{name} must be a whole number of at most {self.max_digits} digits, not {_show(value)}")


@dataclass(frozen=True)
class TextParam:
    max_chars: int = 200

    def check(self, name: str, value: str) -> None:
        if len(value) > self.max_chars:
            raise bad(f"{name} is {len(value)} characters long; the limit is {self.max_chars}")


@dataclass(frozen=True)
class ChoiceParam:
    choices: tuple[str, ...]

    def check(self, name: str, value: str) -> None:
        if value not in self.choices:
            raise bad(f"{name} must be one of {list(self.choices)}, not {_show(value)}")


# One rule per parameter name the endpoints take (tests/fast/test_request_fuzz.py checks them against the
# endpoints' signatures).
RULES: dict[str, IntParam | TextParam | ChoiceParam] = {
    "k": IntParam(),
    "label": TextParam(),
    "format": ChoiceParam(("png", "json")),
    "flag": ChoiceParam(("true", "false", "1", "0")),
}


def bad(detail: str) -> ImgclsError:
    return ImgclsError(400, "bad_parameter", detail)


def _show(value: str) -> str:
    return repr(value[:40] + ("..." if len(value) > 40 else ""))


def _printable(name: str, value: str) -> None:
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in value):
        raise bad(f"{_show(name)} holds a control character (NUL, newline, ...)")


def parse_query(raw: bytes) -> list[tuple[str, str]]:
    """The (name, value) pairs of a query string: bounded, UTF-8, no control characters; blank values dropped
    (``?k=`` means no ``k``)."""
    if len(raw) > MAX_QUERY_BYTES:
        raise bad(f"the query string is {len(raw)} bytes; the limit is {MAX_QUERY_BYTES}")
    try:
        pairs = parse_qsl(raw.decode("ascii"), keep_blank_values=False, encoding="utf-8", errors="strict",
                          max_num_fields=64)
    except (UnicodeDecodeError, ValueError) as e:
        raise bad(f"the query string is not valid UTF-8 name=value pairs: {e}") from e
    for name, value in pairs:
        _printable(name, name)
        _printable(name, value)
    return pairs


def checked(pairs: list[tuple[str, str]], takes: frozenset[str], where: str) -> dict[str, str]:
    """``pairs`` as a dict, each checked by its rule; refused: a name the endpoint does not take, a name given
    twice, a value its rule refuses."""
    out: dict[str, str] = {}
    for name, value in pairs:
        if name not in takes:
            raise bad(f"unknown {where} parameter {_show(name)}; this endpoint takes {sorted(takes) or 'none'}")
        if name in out:
            raise bad(f"{where} parameter {name!r} is given more than once")
        _printable(name, value)
        RULES[name].check(name, value)
        out[name] = value
    return out


def merged(query: dict[str, str], form: dict[str, str]) -> dict[str, str]:
    """Query and form parameters together; the same name in both is refused (which one was meant?)."""
    both = set(query) & set(form)
    if both:
        raise bad(f"parameter(s) {sorted(both)} given both in the query string and in the form")
    return {**form, **query}
