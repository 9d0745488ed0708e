"""Tests for metered.tokens: bundled encodings, model mapping, chat/tool/image counting."""

from __future__ import annotations

import base64
import enum
import gzip
import json
import os
import random
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import tiktoken
import tiktoken.load
import tiktoken.model
from tiktoken_ext import openai_public

from metered.errors import InvalidRequest, MeteredError
from metered.tokens import (
    ChatCounter,
    TokenCount,
    count_anthropic,
    count_chat,
    count_request,
    count_text,
    encoding_for_model,
    encoding_name_for_model,
    encodings,
    estimate_usage,
    get_encoding,
    is_exact,
    set_model_encoding,
)
from metered.usage import Usage

BUNDLED = ("o200k_base", "cl100k_base")

# OpenAI cookbook "How to count tokens with tiktoken", section 6: the API reported 129
# prompt tokens on gpt-3.5-turbo / gpt-4 and 124 on gpt-4o / gpt-4o-mini.
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities "
        "for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

# Cookbook section 7: the API reported 105 prompt tokens on gpt-3.5-turbo / gpt-4 and 101
# on gpt-4o / gpt-4o-mini for these messages and tools.
COOKBOOK_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
COOKBOOK_TOOL_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


# --------------------------------------------------------------------------------------
# reference encodings, built by tiktoken's own definitions from the same files
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """tiktoken_ext.openai_public's constructor output for each bundled encoding.

    The constructors fetch rank files by URL through ``load_tiktoken_bpe``; we route that
    call to a local copy of the bundled file, with tiktoken's cache disabled
    (``TIKTOKEN_CACHE_DIR=""``: ``read_file_cached`` would otherwise write a copy into the
    cache even for a local path). tiktoken then checks the published hash itself.
    """
    folder = tmp_path_factory.mktemp("ranks")
    real_load = tiktoken.load.load_tiktoken_bpe

    def local_load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        name = url.rsplit("/", 1)[-1]
        assert url == f"https://openaipublic.blob.core.windows.net/encodings/{name}"
        path = folder / name
        gz = resources.files("metered") / "_data" / f"{name}.gz"
        path.write_bytes(gzip.decompress(gz.read_bytes()))
        return real_load(str(path), expected_hash=expected_hash)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", "")
        mp.setattr(openai_public, "load_tiktoken_bpe", local_load)
        return {name: openai_public.ENCODING_CONSTRUCTORS[name]() for name in BUNDLED}


def _corpus(size: int, seed: int) -> str:
    """Deterministic text mixing the things tokenizers disagree on."""
    rng = random.Random(seed)
    words = [
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "token",
        "budget",
        "ledger",
        "Meter",
        "don't",
        "it's",
    ]
    unicode_bits = [
        "naïve café",
        "Straße",
        "日本語のテキスト",
        "お誕生日おめでとう",
        "中文字符",
        "한국어",
        "Ελληνικά",
        "кириллица",
        "العربية",
        "עברית",
        "हिन्दी",
        "🙂🚀👩‍👩‍👧",
        "e\u0301",
        "\u200bzero\u200dwidth",
        "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
    ]
    code = [
        "def f(x: int) -> int:\n    return x ** 2  # square\n",
        "for (let i = 0; i < n; i++) { sum += a[i]; }",
        '{"key": [1, 2.5, null, true], "nested": {"a": "b"}}',
        "SELECT id, name FROM users WHERE age >= 21;",
        "<div class='x'>&amp;</div>",
        "https://example.com/path?q=1&r=two#frag",
        "<|endoftext|>",
        "<|fim_prefix|>",
    ]
    spaces = [" ", "  ", "    ", "\t", "\n", "\r\n", "\n\n\n", " \n ", "\u00a0", "\u3000"]
    parts: list[str] = []
    total = 0
    while total < size:
        kind = rng.random()
        if kind < 0.45:
            piece = rng.choice(words)
            piece = piece.upper() if rng.random() < 0.05 else piece
        elif kind < 0.6:
            piece = rng.choice(unicode_bits)
        elif kind < 0.72:
            piece = rng.choice(code)
        elif kind < 0.84:
            piece = str(rng.randrange(10 ** rng.randrange(1, 12)))
        else:
            piece = rng.choice(spaces) * rng.randrange(1, 4)
        parts.append(piece)
        parts.append(" " if rng.random() < 0.8 else "")
        total += len(piece) + 1
    return "".join(parts)


