"""Bearer tokens: strict parsing of the ``Authorization`` header and a constant-time comparison."""
from __future__ import annotations

import hmac
import re

__all__ = ["bearer_matches", "parse_bearer"]

# RFC 6750: the scheme (case-insensitive), one space, a token68. Nothing before, between or after.
_BEARER = re.compile(r"[Bb][Ee][Aa][Rr][Ee][Rr] ([A-Za-z0-9\-._~+/]+=*)")


def parse_bearer(header: str | None) -> str | None:
    """The token of ``Authorization: Bearer <token>``, or None for anything else (no scheme, another scheme,
    extra spaces or words, an empty token)."""
    if not header:
        return None
    m = _BEARER.fullmatch(header)
    return m.group(1) if m else None


def bearer_matches(header: str | None, expected: str) -> bool:
    """Whether ``header`` carries exactly the bearer token ``expected`` (never true for an empty ``expected``)."""
    token = parse_bearer(header)
    return bool(expected) and token is not None and hmac.compare_digest(token.encode(), expected.encode())
