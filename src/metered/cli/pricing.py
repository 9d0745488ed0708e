"""``metered quote | models | tokens``: prices, the catalog, counts.

Each command prints a plain table, or one JSON document with ``--json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from metered import tokens
from metered.cli.catalog import pricer_for, show_price
from metered.cli.format import dump, table
from metered.config import Config, load_config, load_yaml
from metered.errors import InvalidRequest, MeteredError, PolicyDenied, UnknownModel
from metered.money import format_usd
from metered.pricing.catalog import CatalogEntry, TieredRates
from metered.pricing.compare import per_mtok
from metered.pricing.resolve import PROVIDER_PREFIXES
from metered.pricing.route import Pricer, Quote
from metered.usage import Usage

__all__ = ["add_pricing_parsers"]


def _load(path: str | None) -> Config:
    return load_yaml(path) if path else load_config({})


def _quote_dict(q: Quote) -> dict[str, Any]:
    u = q.usage
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
            "input_tokens": u.input_tokens,
            "cache_read_tokens": u.cache_read_tokens,
            "cache_write_tokens": u.cache_write_tokens,
            "cache_write_1h_tokens": u.cache_write_1h_tokens,
            "output_tokens": u.output_tokens,
            "reasoning_tokens": u.reasoning_tokens,
            "web_search_requests": u.web_search_requests,
            "service_tier": u.service_tier,
            "batch": u.batch,
        },
    }


def _unpriced(model: str, route: str | None, usage: Usage, version: str) -> Quote:
    """The row of a model no rule prices on a route that rejects it."""
    return Quote(
        None, None, None, "unpriced", "token-based", model, None, None, route, usage, version
    )


def _usage_line(u: Usage) -> str:
    extra = [f"{u.cache_write_1h_tokens} of them 1h"] if u.cache_write_1h_tokens else []
    line = (
        f"usage: {u.input_tokens} input ({u.cache_read_tokens} cache read, "
        f"{u.cache_write_tokens} cache write{''.join(', ' + e for e in extra)}), "
        f"{u.output_tokens} output ({u.reasoning_tokens} reasoning)"
    )
    if u.web_search_requests:
        line += f", {u.web_search_requests} web search(es)"
    if u.service_tier is not None:
        line += f", service tier {u.service_tier}"
    if u.batch:
        line += ", batch"
    return line


def _cmd_quote(args: argparse.Namespace) -> int:
    pricer = pricer_for(_load(args.config))
    route = pricer.route(args.route)  # an unknown route is an error, not a row
    usage = Usage(
        input_tokens=args.input,
        output_tokens=args.output,
        cache_read_tokens=args.cache_read,
        cache_write_tokens=args.cache_write,
        cache_write_1h_tokens=args.cache_write_1h,
        reasoning_tokens=args.reasoning,
        web_search_requests=args.web_searches,
        service_tier=args.service_tier,
        batch=args.batch,
        source="estimated",
    )
    quotes: list[Quote] = []
    for model in args.model:
        # a model that cannot be priced is a row saying so: the table is never cut short
        try:
            quotes.append(route.quote(model, usage))
        except UnknownModel:
            quotes.append(_unpriced(model, route.name, usage, pricer.catalog.version))
        except (InvalidRequest, PolicyDenied) as exc:
            quotes.append(_unpriced(model, route.name, usage, pricer.catalog.version))
            print(f"error: model {model!r}: {exc}", file=sys.stderr)
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
    print(f"\n{_usage_line(usage)}; prices: {quotes[0].catalog_version}")
    return status


# catalog provider id -> the id prefix that names it (resolve.PROVIDER_PREFIXES)
_PREFIX = {"aws": "bedrock", "google": "vertex_ai", "x-ai": "xai"}


def _complete(entry: CatalogEntry) -> bool:
    rates = entry.current_rates()
    base = rates.base if isinstance(rates, TieredRates) else rates
    tokens = base.input is not None and base.output is not None
    return tokens or base.request is not None or base.second is not None


def _quotable(pricer: Pricer, entry: CatalogEntry) -> tuple[str, CatalogEntry] | None:
    """The id ``metered quote`` prices as ``entry``'s model (the model id, else with its
    provider and region named: ``azure/eu/gpt-4o``) and the entry it prices it with
    (another layer's may win: metered's corrections); ``None`` if no id reaches it."""
    prefix = _PREFIX.get(entry.provider, entry.provider)
    candidates = [] if entry.region else [entry.model_id]
    if prefix in PROVIDER_PREFIXES:
        where = f"{entry.region}/" if entry.region else ""
        candidates.append(f"{prefix}/{where}{entry.model_id}")
    for model in candidates:
        try:
            resolved = pricer.resolver.resolve(model)
        except MeteredError:
            continue
        for name in resolved.cost_chain:
            found = pricer.catalog.lookup(name, provider=resolved.provider, region=resolved.region)
            if found is not None:
                if (found.provider, found.region) == (entry.provider, entry.region):
                    return model, found
                break
    return None


def _cmd_models(args: argparse.Namespace) -> int:
    pricer = pricer_for(_load(args.config))
    rows: list[dict[str, Any]] = []
    listed: set[str] = set()
    for candidate in pricer.catalog.entries(args.pattern):
        quotable = _quotable(pricer, candidate) if _complete(candidate) else None
        if quotable is None or quotable[0] in listed or not _complete(quotable[1]):
            continue  # only what `metered quote` can price, once
        model, entry = quotable
        listed.add(model)
        rates = entry.current_rates()
        base = rates.base if isinstance(rates, TieredRates) else rates
        rows.append(
            {
                "model": model,
                "provider": entry.provider,
                "source": entry.source,
                **{
                    f"{kind}_per_mtok": None if rate is None else per_mtok(rate)
                    for kind in ("input", "output", "cache_read", "cache_write")
                    for rate in [getattr(base, kind)]
                },
                "tiered": isinstance(rates, TieredRates),
                "deprecated": entry.deprecated,
                "context_window": entry.context_window,
            }
        )
    if args.json:
        dump(rows)
        return 0
    if not rows:
        print(f"no model matches {args.pattern!r}", file=sys.stderr)
        return 1
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
                    r["model"]
                    + (" (tiered)" if r["tiered"] else "")
                    + (" (deprecated)" if r["deprecated"] else ""),
                    r["provider"],
                    show_price(r["input_per_mtok"]),
                    show_price(r["output_per_mtok"]),
                    show_price(r["cache_read_per_mtok"]),
                    show_price(r["cache_write_per_mtok"]),
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
    quote = pricer_for(_load(args.config)).quote(args.model, usage, route=args.route)
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
    """Add ``quote``, ``models`` and ``tokens`` to the CLI's subparsers."""
    q = subparsers.add_parser("quote", help="price a call: cost, price, margin and pricing source")
    q.add_argument("model", nargs="+", help="model id(s) as a caller would send them")
    q.add_argument("--input", type=int, required=True, help="input tokens (total, cached included)")
    q.add_argument("--output", type=int, required=True, help="output tokens (reasoning included)")
    q.add_argument("--cache-read", type=int, default=0)
    q.add_argument("--cache-write", type=int, default=0)
    q.add_argument("--cache-write-1h", type=int, default=0, help="of --cache-write, 1h TTL")
    q.add_argument("--reasoning", type=int, default=0)
    q.add_argument("--web-searches", type=int, default=0, help="server-side web searches")
    q.add_argument("--service-tier", metavar="TIER", help="e.g. flex, priority")
    q.add_argument("--batch", action="store_true", help="the call ran through a batch API")
    q.add_argument("--config", help="metered YAML config")
    q.add_argument("--route", help="route name in the config")
    q.add_argument("--json", action="store_true")
    q.set_defaults(func=_cmd_quote)

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
