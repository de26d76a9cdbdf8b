"""Bearer-token checks shared by the agent and the artifact store (standard library only)."""

from __future__ import annotations

import hmac


def bearer_matches(header: str, token: bytes) -> bool:
    """Whether an Authorization header carries ``token`` with the Bearer scheme (any case, RFC 7235).

    aiohttp keeps a header's non-UTF-8 bytes as surrogates; they are compared as the bytes sent,
    in constant time, and never raise.
    """
    scheme, _, credentials = header.strip().partition(" ")
    given = credentials.strip().encode("utf-8", "surrogateescape")
    return hmac.compare_digest(given, token) and scheme.lower() == "bearer"