@pytest.fixture(scope="module")
def corpus() -> str:
    text = _corpus(1_100_000, seed=3)
    assert len(text.encode()) >= 1_000_000
    return text


@pytest.mark.parametrize("name", BUNDLED)
def test_bundled_definition_equals_tiktoken(name: str, reference: dict[str, Any]) -> None:
    """Our pattern, special tokens and ranks are exactly tiktoken's for that encoding."""
    ref = reference[name]
    ours = encodings._BUNDLED[name]
    assert ours.pat_str == ref["pat_str"]
    assert dict(ours.special_tokens) == ref["special_tokens"]
    assert encodings._read_ranks(ours) == ref["mergeable_ranks"]


@pytest.mark.parametrize("name", BUNDLED)
def test_tokens_equal_tiktoken_on_megabyte_corpus(
    name: str, reference: dict[str, Any], corpus: str
) -> None:
    """Token ids equal tiktoken's encode(text, disallowed_special=()) on >= 1 MB of text."""
    ref = tiktoken.Encoding(**reference[name])
    assert get_encoding(name).encode_ordinary(corpus) == ref.encode(corpus, disallowed_special=())


@pytest.mark.parametrize(("name", "model"), [("o200k_base", "gpt-4o"), ("cl100k_base", "gpt-4")])
def test_count_text_equals_tiktoken_per_chunk(
    name: str, model: str, reference: dict[str, Any], corpus: str
) -> None:
    """count_text (through its cache) equals tiktoken's count for every chunk of the corpus."""
    ref = tiktoken.Encoding(**reference[name])
    rng = random.Random(7)
    at = 0
    while at < len(corpus):
        end = at + rng.randrange(1, 4000)
        chunk = corpus[at:end]
        assert count_text(chunk, model=model) == len(ref.encode(chunk, disallowed_special=()))
        at = end


@pytest.mark.parametrize("name", BUNDLED)
def test_decode_round_trips_corpus(name: str, corpus: str) -> None:
    """Decoding our tokens gives back the text (the rank table is self-consistent)."""
    enc = get_encoding(name)
    assert enc.decode(enc.encode_ordinary(corpus)) == corpus


def test_special_token_text_counts_as_ordinary_text() -> None:
    """'<|endoftext|>' in user text is counted as text, never rejected or made special."""
    assert count_text("<|endoftext|>", model="gpt-4o") > 1


def test_corrupt_bundled_file_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A rank file whose sha256 does not match the published hash is not loaded."""
    spec = replace(encodings._BUNDLED["cl100k_base"], sha256="0" * 64)
    monkeypatch.setattr(encodings, "_BUNDLED", {"cl100k_base": spec})
    monkeypatch.setattr(encodings, "_loaded", {})
    with pytest.raises(MeteredError, match="corrupt"):
        get_encoding("cl100k_base")


def test_concurrent_first_use_loads_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Threads racing on the first count build the encoding once and share it."""
    monkeypatch.setattr(encodings, "_loaded", {})
    built: list[str] = []
    real_build = encodings._build

    def counting_build(name: str) -> tiktoken.Encoding:
        built.append(name)
        return real_build(name)

    monkeypatch.setattr(encodings, "_build", counting_build)
    barrier = threading.Barrier(8)
    seen: list[tiktoken.Encoding] = []

    def worker() -> None:
        barrier.wait()
        seen.append(get_encoding("cl100k_base"))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert built == ["cl100k_base"]
    assert len(seen) == 8
    assert all(enc is seen[0] for enc in seen)


def test_not_registered_in_tiktoken() -> None:
    """Loading our encodings leaves tiktoken's global registry untouched."""
    import tiktoken.registry

    get_encoding("o200k_base")
    assert "o200k_base" not in tiktoken.registry.ENCODINGS


