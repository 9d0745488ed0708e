"""The ``litellm`` price layer (metered.pricing.litellm) and building layers from config."""

from __future__ import annotations

import json
import shutil
import zipfile
from decimal import Decimal
from pathlib import Path

import pytest

from metered.config import load_config
from metered.errors import ConfigError
from metered.pricing.catalog import Catalog, TieredRates
from metered.pricing.litellm import LITELLM_DATA_FILE, LiteLLMLayer, litellm_provider
from metered.pricing.rates import CostRates
from metered.pricing.route import Pricer
from metered.usage import Usage

DATA = Path(__file__).parent / "data"
FIXTURE = DATA / "litellm_prices.json"
GENAI_FIXTURE = DATA / "genai_prices_data.json"
WHEELS = sorted(Path("/tmp/ll").glob("litellm-*.whl"))  # `pip download litellm --no-deps`
MTOK = 10**6


@pytest.fixture(scope="module")
def layer() -> LiteLLMLayer:
    return LiteLLMLayer(FIXTURE)


def test_prices_are_read_exactly(layer: LiteLLMLayer) -> None:
    """2.5e-06 becomes Decimal('0.0000025'): no float arithmetic."""
    entry = layer.find("gpt-4o", "openai", None)
    assert entry is not None
    assert entry.current_rates() == CostRates(
        input=Decimal("0.0000025"), output=Decimal("0.00001"), cache_read=Decimal("0.00000125")
    )
    assert (entry.source, entry.provider, entry.context_window, entry.max_output_tokens) == (
        "litellm",
        "openai",
        128000,
        16384,
    )
    usage = Usage(input_tokens=1000, output_tokens=500)
    assert entry.cost(usage) == Decimal("0.0075")


def test_only_complete_chat_prices_are_kept(layer: LiteLLMLayer) -> None:
    """Embeddings, the sample spec, an input-only entry and commitment keys are left out."""
    ids = {e.model_id for e in layer.entries()}
    assert "text-embedding-3-small" not in ids
    assert "sample_spec" not in ids
    assert "example/input-only-model" not in ids
    assert not any("commitment" in i for i in ids)
    assert layer.find("example/input-only-model", None, None) is None


def test_long_context_prices_are_a_tier_at_200k(layer: LiteLLMLayer) -> None:
    """`_above_200k_tokens` rates switch every token once the prompt is over 200,000."""
    entry = layer.find("gemini-2.5-pro", "google", None)
    assert entry is not None
    rates = entry.current_rates()
    assert isinstance(rates, TieredRates)
    assert [start for start, _ in rates.tiers] == [200000]
    small = Usage(input_tokens=200000, output_tokens=1000)
    large = Usage(input_tokens=200001, output_tokens=1000)
    assert entry.cost(small) == (Decimal("1.25") * 200000 + Decimal(10) * 1000) / MTOK
    assert entry.cost(large) == (Decimal("2.5") * 200001 + Decimal(15) * 1000) / MTOK


def test_cache_writes_of_one_hour_are_priced(layer: LiteLLMLayer) -> None:
    entry = layer.find("claude-sonnet-4-5", "anthropic", None)
    assert entry is not None
    rates = entry.current_rates()
    assert isinstance(rates, CostRates)
    assert rates.cache_write == Decimal("0.00000375")
    assert rates.cache_write_1h == Decimal("0.000006")


def test_lookups_are_provider_true(layer: LiteLLMLayer) -> None:
    """A named provider only gets its own entries; no provider gets the unprefixed key."""
    assert layer.find("gpt-4o", "azure", None) is None
    assert layer.find("gpt-4o", "aws", None) is None
    anyone = layer.find("gpt-4o", None, None)
    assert anyone is not None
    assert anyone.provider == "openai"
    gemini = layer.find("gemini-2.5-pro", None, None)
    assert gemini is not None
    assert gemini.provider == "google"
    deepseek = layer.find("deepseek-chat", "deepseek", None)
    assert deepseek is not None
    assert deepseek.model_id == "deepseek-chat"


