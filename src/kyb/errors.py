"""One error root for the whole project and the one table that maps errors to gRPC statuses.

Every layer raises a subclass of :class:`KybError`; the services translate with :data:`GRPC_STATUS`
(Pastec keeps its result codes in one enum for the same reason), the web front with :data:`HTTP_STATUS`
and the CLI with :data:`EXIT_CODES`.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

__all__ = [
    "EXIT_CODES",
    "EXIT_CODE_MEANINGS",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_PARTIAL",
    "GRPC_STATUS",
    "HTTP_STATUS",
    "ConfigError",
    "DeadlineExceeded",
    "ImageTooLarge",
    "IndexCorrupt",
    "InvalidImage",
    "InvalidRequest",
    "KybError",
    "NotFound",
    "NotReady",
    "Unauthenticated",
    "Unavailable",
    "error_id",
    "exit_codes_text",
]


def error_id() -> str:
    """A short random id that ties what a caller was told to the full text in a server's log."""
    return uuid.uuid4().hex[:12]


class KybError(Exception):
    """Root of every error this project raises on purpose; the message is one line for a person."""

    #: The gRPC status code (a ``grpc.StatusCode``) when the error came back from a call, else None.
    code: Any = None


class InvalidRequest(KybError):
    """The caller asked for something malformed (bad field, bad box, unknown kind)."""


class InvalidImage(InvalidRequest):
    """The bytes are not a usable image: corrupt, truncated, empty, an unsupported type, too small."""


class ImageTooLarge(KybError):
    """The image is over a configured limit (bytes or pixels); refused before it is decoded."""


class NotFound(KybError):
    """An id (reference, band, album) that does not exist."""


class NotReady(KybError):
    """A component that is not ready yet, e.g. an index with no codebook trained."""


class Unavailable(KybError):
    """A dependency (database, cache, another service) cannot be reached."""


class DeadlineExceeded(KybError):
    """The caller's deadline ran out before the work finished."""


class Unauthenticated(KybError):
    """Missing or wrong credentials."""


class ConfigError(KybError, ValueError):
    """A configuration field has a bad value; the message names the field."""


class IndexCorrupt(KybError):
    """An index folder whose files do not match their manifest."""


# Names of grpc.StatusCode members; kept as strings so importing this module does not import grpc.
T = TypeVar("T")

GRPC_STATUS: dict[type[KybError], str] = {
    InvalidImage: "INVALID_ARGUMENT",
    InvalidRequest: "INVALID_ARGUMENT",
    ConfigError: "INVALID_ARGUMENT",
    ImageTooLarge: "RESOURCE_EXHAUSTED",
    NotFound: "NOT_FOUND",
    NotReady: "FAILED_PRECONDITION",
    Unavailable: "UNAVAILABLE",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
    Unauthenticated: "UNAUTHENTICATED",
    IndexCorrupt: "DATA_LOSS",
    KybError: "INTERNAL",
}

# HTTP status codes of the web front (services/web), from the same error families.
HTTP_STATUS: dict[type[KybError], int] = {
    InvalidImage: 400,
    InvalidRequest: 400,
    ConfigError: 400,
    Unauthenticated: 401,
    NotFound: 404,
    ImageTooLarge: 413,
    NotReady: 503,
    Unavailable: 503,
    DeadlineExceeded: 504,
    IndexCorrupt: 500,
    KybError: 500,
}

#: Exit code of a command that did part of its work: some items failed, the rest went through.
EXIT_PARTIAL = 1
#: Exit code of an error nobody raised on purpose (a bug): the one line says what and where.
EXIT_INTERNAL = 10
#: Exit code after Ctrl-C (128 + SIGINT, as shells report it) or a closed output pipe.
EXIT_INTERRUPTED = 130

# CLI exit codes: 0 ok, 1 some items failed, then one code per error family.
EXIT_CODES: dict[type[KybError], int] = {
    InvalidImage: 3,
    InvalidRequest: 2,
    ConfigError: 2,
    ImageTooLarge: 3,
    NotFound: 4,
    NotReady: 5,
    Unavailable: 6,
    DeadlineExceeded: 7,
    Unauthenticated: 8,
    IndexCorrupt: 9,
    KybError: EXIT_INTERNAL,
}

#: What every exit code of ``kyb`` means: ``kyb --help`` prints it and the README quotes it (a test
#: keeps the three equal to :data:`EXIT_CODES`).
EXIT_CODE_MEANINGS: dict[int, str] = {
    0: "ok",
    EXIT_PARTIAL: "some items failed (the rest went through)",
    2: "bad usage or a bad request",
    3: "bad image (unreadable, or over a size limit)",
    4: "not found",
    5: "not ready (no index yet)",
    6: "a dependency is down (database, gateway, another service)",
    7: "deadline exceeded",
    8: "unauthenticated (missing or wrong token)",
    9: "index corrupt (files do not match their manifest)",
    EXIT_INTERNAL: "internal error (a bug: the message names it)",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C, or the reader of the output went away)",
}


def exit_codes_text() -> str:
    """The exit codes as one sentence ("0 ok, 1 some items failed ..., 130 interrupted (Ctrl-C)")."""
    return ", ".join(f"{code} {meaning}" for code, meaning in EXIT_CODE_MEANINGS.items())


def lookup(table: Mapping[type[KybError], T], error: BaseException) -> T:
    """The entry for the most specific class of ``error`` in ``table`` (walks the MRO)."""
    for cls in type(error).__mro__:
        if cls in table:
            return table[cls]
    return table[KybError]