_OFFLINE_SCRIPT = """
import json, os, socket, sys

def refuse(*args, **kwargs):
    raise AssertionError("network access attempted")

socket.socket = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
before = dict(os.environ)

import metered
import metered.tokens as tokens
from metered.tokens import encodings
assert "tiktoken" not in sys.modules, "importing metered imported tiktoken"
assert encodings._loaded == {}, "importing metered loaded an encoding"

counts = [
    tokens.count_text("hello world", model="gpt-4o"),
    tokens.count_text("hello world", model="gpt-4"),
    tokens.count_chat([{"role": "user", "content": "hi"}], model="claude-sonnet-4-5"),
]
import tiktoken.registry
print(json.dumps({
    "counts": counts,
    "env_unchanged": dict(os.environ) == before,
    "cache": sorted(os.listdir(os.environ["TIKTOKEN_CACHE_DIR"])),
    "registry": sorted(tiktoken.registry.ENCODINGS),
}))
"""


def test_import_and_count_stay_offline(tmp_path: Path) -> None:
    """Importing metered and counting uses no network, env var or tiktoken cache."""
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(cache), "DATA_GYM_CACHE_DIR": str(cache)}
    done = subprocess.run(
        [sys.executable, "-c", _OFFLINE_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {"counts": [2, 2, 8], "env_unchanged": True, "cache": [], "registry": []}
    assert list(cache.iterdir()) == []


# --------------------------------------------------------------------------------------
# model -> encoding
# --------------------------------------------------------------------------------------


@pytest.fixture
def clean_overrides() -> Iterator[None]:
    yield
    for prefix in list(encodings._overrides):
        set_model_encoding(prefix, None)


@pytest.mark.parametrize(
    ("model", "encoding", "exact"),
    [
        ("gpt-4o", "o200k_base", True),
        ("gpt-4o-2024-08-06", "o200k_base", True),
        ("gpt-4o-mini", "o200k_base", True),
        ("chatgpt-4o-latest", "o200k_base", True),
        ("gpt-4.1-nano", "o200k_base", True),
        ("gpt-4.5-preview", "o200k_base", True),
        ("gpt-5", "o200k_base", True),
        ("gpt-5.1-mini", "o200k_base", True),
        ("o1", "o200k_base", True),
        ("o3-mini", "o200k_base", True),
        ("o4-mini-2025-04-16", "o200k_base", True),
        ("  OpenAI/GPT-4o ", "o200k_base", True),
        ("azure/gpt-4o", "o200k_base", True),
        ("openrouter/openai/gpt-4.1", "o200k_base", True),
        ("ft:gpt-4o-mini-2024-07-18:acme::abc123", "o200k_base", True),
        ("gpt-4", "cl100k_base", True),
        ("gpt-4-0613", "cl100k_base", True),
        ("gpt-4-turbo", "cl100k_base", True),
        ("gpt-3.5-turbo-0125", "cl100k_base", True),
        ("azure/gpt-35-turbo", "cl100k_base", True),
        ("ft:gpt-3.5-turbo-0125:acme::x", "cl100k_base", True),
        ("text-embedding-3-small", "cl100k_base", True),
        ("claude-sonnet-4-5", "o200k_base", False),
        ("anthropic/claude-3-5-haiku-20241022", "o200k_base", False),
        ("gemini-2.0-flash", "o200k_base", False),
        ("llama-3.3-70b-instruct", "o200k_base", False),
        ("mistral-large-latest", "o200k_base", False),
        ("o10-experimental", "o200k_base", False),
        ("my-own-model", "o200k_base", False),
    ],
)
def test_model_encoding(model: str, encoding: str, exact: bool) -> None:
    """Model ids map to their encoding; models without a public tokenizer are estimated."""
    assert encoding_name_for_model(model) == encoding
    assert is_exact(model) is exact


@pytest.mark.parametrize(
    "model",
    [
        "gpt-4o",
        "gpt-4o-mini-2024-07-18",
        "gpt-4.1-mini",
        "gpt-5",
        "o1-preview",
        "o3-mini",
        "gpt-4",
        "gpt-4-32k-0613",
        "gpt-3.5-turbo",
        "gpt-35-turbo",
        "ft:gpt-4o:org::id",
        "text-embedding-ada-002",
    ],
)
def test_model_encoding_agrees_with_tiktoken(model: str) -> None:
    """For OpenAI ids tiktoken knows, we pick the encoding tiktoken picks."""
    assert encoding_name_for_model(model) == tiktoken.model.encoding_name_for_model(model)


def test_encoding_for_model_returns_bundled_encoding() -> None:
    """encoding_for_model gives the shared, bundled tiktoken.Encoding."""
    assert encoding_for_model("gpt-4o") is get_encoding("o200k_base")
    assert encoding_for_model("gpt-4").name == "cl100k_base"


def test_override_by_prefix(clean_overrides: None) -> None:
    """set_model_encoding maps a prefix to an encoding and can declare it exact."""
    set_model_encoding("claude-", "cl100k_base", exact=True)
    assert encoding_name_for_model("claude-sonnet-4-5") == "cl100k_base"
    assert is_exact("anthropic/claude-opus-4") is True


def test_override_longest_prefix_wins(clean_overrides: None) -> None:
    """Among overrides, the longest matching prefix decides."""
    set_model_encoding("acme-", "cl100k_base")
    set_model_encoding("acme-big", "o200k_base", exact=True)
    assert encoding_name_for_model("acme-small") == "cl100k_base"
    assert encoding_name_for_model("acme-big-2") == "o200k_base"


def test_override_removed(clean_overrides: None) -> None:
    """encoding=None removes an override and restores the built-in mapping."""
    set_model_encoding("gpt-4o", "cl100k_base")
    set_model_encoding("gpt-4o", None)
    assert (encoding_name_for_model("gpt-4o"), is_exact("gpt-4o")) == ("o200k_base", True)


# --------------------------------------------------------------------------------------
# chat counting
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-4-0613", 129),
        ("gpt-4", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
    ],
)
def test_cookbook_messages_match_api(model: str, expected: int) -> None:
    """The cookbook's example messages count what the OpenAI API reported."""
    assert count_chat(COOKBOOK_MESSAGES, model=model) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_cookbook_tools_match_api(model: str, expected: int) -> None:
    """The cookbook's tool example counts what the OpenAI API reported."""
    assert count_chat(COOKBOOK_TOOL_MESSAGES, model=model, tools=COOKBOOK_TOOLS) == expected


def test_override_applies_to_models_counted_before(clean_overrides: None) -> None:
    """A model counted before set_model_encoding is counted with the new encoding after it."""
    assert encoding_name_for_model("acme-late") == "o200k_base"
    set_model_encoding("acme-", "cl100k_base")
    assert ChatCounter("acme-late").encoding == "cl100k_base"


def test_str_enum_role_counts_as_its_text() -> None:
    """A StrEnum role (e.g. from an SDK type) counts exactly like the plain string."""

    class Role(enum.StrEnum):
        USER = "user"

    plain = count_request([{"role": "user", "content": "hi"}], model="gpt-4o")
    assert count_request([{"role": Role.USER, "content": "hi"}], model="gpt-4o") == plain


def test_cookbook_body_is_exact() -> None:
    """A request of the cookbook's shape is reported as an exact count."""
    body = {"model": "gpt-4o", "messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}
    assert count_request(body, model="gpt-4o") == TokenCount(101, "o200k_base", True)


def test_legacy_functions_count_like_tools() -> None:
    """Legacy `functions` definitions count the same as the equivalent `tools`."""
    body = {
        "messages": COOKBOOK_TOOL_MESSAGES,
        "functions": [t["function"] for t in COOKBOOK_TOOLS],
    }
    assert count_request(body, model="gpt-4").tokens == 105


def test_nested_tool_schema_is_counted_and_estimated() -> None:
    """Nested parameter schemas add tokens and make the count inexact."""
    nested = json.loads(json.dumps(COOKBOOK_TOOLS))
    props = nested[0]["function"]["parameters"]["properties"]
    props["address"] = {
        "type": "object",
        "description": "Postal address",
        "properties": {"street": {"type": "string", "description": "Street and number"}},
    }
    flat = count_request(
        {"messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}, model="gpt-4o"
    )
    deep = count_request({"messages": COOKBOOK_TOOL_MESSAGES, "tools": nested}, model="gpt-4o")
    assert deep.tokens > flat.tokens + count_text("street:string:Street and number", model="gpt-4o")
    assert deep.exact is False


def test_empty_tools_add_nothing() -> None:
    """An empty tools list costs nothing (no func_end)."""
    assert count_chat(COOKBOOK_MESSAGES, model="gpt-4o", tools=[]) == 124


def test_text_parts_count_like_string_content() -> None:
    """Content given as text parts counts the same as the joined string when split on words."""
    as_string = [{"role": "user", "content": "Hello there, general"}]
    as_parts = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Hello there,"},
                {"type": "text", "text": " general"},
            ],
        }
    ]
    assert count_chat(as_parts, model="gpt-4o") == count_chat(as_string, model="gpt-4o")