def test_regions_only_when_the_key_names_them(layer: LiteLLMLayer) -> None:
    """`azure/eu/...` prices the EU data zone; no region-less Azure price is made up."""
    eu = layer.find("gpt-4o-2024-08-06", "azure", "eu")
    assert eu is not None
    assert eu.region == "eu"
    eu_rates = eu.current_rates()
    assert isinstance(eu_rates, CostRates)
    assert eu_rates.input == Decimal("0.00000275")
    assert layer.find("gpt-4o-2024-08-06", "azure", None) is None
    gov = layer.find("anthropic.claude-3-haiku-20240307-v1:0", "aws", "us-gov-west-1")
    assert gov is not None
    assert gov.region == "us-gov-west-1"
    assert layer.find("anthropic.claude-3-haiku-20240307-v1:0", "aws", "eu-west-3") is None
    # a default region falls back to the region-less price
    us = layer.find("gpt-4o", "openai", "us-east-1")
    assert us is not None
    assert us.region is None


@pytest.mark.parametrize(
    ("name", "provider"),
    [
        ("bedrock", "aws"),
        ("bedrock_converse", "aws"),
        ("vertex_ai-anthropic_models", "google"),
        ("vertex_ai-language-models", "google"),
        ("gemini", "google"),
        ("azure", "azure"),
        ("azure_ai", "azure"),
        ("text-completion-openai", "openai"),
        ("openai", "openai"),
        ("xai", "x-ai"),
        ("together_ai", "together"),
        ("fireworks_ai", "fireworks"),
        ("deepinfra", "deepinfra"),
    ],
)
def test_litellm_providers_map_to_catalog_ids(name: str, provider: str) -> None:
    assert litellm_provider(name) == provider


def test_version_names_the_file(layer: LiteLLMLayer) -> None:
    assert layer.version == "litellm litellm_prices.json"


def test_deprecated_after_the_deprecation_date(tmp_path: Path) -> None:
    path = tmp_path / "prices.json"
    spec = {"litellm_provider": "openai", "mode": "chat", "input_cost_per_token": 1e-06}
    spec["output_cost_per_token"] = 2e-06
    path.write_text(
        json.dumps(
            {
                "old-model": {**spec, "deprecation_date": "2001-01-01"},
                "new-model": {**spec, "deprecation_date": "2999-01-01"},
            }
        ),
        encoding="utf-8",
    )
    layer = LiteLLMLayer(path)
    old, new = layer.find("old-model", None, None), layer.find("new-model", None, None)
    assert old is not None
    assert old.deprecated
    assert new is not None
    assert not new.deprecated


