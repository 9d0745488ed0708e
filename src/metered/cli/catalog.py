"""``metered catalog diff | update``: compare the price layers; refresh their data files.

``diff`` lists every price on which the layers disagree (metered's corrections,
genai-prices and, when given, LiteLLM's cost map), per 1M tokens. ``update`` fetches
genai-prices' ``data.json`` and LiteLLM's cost map, checks that each loads as a layer,
writes it atomically and prints the ``catalog:`` settings that use it. Nothing is
fetched at run time: only this command reaches the network.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from metered.cli.format import dump, fail, table
from metered.config import Config, load_config, load_yaml
from metered.pricing.catalog import Catalog, Layer, config_layers
from metered.pricing.compare import PriceDiff, diff_layers
from metered.pricing.genai_prices import GenaiPricesLayer
from metered.pricing.litellm import LiteLLMLayer
from metered.pricing.route import Pricer

__all__ = ["LITELLM_URL", "add_catalog_parser", "pricer_for", "show_price"]

#: Where ``metered catalog update`` fetches LiteLLM's cost map.
LITELLM_URL = (
    "https://raw.githubusercontent.com/BerriAI/litellm/main/model_prices_and_context_window.json"
)
_MAX_BYTES = 64 * 1024 * 1024  # both files are a few MB; refuse anything absurd
_TIMEOUT = 30


def pricer_for(config: Config) -> Pricer:
    """The pricer of ``config`` with the layers its ``catalog`` section asks for."""
    return Pricer(config, catalog=Catalog.from_config(config.catalog))


def show_price(value: Decimal | None, as_input: bool = False) -> str:
    """A per-1M price cell: ``$2.5``, ``$2.5 (input)`` for a rate billed as input, ``-``."""
    if value is None:
        return "-"
    return f"${value:f}" + (" (input)" if as_input else "")


def _diff_dict(d: PriceDiff) -> dict[str, Any]:
    return {
        "provider": d.provider,
        "model": d.model,
        "region": d.region,
        "price": d.price,
        "above_tokens": d.above,
        "per_mtok": d.values,
        "billed_as_input": sorted(d.as_input),
    }


def _diff_layers(args: argparse.Namespace) -> tuple[Layer, ...]:
    config = load_yaml(args.config) if args.config else load_config({})
    layers = config_layers(config.catalog)
    if args.litellm:
        layers = (*(x for x in layers if x.name != LiteLLMLayer.name), LiteLLMLayer(args.litellm))
    return layers


def _cmd_diff(args: argparse.Namespace) -> int:
    layers = _diff_layers(args)
    diffs = list(diff_layers(layers, args.pattern))
    status = 1 if diffs and args.fail_on_diff else 0
    if args.json:
        dump(
            {
                "layers": [layer.version for layer in layers],
                "disagreements": [_diff_dict(d) for d in diffs],
            }
        )
        return status
    names = [layer.name for layer in layers]
    if diffs:
        print(
            table(
                ["provider", "model", "region", "price/1M", *names],
                [
                    [
                        d.provider,
                        d.model,
                        d.region,
                        d.label,
                        *(show_price(d.values[n], n in d.as_input) for n in names),
                    ]
                    for d in diffs
                ],
            )
        )
        print()
    models = len({(d.provider, d.model, d.region) for d in diffs})
    print(
        f"{len(diffs)} disagreement(s) in {models} model(s); layers: "
        + ", ".join(layer.version for layer in layers)
    )
    return status


def _fetch(url: str) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "metered catalog update"})
    with urllib.request.urlopen(request, timeout=_TIMEOUT) as response:
        data: bytes = response.read(_MAX_BYTES + 1)
    if len(data) > _MAX_BYTES:
        raise ValueError(f"{url}: more than {_MAX_BYTES} bytes")
    return data


def _write_checked(data: bytes, out: Path, load: Callable[[Path], Layer]) -> int:
    """Write ``data`` next to ``out``, load it as a layer, then move it into place.

    Returns:
        The number of chat models the layer prices.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        count = sum(1 for _ in load(Path(tmp)).entries())
        if not count:
            raise ValueError("it prices no chat model")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return count


def _cmd_update(args: argparse.Namespace) -> int:
    from genai_prices.update_prices import DEFAULT_UPDATE_URL

    jobs: list[tuple[str, str, Path, Callable[[Path], Layer]]] = []
    if args.only in (None, "genai-prices"):
        url = args.genai_prices_url or DEFAULT_UPDATE_URL
        jobs.append(("genai_prices_data", url, Path(args.genai_prices_out), GenaiPricesLayer))
    if args.only in (None, "litellm"):
        url = args.litellm_url or LITELLM_URL
        jobs.append(("litellm", url, Path(args.litellm_out), LiteLLMLayer))
    settings: list[tuple[str, Path]] = []
    status = 0
    for key, url, out, load in jobs:
        try:
            count = _write_checked(_fetch(url), out, load)
        # URLError is an OSError; bad JSON or a file of another shape a ValueError
        except (OSError, ValueError, TypeError, LookupError) as exc:
            status = fail(f"{url}: {exc}; {out} is unchanged")
            continue
        print(f"{out}: {count} chat models from {url}")
        settings.append((key, out.resolve()))
    if settings:
        print("\nput in your metered config:\ncatalog:")
        for key, path in settings:
            print(f"  {key}: {path}")
    return status


def add_catalog_parser(subparsers: Any) -> None:
    """Add ``catalog diff`` and ``catalog update`` to the CLI's subparsers."""
    catalog = subparsers.add_parser("catalog", help="compare the price layers; refresh data")
    sub = catalog.add_subparsers(dest="catalog_command", required=True)

    d = sub.add_parser("diff", help="list the prices on which the catalog's layers disagree")
    d.add_argument("pattern", nargs="?", help="case-insensitive regex on model or provider")
    d.add_argument("--config", help="metered YAML config (its catalog section's layers)")
    d.add_argument("--litellm", metavar="PATH", help="also compare a LiteLLM cost map file")
    d.add_argument("--fail-on-diff", action="store_true", help="exit 1 if any disagree")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_cmd_diff)

    u = sub.add_parser("update", help="fetch genai-prices' and LiteLLM's price files")
    u.add_argument("--genai-prices-out", default="genai-prices-data.json", metavar="PATH")
    u.add_argument("--litellm-out", default="litellm-prices.json", metavar="PATH")
    u.add_argument("--only", choices=["genai-prices", "litellm"], help="fetch one file only")
    u.add_argument("--genai-prices-url", help="fetch genai-prices' data.json from here")
    u.add_argument("--litellm-url", help="fetch LiteLLM's cost map from here")
    u.set_defaults(func=_cmd_update)
