"""``metered check CONFIG``: every problem of a configuration, in one run.

Each finding is one line that starts with its level: ``error`` (calls would fail or the
config cannot run) or ``warning``. Besides a config that does not load (one error line):

* a route's ``upstream`` that is not a known upstream or an http(s) URL (an error; the
  rest of the config is still checked);
* a model that no rule prices (an error when the route rejects it), that only the
  fallback prices, or that has no catalog cost;
* a model id whose ``provider/`` prefix names no provider metered knows;
* a route price below the model's cost for a typical call (1,000 input + 500 output
  tokens);
* a deprecated model;
* a model whose price layers disagree (metered's corrections, genai-prices, LiteLLM when
  configured): see ``metered catalog diff``;
* settlements waiting in the outbox for the budget store.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from metered.cli.catalog import pricer_for, show_price
from metered.cli.format import dump, table
from metered.config import KNOWN_UPSTREAMS, Config, load_config, load_yaml
from metered.engine.outbox import Outbox, outbox_path
from metered.errors import ConfigError, MeteredError
from metered.money import format_usd
from metered.pricing.compare import PriceDiff, disagreements
from metered.pricing.resolve import PROVIDER_PREFIXES
from metered.pricing.route import Pricer, RoutePricer
from metered.usage import Usage

__all__ = ["TYPICAL_CALL", "add_check_parser", "check_findings", "load_checked"]

#: The call a route's price is compared with the model's cost for.
TYPICAL_CALL = Usage(input_tokens=1000, output_tokens=500, source="estimated")


def _finding(level: str, route: str, model: str, origin: str, problem: str) -> dict[str, str]:
    return {"level": level, "route": route, "model": model, "from": origin, "problem": problem}


def _upstream_ok(value: str) -> bool:
    scheme = value.split("://", 1)[0].lower() if "://" in value else ""
    return value in KNOWN_UPSTREAMS or scheme in ("http", "https")


def load_checked(path: str | Path) -> tuple[Config, list[dict[str, str]]]:
    """Load a config for checking: a route whose ``upstream`` does not exist is an error
    finding (the route is then checked without it), not the end of the check.

    Raises:
        ConfigError: any other problem that stops the config from loading.
    """
    try:
        return load_yaml(path), []
    except ConfigError as first:
        error = first
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        raise error from None
    routes = data.get("routes") if isinstance(data, dict) else None
    findings: list[dict[str, str]] = []
    if isinstance(routes, dict):
        for name, route in routes.items():
            upstream = route.get("upstream") if isinstance(route, dict) else None
            if isinstance(upstream, str) and not _upstream_ok(upstream):
                known = ", ".join(KNOWN_UPSTREAMS)
                problem = f"upstream {upstream!r} does not exist: one of {known} or an http(s) URL"
                findings.append(_finding("error", str(name), "", "upstream", problem))
                route["upstream"] = None
    if not findings:
        raise error
    try:
        return load_config(data), findings
    except ConfigError as other:
        for f in findings:
            print(f"error: routes.{f['route']}.upstream: {f['problem']}", file=sys.stderr)
        raise other from None


def _below_cost(route: RoutePricer, model: str) -> str | None:
    try:
        quote = route.quote(model, TYPICAL_CALL)
    except Exception:
        return None
    if quote.cost is None or quote.price is None or quote.price >= quote.cost:
        return None
    return (
        f"route {route.name or '(default)'} prices {model} at {format_usd(quote.price)}, "
        f"below its cost {format_usd(quote.cost)} (1000 input + 500 output tokens)"
    )


def _disagreement(diffs: list[PriceDiff], source: str) -> str:
    parts = []
    for d in diffs:
        values = ", ".join(
            f"{name} {show_price(v, name in d.as_input)}"
            for name, v in d.values.items()
            if v is not None
        )
        parts.append(f"{d.label}: {values}")
    return f"price layers disagree ({'; '.join(parts)}); priced by {source}"


def _unknown_provider(model: str) -> str | None:
    prefix, slash, rest = model.partition("/")
    if not slash or not rest or prefix.lower() in PROVIDER_PREFIXES:
        return None
    return f"names provider {prefix!r}, which metered does not know"


def _model_findings(
    pricer: Pricer, route_name: str, route: RoutePricer, model: str, seen: set[tuple[str, str]]
) -> list[dict[str, str]]:
    """Problems of one (route, model); model-wide ones once (``seen``)."""
    out: list[tuple[str, str]] = []
    try:
        known, entry = route.is_known(model), route.entry(model)
    except MeteredError as exc:
        return [_finding("error", route_name, model, "", f"is not a valid model id: {exc}")]
    if not known:
        policy = route.config.unknown_policy
        if policy == "fallback":
            out.append(("warning", "priced by the fallback"))
        elif policy == "unpriced":
            out.append(("warning", "has no price: its calls would go unpriced"))
        else:
            out.append(("error", "has no price: every call would be rejected"))
    elif entry is None:
        out.append(("warning", "no catalog cost: margin unknown"))
    else:
        problem = _below_cost(route, model)
        if problem is not None:
            out.append(("warning", problem))
    once: list[str] = []
    if entry is None:
        once.append(_unknown_provider(model) or "")
    else:
        if entry.deprecated:
            once.append(f"is deprecated ({entry.source} {entry.provider}/{entry.model_id})")
        if entry.source != "override":
            chain = route.resolve(model).cost_chain
            region = route.resolve(model).region
            diffs = disagreements(pricer.catalog.layers[1:], chain, entry.provider, region)
            if diffs:
                once.append(_disagreement(diffs, entry.source))
    for problem in once:
        if problem and (model, problem) not in seen:
            seen.add((model, problem))
            out.append(("warning", problem))
    return [_finding(level, route_name, model, "", problem) for level, problem in out]


def check_findings(config: Config, pricer: Pricer | None = None) -> list[dict[str, str]]:
    """Every problem of the models a configuration names, on every route.

    Args:
        config: a loaded configuration.
        pricer: its pricer (default: built with the config's catalog layers).

    Returns:
        One finding per problem: ``level`` (``error``: calls would fail; ``warning``),
        ``route``, ``model``, ``from`` (where the model is named) and ``problem``.
    """
    pricer = pricer or pricer_for(config)
    findings: list[dict[str, str]] = []
    routes = list(pricer.routes.items()) or [("(default)", pricer.route())]
    names: list[tuple[str, str]] = [(a, "alias") for a in config.models.aliases]
    names += [(d, "deployment") for d in config.models.deployments]
    names += [(m, "allow") for m in config.models.allow or [] if "*" not in m]
    seen: set[tuple[str, str]] = set()
    for route_name, route in routes:
        listed = [(m, "route.models") for m in route.config.models if m != "*"]
        for model, origin in listed + names:
            for finding in _model_findings(pricer, route_name, route, model, seen):
                findings.append({**finding, "from": origin})
    return findings


def _cmd_check(args: argparse.Namespace) -> int:
    config, findings = load_checked(args.config)
    findings += check_findings(config)
    path = outbox_path(config)
    backlog = Outbox(path) if path is not None else None
    if backlog is not None and len(backlog):
        problem = f"{len(backlog)} settlement(s) wait for the budget store"
        findings.append(_finding("warning", "", "", str(backlog.path), problem))
    errors = [f for f in findings if f["level"] == "error"]
    if args.json:
        dump({"ok": not errors, "findings": findings})
        return 1 if errors else 0
    if findings:
        columns = ["level", "route", "model", "from", "problem"]
        print(table(columns, [[f[c] or None for c in columns] for f in findings]))
    warnings = len(findings) - len(errors)
    print(
        f"{args.config}: {len(config.routes)} route(s), "
        f"{len(errors)} error(s), {warnings} warning(s)"
    )
    return 1 if errors else 0


def add_check_parser(subparsers: Any) -> None:
    """Add ``check`` to the CLI's subparsers."""
    c = subparsers.add_parser("check", help="validate a config; list every problem it has")
    c.add_argument("config")
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_cmd_check)