def test_tool_call_history_is_counted_and_estimated() -> None:
    """Assistant tool calls and tool results count their text, marked as an estimate."""
    arguments = '{"location": "Paris, France", "unit": "celsius"}'
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "22 degrees"},
    ]
    counted = count_request(messages, model="gpt-4o")
    floor = count_text(arguments, model="gpt-4o") + count_text("22 degrees", model="gpt-4o")
    assert counted.tokens > floor
    assert counted.exact is False


def test_unknown_model_is_estimated() -> None:
    """A model without a public tokenizer is counted with o200k and marked estimated."""
    counted = count_request(COOKBOOK_MESSAGES, model="gemini-2.0-flash")
    assert counted == TokenCount(124, "o200k_base", False)


def test_non_mapping_message_is_invalid() -> None:
    """A message that is not an object is an InvalidRequest naming `messages`."""
    with pytest.raises(InvalidRequest) as info:
        count_chat(["hello"], model="gpt-4o")  # type: ignore[list-item]
    assert info.value.param == "messages"


def test_plain_text_as_chat_adds_framing() -> None:
    """count_request on text: raw when chat=False, one user message when chat=True."""
    raw = count_request("hello world", model="gpt-4o", chat=False)
    chat = count_request("hello world", model="gpt-4o", chat=True)
    assert raw == TokenCount(2, "o200k_base", True)
    assert chat.tokens == raw.tokens + 3 + 1 + 3  # per message + "user" + reply priming


