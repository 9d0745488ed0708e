"""The ``metered`` command: quote, check, models, tokens, catalog, report, propose, gateway.

Human output is a plain table; ``--json`` prints one JSON document for scripts.
Errors print one line on stderr and exit 1; usage errors exit 2.

Each command lives with its arguments and output: :mod:`metered.cli.pricing` (quote,
models, tokens), :mod:`metered.cli.check`, :mod:`metered.cli.catalog` (catalog diff,
catalog update), :mod:`metered.cli.reports` (report, propose), :mod:`metered.cli.gateway`;
shared output helpers in :mod:`metered.cli.format`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from metered.cli.catalog import add_catalog_parser
from metered.cli.check import add_check_parser
from metered.cli.gateway import add_gateway_parser
from metered.cli.pricing import add_pricing_parsers
from metered.cli.reports import add_report_parsers
from metered.errors import MeteredError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metered", description="Price, check and meter LLM calls."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    add_pricing_parsers(sub)
    add_check_parser(sub)
    add_catalog_parser(sub)
    add_gateway_parser(sub)
    add_report_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI.

    Args:
        argv: the arguments after the program name (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0, or 1 after one ``error:`` line on stderr. Usage errors raise
        ``SystemExit(2)`` the way argparse does.
    """
    args = _parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except MeteredError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:  # e.g. Usage invariants from --cache-read > --input
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `metered models | head`
        return 0
    except OSError as exc:
        print(f"error: {exc.filename or ''}: {exc.strerror}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
