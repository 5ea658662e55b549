"""``python -m kyb_services.gateway``: serves the gateway, configured by KYB_CONFIG and KYB_* variables."""

from __future__ import annotations

import logging
import sys

from kyb.errors import EXIT_CODES, KybError, lookup
from kyb.rpc import from_environ, serve
from kyb.rpc.cli import setup_logging
from kyb_services.gateway.server import create_server


def main() -> int:
    setup_logging()
    try:
        server, _port = create_server(from_environ())
    except KybError as exc:
        logging.getLogger("kyb_services.gateway").error("cannot start: %s", exc)
        return int(lookup(EXIT_CODES, exc))
    serve([server])
    return 0


if __name__ == "__main__":
    sys.exit(main())