def test_installed_finds_the_cost_map_without_importing_litellm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`installed()` reads the distribution's metadata; litellm itself is never imported."""
    assert LiteLLMLayer.installed() is None  # litellm is not a dependency
    dist = tmp_path / "litellm-9.8.7.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: litellm\nVersion: 9.8.7\n")
    package = tmp_path / "litellm"
    package.mkdir()
    (package / "__init__.py").write_text("raise ImportError('litellm must not be imported')\n")
    shutil.copy(FIXTURE, package / LITELLM_DATA_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    layer = LiteLLMLayer.installed()
    assert layer is not None
    assert layer.version == "litellm 9.8.7"
    assert layer.find("gpt-4o", "openai", None) is not None


def test_catalog_from_config_appends_litellm_after_genai_prices() -> None:
    config = load_config({"catalog": {"litellm": str(FIXTURE)}})
    catalog = Catalog.from_config(config.catalog)
    assert [layer.name for layer in catalog.layers] == [
        "override",
        "corrections",
        "genai-prices",
        "litellm",
    ]
    assert catalog.version.startswith("litellm litellm_prices.json+genai-prices ")
    # genai-prices prices gpt-4o first; the EU data zone only LiteLLM prices
    entry = catalog.lookup("gpt-4o", provider="openai")
    assert entry is not None
    assert entry.source == "genai-prices"
    eu = catalog.lookup("gpt-4o-2024-08-06", provider="azure", region="eu")
    assert eu is not None
    assert eu.source == "litellm"


def test_pricer_quotes_from_the_configured_layers() -> None:
    """Pricer(config, catalog=Catalog.from_config(...)) prices what only LiteLLM lists."""
    config = load_config({"catalog": {"litellm": str(FIXTURE)}})
    pricer = Pricer(config, catalog=Catalog.from_config(config.catalog))
    quote = pricer.quote("azure/eu/gpt-4o-2024-08-06", Usage(input_tokens=1000, output_tokens=500))
    assert quote.cost == (Decimal("2.75") * 1000 + Decimal(11) * 500) / MTOK
    assert quote.provider == "azure"
    batch = Usage(input_tokens=1000, output_tokens=500, batch=True)
    quote = pricer.quote("azure/eu/gpt-4o-2024-08-06", batch)
    assert quote.cost == (Decimal("1.375") * 1000 + Decimal("5.5") * 500) / MTOK


def test_genai_prices_data_file_replaces_the_snapshot() -> None:
    config = load_config({"catalog": {"genai_prices_data": str(GENAI_FIXTURE)}})
    catalog = Catalog.from_config(config.catalog)
    assert catalog.version.startswith("genai-prices data genai_prices_data.json+corrections ")
    entry = catalog.lookup("gpt-4o")
    assert entry is not None
    assert entry.source == "genai-prices"
    assert catalog.lookup("claude-sonnet-4-5") is None  # not in the data file


def test_source_none_keeps_overrides_and_litellm() -> None:
    config = load_config({"catalog": {"source": "none", "litellm": str(FIXTURE)}})
    assert [x.name for x in Catalog.from_config(config.catalog).layers] == ["override", "litellm"]


@pytest.mark.parametrize(
    ("catalog", "message"),
    [
        ({"litellm": "/no/such/prices.json"}, "catalog.litellm: '/no/such/prices.json' is not"),
        ({"genai_prices_data": "/no/such.json"}, "catalog.genai_prices_data: '/no/such.json' is"),
        ({"litellm": "installed"}, "catalog.litellm: 'installed' needs an installed litellm"),
    ],
)
def test_missing_data_files_are_config_errors(catalog: dict[str, str], message: str) -> None:
    config = load_config({"catalog": catalog})
    with pytest.raises(ConfigError) as info:
        Catalog.from_config(config.catalog)
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    ("key", "text", "reason"),
    [
        ("litellm", '{"gpt-4o": ', "(Expecting value: line 1 column 12 (char 11))"),
        ("litellm", "[1, 2]", "a LiteLLM cost map is an object of models)"),
        ("genai_prices_data", "{}", "a genai-prices data file is a list of providers)"),
    ],
)
def test_data_files_that_do_not_load_are_config_errors(
    tmp_path: Path, key: str, text: str, reason: str
) -> None:
    """A broken price file fails when the catalog is built, not on the first call."""
    path = tmp_path / "prices.json"
    path.write_text(text, encoding="utf-8")
    config = load_config({"catalog": {key: str(path)}})
    with pytest.raises(ConfigError) as info:
        Catalog.from_config(config.catalog)
    message = str(info.value)
    assert message.startswith(f"catalog.{key}: '{path}' does not load as a price file (")
    assert message.endswith(reason)