def test_responses_body_counts_instructions_and_input() -> None:
    """A Responses body counts instructions as a system message and input as a user one."""
    body = {"model": "gpt-4o", "instructions": "Be brief.", "input": "Hi there"}
    expected = count_chat(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
        model="gpt-4o",
    )
    assert count_request(body, model="gpt-4o").tokens == expected


def test_responses_message_items_count_like_chat_messages() -> None:
    """Responses input items of type message with input_text parts count like chat messages."""
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi there"}]}
    ]
    counted = count_request({"input": items}, model="gpt-4o")
    assert counted == count_request([{"role": "user", "content": "Hi there"}], model="gpt-4o")


def test_legacy_prompt_counts_as_text() -> None:
    """A completions body's prompt is counted as plain text."""
    assert count_request({"prompt": "hello world"}, model="gpt-4").tokens == 2


def test_body_without_messages_is_invalid() -> None:
    """A body with nothing to count raises InvalidRequest."""
    with pytest.raises(InvalidRequest):
        count_request({"model": "gpt-4o"}, model="gpt-4o")


def test_counter_counts_each_message_independently() -> None:
    """ChatCounter totals are the sum of per-message counts plus fixed overheads."""
    counter = ChatCounter("gpt-4o")
    per_message = sum(counter.message(m) for m in COOKBOOK_MESSAGES)
    assert per_message + counter.reply_priming == 124


def test_count_cache_stays_within_its_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """The per-text count cache evicts old texts beyond its character budget, counts unchanged."""
    monkeypatch.setattr(encodings, "_CACHE_MAX_CHARS", 50)
    monkeypatch.setattr(encodings, "_CACHE_MAX_ENTRY_CHARS", 20)
    cache = encodings._CountCache(get_encoding("o200k_base"))
    texts = [f"message number {i}" for i in range(20)] + ["x" * 30]
    counts = [cache.count(t) for t in texts]
    assert counts == [len(get_encoding("o200k_base").encode_ordinary(t)) for t in texts]
    cached = [*cache._young, *cache._old]
    assert sum(map(len, cached)) <= 50
    assert sum(map(len, cache._young)) == cache._chars
    assert "x" * 30 not in cached


