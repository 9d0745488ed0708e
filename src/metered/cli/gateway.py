"""``metered gateway``: serve the metered OpenAI-compatible reverse proxy with uvicorn.

The app itself is :func:`metered.gateway.create_app`; this module only reads the command
line and starts the server.
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from metered.engine.meter import Meter
from metered.gateway import create_app

__all__ = ["add_gateway_parser", "gateway_command"]

logger = logging.getLogger("metered.gateway")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_gateway_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``gateway`` subcommand to the ``metered`` CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "gateway",
        help="serve a metered OpenAI-compatible endpoint",
        description=(
            "Serve the config's 'METHOD /path' routes as a metered OpenAI-compatible proxy. "
            "Callers' keys come from METERED_API_KEYS='key=account,...'."
        ),
    )
    parser.add_argument("--config", help="metered YAML config (default: catalog prices only)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8787, help="port to listen on")
    parser.add_argument(
        "--upstream",
        help="openai | anthropic | fake | URL (default: each route's upstream, else fake)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="upstream timeout in seconds")
    parser.add_argument(
        "--require-key", action="store_true", help="answer 401 to callers without a known key"
    )
    parser.set_defaults(func=gateway_command)
    return parser


def gateway_command(args: argparse.Namespace) -> int:
    """Run the gateway until interrupted (the ``metered gateway`` subcommand)."""
    # uvicorn is an optional extra (metered[gateway]): imported only when serving, so the
    # other commands and `metered --help` work without it
    import uvicorn

    meter = Meter.from_yaml(args.config) if args.config else Meter()
    app = create_app(
        meter,
        upstream=args.upstream,
        unidentified="reject" if args.require_key else "allow",
        timeout=args.timeout,
    )
    if not args.require_key and args.host not in _LOOPBACK:
        logger.warning(
            "serving %s without --require-key: callers without a known key are served "
            "on the upstream's API key as the anonymous account",
            args.host,
        )
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