@pytest.mark.skipif(not WHEELS, reason="no downloaded litellm wheel in /tmp/ll")
def test_the_real_cost_map_loads(tmp_path: Path) -> None:
    """The cost map of a downloaded litellm wheel (1.110.2 here), copied out of it."""
    path = tmp_path / "prices.json"
    with zipfile.ZipFile(WHEELS[-1]) as wheel:
        path.write_bytes(wheel.read(f"litellm/{LITELLM_DATA_FILE}"))
    layer = LiteLLMLayer(path)
    assert sum(1 for _ in layer.entries()) > 1000
    entry = layer.find("gpt-4o", "openai", None)
    assert entry is not None
    assert entry.current_rates() == CostRates(
        input=Decimal("0.0000025"), output=Decimal("0.00001"), cache_read=Decimal("0.00000125")
    )


@pytest.mark.parametrize(
    ("usage", "cost"),
    [
        (Usage(input_tokens=1000, output_tokens=500), "0.0075"),
        (Usage(input_tokens=1000, output_tokens=500, batch=True), "0.00375"),
        (Usage(input_tokens=1000, output_tokens=500, service_tier="priority"), "0.01275"),
        (Usage(input_tokens=1000, output_tokens=500, service_tier="scale"), "0.0075"),
    ],
)
def test_batch_and_service_tier_rates(layer: LiteLLMLayer, usage: Usage, cost: str) -> None:
    """`_batches` and `_priority` rates price those calls; an unknown tier is standard."""
    entry = layer.find("gpt-4o", "openai", None)
    assert entry is not None
    assert entry.rates.cost(usage) == Decimal(cost)
    assert entry.current_rates() == CostRates(
        input=Decimal("0.0000025"), output=Decimal("0.00001"), cache_read=Decimal("0.00000125")
    )


def test_batch_rates_keep_their_long_context_tier(layer: LiteLLMLayer) -> None:
    entry = layer.find("gemini-2.5-pro", "google", None)
    assert entry is not None
    usage = Usage(input_tokens=300000, output_tokens=1000, batch=True)
    # batch: $1.25 input and $7.5 output per 1M above 200k (standard: $2.5 and $15)
    assert entry.rates.cost(usage) == (Decimal("1.25") * 300000 + Decimal("7.5") * 1000) / MTOK


def test_file_paths_in_a_yaml_config_are_relative_to_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A config names its data files as its author sees them, beside the file: the
    process may start anywhere (a service manager, a container's workdir)."""
    from metered.config import load_yaml
    from metered.engine.meter import Meter

    conf = tmp_path / "conf"
    (conf / "prices").mkdir(parents=True)
    shutil.copy(FIXTURE, conf / "prices" / "litellm.json")
    (conf / "metered.yaml").write_text(
        "catalog:\n"
        "  litellm: prices/litellm.json\n"
        "records:\n"
        "  sink: jsonl\n"
        "  path: usage.jsonl\n"
        "  outbox: /var/tmp/outbox.jsonl\n",
        encoding="utf-8",
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    config = load_yaml(Path("..") / "conf" / "metered.yaml")
    assert config.catalog.litellm == str(conf / "prices" / "litellm.json")
    assert config.records.path == str(conf / "usage.jsonl")
    assert config.records.outbox == "/var/tmp/outbox.jsonl"  # absolute: as written
    meter = Meter.from_yaml(conf / "metered.yaml")
    quote = meter.quote("azure/eu/gpt-4o-2024-08-06", Usage(input_tokens=1000, output_tokens=0))
    assert quote.cost_source == "litellm"
    # a mapping has no file to be beside: its paths are the caller's, as given
    assert load_config({"catalog": {"litellm": str(FIXTURE)}}).catalog.litellm == str(FIXTURE)


def test_installed_is_not_a_path_in_a_yaml_config(tmp_path: Path) -> None:
    """``litellm: installed`` is a word, not a file beside the config."""
    from metered.config import load_yaml

    path = tmp_path / "metered.yaml"
    path.write_text("catalog:\n  litellm: installed\n", encoding="utf-8")
    config = load_yaml(path)
    assert config.catalog.litellm == "installed"
    with pytest.raises(ConfigError, match=r"catalog\.litellm: 'installed' needs an installed"):
        Catalog.from_config(config.catalog)  # litellm is not installed here
