"""Bearer-token checks for servers and the metadata clients send.

Tokens come from ``rpc.tokens``; none configured means the server is open, which is logged as a
warning at start so nobody ships that by accident. Health checks and reflection stay open: the
Kubernetes probes carry no token.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

__all__ = ["TokenCheck", "bearer_metadata"]

#: Methods any caller may use: probes and service discovery.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def bearer_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Call metadata carrying ``token`` (empty when there is none)."""
    return (("authorization", f"Bearer {token}"),) if token else ()


class TokenCheck:
    """Decides whether a call's metadata carries one of the accepted tokens."""

    def __init__(self, tokens: Sequence[str]) -> None:
        self._tokens = [token.encode() for token in tokens]

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def is_open(self, method: str) -> bool:
        return not self._tokens or method.startswith(OPEN_PREFIXES)

    def problem(self, metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
        """An empty string when the metadata is acceptable, else a one-line reason."""
        if not self._tokens:
            return ""
        header = next((v for k, v in metadata or () if k.lower() == "authorization"), None)
        if header is None:
            return "missing bearer token: send 'authorization: Bearer <token>'"
        text = header.decode() if isinstance(header, bytes) else header
        scheme, _, token = text.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "malformed authorization header: expected 'Bearer <token>'"
        offered = token.strip().encode()
        # compare_digest against every token (no early exit) so timing says nothing about them.
        matched = [hmac.compare_digest(offered, accepted) for accepted in self._tokens]
        return "" if any(matched) else "invalid bearer token"
