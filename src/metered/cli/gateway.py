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

__all__ = ["add_gateway_parser", "build_app", "gateway_command"]

logger = logging.getLogger("metered.gateway")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def add_gateway_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``gateway`` subcommand to the ``metered`` CLI's subparsers."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "gateway",
        help="serve a metered OpenAI-compatible endpoint",
        description=(
            "Serve the config's 'METHOD /path' routes as a metered OpenAI-compatible proxy. "
            "Callers' keys come from METERED_API_KEYS='key=account,...'; a caller without a "
            "known key is refused (401) unless the config sets gateway.unidentified_account."
        ),
    )
    parser.add_argument("--config", help="metered YAML config (default: catalog prices only)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8787, help="port to listen on")
    parser.add_argument(
        "--upstream",
        help="openai | anthropic | gemini | fake | URL for every route (default: each route's "
        "upstream; fake is the built-in offline fake, used only when named)",
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="upstream timeout in seconds")
    parser.add_argument(
        "--no-access-log",
        action="store_true",
        help="no uvicorn access log line per request (spans and usage records remain)",
    )
    # the default now: callers without a known key are refused unless the config names
    # the account they are charged to (gateway.unidentified_account); kept for old scripts
    parser.add_argument("--require-key", action="store_true", help=argparse.SUPPRESS)
    parser.set_defaults(func=gateway_command)
    return parser


def gateway_command(args: argparse.Namespace) -> int:
    """Run the gateway until interrupted (the ``metered gateway`` subcommand)."""
    # uvicorn is an optional extra (metered[gateway]): imported only when serving, so the
    # other commands and `metered --help` work without it
    import uvicorn

    app = build_app(args)
    uvicorn.run(
        app, host=args.host, port=args.port, log_level="info", access_log=not args.no_access_log
    )
    return 0


def build_app(args: argparse.Namespace) -> Any:
    """The app ``metered gateway`` serves, from its parsed arguments; logs the routes,
    their upstreams and the key policy (the CLI shows ``metered.gateway`` at INFO).

    Raises:
        ConfigError: the config does not load, or a route has no usable upstream.
    """
    if not logger.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
    meter = Meter.from_yaml(args.config) if args.config else Meter()
    app = create_app(
        meter,
        upstream=args.upstream,
        unidentified="reject" if args.require_key else None,
        timeout=args.timeout,
    )
    if meter.config.gateway.unidentified_account is not None and args.host not in _LOOPBACK:
        logger.warning(
            "serving %s to callers without a known key (charged to %r)",
            args.host,
            meter.config.gateway.unidentified_account,
        )
    return app