def test_count_cache_keeps_texts_in_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """A text counted again on every turn stays cached while newer texts push others out."""
    monkeypatch.setattr(encodings, "_CACHE_MAX_CHARS", 100)
    monkeypatch.setattr(encodings, "_CACHE_MAX_ENTRY_CHARS", 20)
    cache = encodings._CountCache(get_encoding("o200k_base"))
    for i in range(40):
        cache.count("the system prompt")
        cache.count(f"turn {i:04d}")
    assert "the system prompt" in {**cache._young, **cache._old}
    assert "turn 0000" not in {**cache._young, **cache._old}


# --------------------------------------------------------------------------------------
# images
# --------------------------------------------------------------------------------------


def _png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + b"\0\0\0\0"


def _jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\0\x01\x01\0\0\x01\0\x01\0\0"
    sof0 = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + sof0 + b"\xff\xd9"


def _gif(width: int, height: int) -> bytes:
    return b"GIF89a" + struct.pack("<HH", width, height) + b"\0\0\0"


def _webp(width: int, height: int) -> bytes:
    vp8x = b"VP8X" + struct.pack("<I", 10) + b"\0\0\0\0"
    vp8x += (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    return b"RIFF" + struct.pack("<I", 4 + len(vp8x)) + b"WEBP" + vp8x


def _data_url(image: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(image).decode()


def _image_tokens(url: str, *, model: str = "gpt-4o", detail: str | None = "high") -> TokenCount:
    image: dict[str, Any] = {"url": url}
    if detail is not None:
        image["detail"] = detail
    with_image = [{"role": "user", "content": [{"type": "image_url", "image_url": image}]}]
    base = count_chat([{"role": "user", "content": []}], model=model)
    counted = count_request(with_image, model=model)
    return TokenCount(counted.tokens - base, counted.encoding, counted.exact)


@pytest.mark.parametrize(
    ("width", "height", "expected"),
    [(1024, 1024, 765), (2048, 4096, 1105), (512, 512, 255), (4096, 8192, 1105), (100, 100, 255)],
)
def test_image_tile_formula(width: int, height: int, expected: int) -> None:
    """High-detail images cost 85 + 170 per 512 px tile after OpenAI's scaling (docs' examples)."""
    assert _image_tokens(_data_url(_png(width, height))) == TokenCount(expected, "o200k_base", True)


@pytest.mark.parametrize(
    ("image", "mime"),
    [
        (_jpeg(1024, 1024), "image/jpeg"),
        (_gif(1024, 1024), "image/gif"),
        (_webp(1024, 1024), "image/webp"),
    ],
)
def test_image_size_read_from_each_format(image: bytes, mime: str) -> None:
    """JPEG, GIF and WebP data URLs are measured like PNG."""
    assert _image_tokens(_data_url(image, mime)).tokens == 765


def test_low_detail_image_is_flat() -> None:
    """detail=low costs 85 tokens whatever the size, and is exact."""
    assert _image_tokens("https://example.com/x.png", detail="low") == TokenCount(
        85, "o200k_base", True
    )


def test_unsized_image_assumes_the_largest() -> None:
    """An image whose size is unknown is estimated at the 8-tile maximum."""
    counted = _image_tokens("https://example.com/x.png")
    assert counted == TokenCount(85 + 8 * 170, "o200k_base", False)


def test_auto_detail_is_estimated_as_high() -> None:
    """detail=auto (or absent) is counted as high detail, marked estimated."""
    counted = _image_tokens(_data_url(_png(1024, 1024)), detail=None)
    assert counted == TokenCount(765, "o200k_base", False)


def test_gpt_4o_mini_image_rates() -> None:
    """gpt-4o-mini bills images at its own base and tile rates."""
    counted = _image_tokens(_data_url(_png(1024, 1024)), model="gpt-4o-mini")
    assert counted.tokens == 2833 + 4 * 5667


# --------------------------------------------------------------------------------------
# Anthropic shape
# --------------------------------------------------------------------------------------


def test_anthropic_count_is_estimated_and_counts_system() -> None:
    """Anthropic bodies are estimated; the separate system prompt adds to the count."""
    messages = [{"role": "user", "content": "Hello, Claude"}]
    without = count_anthropic(messages, model="claude-sonnet-4-5")
    with_system = count_anthropic(messages, model="claude-sonnet-4-5", system="Be terse.")
    assert with_system == without + 3 + count_text("Be terse.", model="claude-sonnet-4-5")
    body = {"model": "claude-sonnet-4-5", "system": "Be terse.", "messages": messages}
    assert count_request(body, model="claude-sonnet-4-5") == TokenCount(
        with_system, "o200k_base", False
    )


def test_anthropic_tools_add_the_tool_system_prompt() -> None:
    """Anthropic tools cost their text plus the 346-token tool-use system prompt."""
    messages = [{"role": "user", "content": "Weather?"}]
    tool = {"name": "weather", "description": "Get weather", "input_schema": {"type": "object"}}
    without = count_anthropic(messages, model="claude-sonnet-4-5")
    with_tool = count_anthropic(messages, model="claude-sonnet-4-5", tools=[tool])
    assert with_tool - without > 346


def test_anthropic_image_by_area() -> None:
    """Anthropic images cost about width*height/750 tokens."""
    png = base64.b64encode(_png(1000, 1000)).decode()
    block = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": png}}
    with_image = count_anthropic([{"role": "user", "content": [block]}], model="claude-sonnet-4-5")
    empty = count_anthropic([{"role": "user", "content": []}], model="claude-sonnet-4-5")
    assert with_image - empty == 1334


def test_anthropic_tool_blocks_detected_in_body() -> None:
    """A body with tool_use/tool_result blocks is counted as Anthropic even without system."""
    body = {
        "messages": [
            {"role": "user", "content": "Weather?"},
            {
                "role": "assistant",
                "content": [
                    {"type": "tool_use", "id": "t1", "name": "weather", "input": {"c": "Paris"}}
                ],
            },
            {
                "role": "user",
                "content": [{"type": "tool_result", "tool_use_id": "t1", "content": "sunny"}],
            },
        ]
    }
    assert count_request(body, model="claude-sonnet-4-5").tokens == count_anthropic(
        body["messages"], model="claude-sonnet-4-5"
    )


# --------------------------------------------------------------------------------------
# pre-call estimate
# --------------------------------------------------------------------------------------


def test_estimate_usage_adds_requested_output_limit() -> None:
    """The estimate is the counted prompt plus the request's output limit, marked estimated."""
    body = {"model": "gpt-4o", "messages": COOKBOOK_MESSAGES, "max_completion_tokens": 500}
    assert estimate_usage(body) == Usage(input_tokens=124, output_tokens=500, source="estimated")


def test_estimate_usage_falls_back_to_default_output() -> None:
    """Without a limit in the body, the given default output cap is assumed."""
    body = {"model": "gpt-4", "messages": COOKBOOK_MESSAGES}
    usage = estimate_usage(body, default_output_tokens=4096)
    assert (usage.input_tokens, usage.output_tokens) == (129, 4096)


def test_estimate_usage_reads_responses_limit() -> None:
    """A Responses body's max_output_tokens is the output side of the estimate."""
    body = {"model": "gpt-4o", "input": "hi", "max_output_tokens": 64}
    assert estimate_usage(body).output_tokens == 64


def test_estimate_usage_needs_a_model() -> None:
    """A body without a model cannot be estimated."""
    with pytest.raises(InvalidRequest) as info:
        estimate_usage({"messages": COOKBOOK_MESSAGES})
    assert info.value.param == "model"


def test_estimate_usage_rejects_bad_limit() -> None:
    """A non-integer max_tokens is an InvalidRequest naming the parameter."""
    with pytest.raises(InvalidRequest) as info:
        estimate_usage({"model": "gpt-4o", "messages": COOKBOOK_MESSAGES, "max_tokens": "10"})
    assert info.value.param == "max_tokens"
