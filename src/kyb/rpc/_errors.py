"""Domain errors <-> gRPC statuses, using the one table in :data:`kyb.errors.GRPC_STATUS`.

Servers end a failed call with ``context.abort(code, one_line_message)``; clients turn a status back
into the matching :class:`~kyb.errors.KybError` subclass, so callers of :mod:`kyb.client` handle the
same exceptions embedded and remote (Pastec's PastecLib maps its result codes the same way).
"""

from __future__ import annotations

import re

import grpc

from kyb.errors import (
    GRPC_STATUS,
    DeadlineExceeded,
    ImageTooLarge,
    IndexCorrupt,
    InvalidRequest,
    KybError,
    NotFound,
    NotReady,
    Unauthenticated,
    Unavailable,
    lookup,
)

__all__ = ["caller_message", "error_from_rpc", "one_line", "status_for"]

_FROM_CODE: dict[grpc.StatusCode, type[KybError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ImageTooLarge,
    grpc.StatusCode.NOT_FOUND: NotFound,
    grpc.StatusCode.FAILED_PRECONDITION: NotReady,
    grpc.StatusCode.UNAVAILABLE: Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    grpc.StatusCode.UNAUTHENTICATED: Unauthenticated,
    grpc.StatusCode.DATA_LOSS: IndexCorrupt,
}


def one_line(text: str, limit: int = 400) -> str:
    """The first line of ``text``, cut to ``limit`` characters (status details are for people)."""
    line = (text.strip().splitlines() or [""])[0]
    return line if len(line) <= limit else line[: limit - 1] + "…"


def status_for(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status code and one-line message for a domain error (catalog errors are KybErrors too);
    INTERNAL with a generic message for anything else, whose text may hold internals."""
    if isinstance(error, KybError):
        name = lookup(GRPC_STATUS, error)
        return getattr(grpc.StatusCode, str(name)), one_line(str(error) or type(error).__name__)
    return grpc.StatusCode.INTERNAL, f"internal error ({type(error).__name__}); see the server log"


#: What a message for a caller outside the cluster must not carry: connection strings and DSNs
#: (``postgresql://u@h/db``, ``user@host:port/db``), addresses (``ipv4:10.0.0.7:50052``, ``host:port``)
#: and file paths (``/var/lib/kyb/index``). Stage names ("encoder", "shard-1") stay: they say what failed.
_INTERNALS = [
    (re.compile(r"\b[a-z][a-z0-9+.\-]*://\S+", re.I), "<address>"),
    (re.compile(r"\b[\w.\-]+@[\w.\-]+(?::\d+)?(?:/[\w.\-]*)?"), "<database>"),
    (re.compile(r"\b(?:ipv4:|ipv6:|dns:)?(?:\[[0-9a-f:]+\]|[a-z0-9][\w.\-]*):\d{2,5}\b(?:,\S+)?", re.I), "<address>"),
    (re.compile(r"(?<![\w.])(?:/[\w.\-]+){2,}/?"), "<path>"),
]


def caller_message(message: str) -> str:
    """``message`` without the internals a caller outside the cluster must not see (see _INTERNALS)."""
    for pattern, replacement in _INTERNALS:
        message = pattern.sub(replacement, message)
    return message


def error_from_rpc(error: grpc.RpcError, *, target: str = "") -> KybError:
    """The :class:`KybError` subclass for a failed call's status, with its message (and target)."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else "") or code.name
    cls = _FROM_CODE.get(code, KybError)
    where = f"{target}: " if target else ""
    failure = cls(one_line(f"{where}{details}"))
    failure.code = code
    return failure
