"""``metered quote | check | models | tokens``: prices, config checks, the catalog, counts.

Each command prints a plain table, or one JSON document with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from decimal import Decimal
from typing import Any

from metered import tokens
from metered.cli.format import dump, table
from metered.config import Config, load_config, load_yaml
from metered.engine.outbox import Outbox, outbox_path
from metered.money import format_usd
from metered.pricing.catalog import TieredRates
from metered.pricing.route import Pricer, Quote
from metered.usage import Usage

__all__ = ["add_pricing_parsers", "check_findings"]


def _load(path: str | None) -> Config:
    return load_yaml(path) if path else load_config({})


def _quote_dict(q: Quote) -> dict[str, Any]:
    return {
        "requested_model": q.requested_model,
        "resolved_model": q.resolved_model,
        "provider": q.provider,
        "route": q.route,
        "pricing_source": q.pricing_source,
        "pricing_mode": q.pricing_mode,
        "cost_usd": q.cost,
        "price_usd": q.price,  # None when unpriced
        "margin_usd": q.margin,
        "catalog_version": q.catalog_version,
        "usage": {
            "input_tokens": q.usage.input_tokens,
            "cache_read_tokens": q.usage.cache_read_tokens,
            "cache_write_tokens": q.usage.cache_write_tokens,
            "output_tokens": q.usage.output_tokens,
            "reasoning_tokens": q.usage.reasoning_tokens,
        },
    }


def _cmd_quote(args: argparse.Namespace) -> int:
    pricer = Pricer(_load(args.config))
    usage = Usage(
        input_tokens=args.input,
        output_tokens=args.output,
        cache_read_tokens=args.cache_read,
        cache_write_tokens=args.cache_write,
        reasoning_tokens=args.reasoning,
        source="estimated",
    )
    quotes = [pricer.quote(model, usage, route=args.route) for model in args.model]
    # an unpriced model is a row that says so, and the exit status is 1
    unpriced = [q.requested_model for q in quotes if q.pricing_source == "unpriced"]
    status = 1 if unpriced else 0
    for model in unpriced:
        print(f"error: model {model!r} has no price (unpriced: cost unknown)", file=sys.stderr)
    if args.json:
        dump([_quote_dict(q) for q in quotes] if len(quotes) > 1 else _quote_dict(quotes[0]))
        return status
    print(
        table(
            ["model", "resolved", "provider", "source", "mode", "cost", "price", "margin"],
            [
                [
                    q.requested_model,
                    q.resolved_model,
                    q.provider,
                    q.pricing_source,
                    q.pricing_mode,
                    format_usd(q.cost),
                    format_usd(q.price),
                    format_usd(q.margin),
                ]
                for q in quotes
            ],
        )
    )
    u = usage
    print(
        f"\nusage: {u.input_tokens} input ({u.cache_read_tokens} cache read, "
        f"{u.cache_write_tokens} cache write), {u.output_tokens} output "
        f"({u.reasoning_tokens} reasoning); prices: {quotes[0].catalog_version}"
    )
    return status


def check_findings(config: Config) -> list[dict[str, str]]:
    """Models, aliases and allow-list entries that would fall back or have no price.

    Args:
        config: a loaded configuration.

    Returns:
        One finding per (route, model): ``level`` (``error``: every call would be
        rejected; ``warning``), ``route``, ``model``, ``from`` (where the model is named)
        and ``problem``.
    """
    pricer = Pricer(config)
    findings: list[dict[str, str]] = []
    routes = list(pricer.routes.items()) or [("(default)", pricer.route())]
    names: list[tuple[str, str]] = [(a, "alias") for a in config.models.aliases]
    names += [(d, "deployment") for d in config.models.deployments]
    names += [(m, "allow") for m in config.models.allow or [] if "*" not in m]
    for route_name, route in routes:
        listed = [(m, "route.models") for m in route.config.models if m != "*"]
        for model, origin in listed + names:
            level, problem = "", ""
            if not route.is_known(model):
                policy = route.config.unknown_policy
                if policy == "fallback":
                    level, problem = "warning", "priced by the fallback"
                elif policy == "unpriced":
                    level, problem = "warning", "has no price: its calls would go unpriced"
                else:
                    level, problem = "error", "has no price: every call would be rejected"
            elif route.entry(model) is None:
                level, problem = "warning", "no catalog cost: margin unknown"
            if problem:
                findings.append(
                    {
                        "level": level,
                        "route": route_name,
                        "model": model,
                        "from": origin,
                        "problem": problem,
                    }
                )
    return findings


def _cmd_check(args: argparse.Namespace) -> int:
    config = load_yaml(args.config)
    findings = check_findings(config)
    path = outbox_path(config)
    backlog = Outbox(path) if path is not None else None
    if backlog is not None and len(backlog):
        findings.append(
            {
                "level": "warning",
                "route": "",
                "model": "",
                "from": str(backlog.path),
                "problem": f"{len(backlog)} settlement(s) wait for the budget store",
            }
        )
    errors = [f for f in findings if f["level"] == "error"]
    if args.json:
        dump({"ok": not errors, "findings": findings})
    else:
        if findings:
            print(
                table(
                    ["level", "route", "model", "from", "problem"],
                    [
                        [f["level"], f["route"], f["model"], f["from"], f["problem"]]
                        for f in findings
                    ],
                )
            )
        warnings = len(findings) - len(errors)
        print(
            f"{args.config}: {len(config.routes)} route(s), "
            f"{len(errors)} error(s), {warnings} warning(s)"
        )
    return 1 if errors else 0


def _cmd_models(args: argparse.Namespace) -> int:
    pricer = Pricer(_load(args.config))
    rows: list[dict[str, Any]] = []
    for entry in pricer.catalog.entries(args.pattern):
        rates = entry.current_rates()
        base = rates.base if isinstance(rates, TieredRates) else rates
        per = base.per_mtok()
        rows.append(
            {
                "model": entry.model_id,
                "provider": entry.provider,
                "source": entry.source,
                "input_per_mtok": per.get("input"),
                "output_per_mtok": per.get("output"),
                "cache_read_per_mtok": per.get("cache_read"),
                "cache_write_per_mtok": per.get("cache_write"),
                "tiered": isinstance(rates, TieredRates),
                "context_window": entry.context_window,
            }
        )
    if args.json:
        dump(rows)
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1

    def usd(value: Decimal | None) -> str:
        return "-" if value is None else f"${value:f}"

    print(
        table(
            [
                "model",
                "provider",
                "input/1M",
                "output/1M",
                "cache read/1M",
                "cache write/1M",
                "context",
            ],
            [
                [
                    r["model"] + (" (tiered)" if r["tiered"] else ""),
                    r["provider"],
                    usd(r["input_per_mtok"]),
                    usd(r["output_per_mtok"]),
                    usd(r["cache_read_per_mtok"]),
                    usd(r["cache_write_per_mtok"]),
                    r["context_window"],
                ]
                for r in rows
            ],
        )
    )
    return 0


def _cmd_tokens(args: argparse.Namespace) -> int:
    source = sys.stdin if args.file in (None, "-") else open(args.file, encoding="utf-8")  # noqa: SIM115
    with source:
        text = source.read()
    payload: Any = text
    if args.chat:
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as exc:
            print(
                f"error: --chat input is not JSON ({exc.msg} at line {exc.lineno})", file=sys.stderr
            )
            return 1
    count = tokens.count_request(payload, model=args.model, chat=args.chat)
    usage = Usage(input_tokens=count.tokens, output_tokens=0, source="estimated")
    quote = Pricer(_load(args.config)).quote(args.model, usage, route=args.route)
    result = {
        "model": args.model,
        "tokens": count.tokens,
        "encoding": count.encoding,
        "exact": count.exact,
        "input_cost_usd": quote.cost,
        "input_price_usd": quote.price,
        "pricing_source": quote.pricing_source,
    }
    if args.json:
        dump(result)
        return 0
    kind = "exact" if count.exact else "estimated"
    print(
        table(
            ["model", "tokens", "encoding", "count", "input cost", "input price"],
            [
                [
                    args.model,
                    count.tokens,
                    count.encoding,
                    kind,
                    format_usd(quote.cost),
                    format_usd(quote.price),
                ]
            ],
        )
    )
    return 0


def add_pricing_parsers(subparsers: Any) -> None:
    """Add ``quote``, ``check``, ``models`` and ``tokens`` to the CLI's subparsers."""
    q = subparsers.add_parser("quote", help="price a call: cost, price, margin and pricing source")
    q.add_argument("model", nargs="+", help="model id(s) as a caller would send them")
    q.add_argument("--input", type=int, required=True, help="input tokens (total, cached included)")
    q.add_argument("--output", type=int, required=True, help="output tokens (reasoning included)")
    q.add_argument("--cache-read", type=int, default=0)
    q.add_argument("--cache-write", type=int, default=0)
    q.add_argument("--reasoning", type=int, default=0)
    q.add_argument("--config", help="metered YAML config")
    q.add_argument("--route", help="route name in the config")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_quote)

    c = subparsers.add_parser("check", help="validate a config; list models without a price")
    c.add_argument("config")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_check)

    m = subparsers.add_parser("models", help="search the price catalog (prices per 1M tokens)")
    m.add_argument("pattern", nargs="?", help="case-insensitive regex on model or provider")
    m.add_argument("--config", help="metered YAML config (adds its overrides)")
    m.add_argument("--json", action="store_true")
    m.set_defaults(func=_cmd_models)

    t = subparsers.add_parser("tokens", help="count a text or a chat request the way it is billed")
    t.add_argument("file", nargs="?", help="file to count; '-' or nothing reads stdin")
    t.add_argument("--model", required=True, help="model id (picks the tokenizer and the price)")
    t.add_argument(
        "--chat",
        action="store_true",
        help="the input is a JSON chat request (messages, optional tools) or a messages list",
    )
    t.add_argument("--config", help="metered YAML config (for the price)")
    t.add_argument("--route", help="route name in the config")
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_cmd_tokens)
