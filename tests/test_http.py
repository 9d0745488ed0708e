"""Tests for metered.http (identity, request, response, wire): what the ASGI and WSGI
doors share (caller keys, request checks, usage read from responses as they pass through)."""

from __future__ import annotations

import itertools
import json
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from metered.context import CallerContext
from metered.engine.meter import Meter
from metered.errors import ConfigError, InvalidRequest
from metered.http import wire
from metered.http.identity import ApiKeys, caller_of
from metered.http.request import gateway_routes, parse_request
from metered.http.wire import StreamMeter
from metered.testing import FakeUpstream

HI = [{"role": "user", "content": "hi"}]
REPLY = "Metering streams one line at a time keeps memory flat."


def raw_stream(path: str, body: dict[str, Any]) -> bytes:
    """The exact bytes the fake upstream streams for ``body``."""
    upstream = FakeUpstream(reply=REPLY)
    with httpx.Client(transport=upstream.httpx_transport(), base_url="http://up") as client:
        return client.post(path, json={**body, "stream": True}).content


CHAT = raw_stream(
    "/v1/chat/completions",
    {"model": "gpt-4o", "messages": HI, "stream_options": {"include_usage": True}},
)


def without_usage_chunk(data: bytes) -> bytes:
    events = data.split(b"\n\n")
    return b"\n\n".join(e for e in events if b'"choices":[]' not in e)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


def feed(meter: StreamMeter, chunks: list[bytes]) -> bytes:
    return b"".join(meter.feed(chunk) for chunk in chunks) + meter.close()


# -- streams ------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_stream_passes_through_unchanged_however_it_is_chunked(cuts: list[int]) -> None:
    """Without stripping, every byte is forwarded as it came and the usage is read."""
    meter = StreamMeter("chat", model="gpt-4o")
    chunks = split(CHAT, cuts)
    assert [meter.feed(chunk) for chunk in chunks] == chunks
    assert meter.outcome.complete
    assert meter.outcome.usage is not None
    assert meter.outcome.usage.output_tokens == meter.delivered(0).output_tokens


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=10_000), max_size=30))
def test_stripping_removes_exactly_the_usage_chunk_however_it_is_chunked(cuts: list[int]) -> None:
    """The client sees the stream it asked for: every event but the usage-only chunk."""
    meter = StreamMeter("chat", model="gpt-4o", strip_usage=True)
    assert feed(meter, split(CHAT, cuts)) == without_usage_chunk(CHAT)
    assert meter.outcome.usage is not None
    assert meter.outcome.response_id is not None
    assert meter.outcome.finish_reasons == ["stop"]


def test_crlf_line_endings_are_understood() -> None:
    """SSE allows CRLF: usage and completion are still found."""
    meter = StreamMeter("chat", model="gpt-4o")
    meter.feed(CHAT.replace(b"\n", b"\r\n"))
    assert meter.outcome.complete
    assert meter.outcome.usage is not None


def test_a_line_over_the_limit_is_skipped_without_losing_the_rest(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An oversized line is forwarded but not held; the lines after it are read normally."""
    monkeypatch.setattr(wire, "MAX_SSE_LINE", 64)
    meter = StreamMeter("chat", model="gpt-4o", strip_usage=True)
    huge = b"data: " + b"x" * 200 + b"\n\n"
    out = feed(meter, [huge[:100], huge[100:], CHAT])
    assert out == huge + without_usage_chunk(CHAT)
    assert meter.outcome.usage is not None


def test_cut_stream_estimates_the_delivered_text() -> None:
    """A stream that stops half-way is counted from the text that went through."""
    meter = StreamMeter("chat", model="gpt-4o")
    meter.feed(CHAT[: len(CHAT) // 2])
    assert not meter.outcome.complete
    delivered = meter.delivered(prompt_tokens=8)
    assert delivered.source == "estimated"
    assert delivered.input_tokens == 8
    assert 0 < delivered.output_tokens < 12


def test_responses_stream_usage_comes_from_response_completed() -> None:
    """A Responses API stream is complete at response.completed, which carries the usage."""
    meter = StreamMeter("responses", model="gpt-4o")
    meter.feed(raw_stream("/v1/responses", {"model": "gpt-4o", "input": "hi"}))
    assert meter.outcome.complete
    assert meter.outcome.usage is not None
    assert meter.outcome.usage.output_tokens == meter.delivered(0).output_tokens
    assert meter.outcome.finish_reasons == [
        "stop"
    ]  # the one vocabulary: providers.openai_responses


def test_anthropic_stream_usage_combines_message_start_and_delta() -> None:
    """Anthropic's input side (message_start) and output count (message_delta) add up."""
    meter = StreamMeter("anthropic", model="claude-sonnet-4-6")
    data = raw_stream(
        "/v1/messages", {"model": "claude-sonnet-4-6", "max_tokens": 100, "messages": HI}
    )
    meter.feed(data)
    usage = meter.outcome.usage
    assert meter.outcome.complete
    assert usage is not None
    assert usage.input_tokens > 0
    assert usage.output_tokens == meter.delivered(0).output_tokens
    assert meter.outcome.finish_reasons == ["end_turn"]


def test_in_stream_error_is_reported() -> None:
    """An error event in a stream is surfaced (the call then settles as failed)."""
    meter = StreamMeter("chat", model="gpt-4o")
    meter.feed(b'data: {"error": {"message": "overloaded", "type": "server_error"}}\n\n')
    assert meter.outcome.error == "overloaded"


# -- request checks -----------------------------------------------------------------------


def test_parse_request_accepts_a_normal_body() -> None:
    """A well-formed chat body comes back as a dict, untouched."""
    body = {"model": "gpt-4o", "messages": HI, "max_tokens": 100, "n": 1, "stream": False}
    assert parse_request(json.dumps(body).encode()) == body


def test_parse_request_allows_n_up_to_max_choices() -> None:
    """n above 1 is refused unless the door allows more choices."""
    body = json.dumps({"model": "gpt-4o", "messages": HI, "n": 3}).encode()
    with pytest.raises(InvalidRequest):
        parse_request(body)
    assert parse_request(body, max_choices=4)["n"] == 3


def test_gateway_routes_are_the_method_path_routes_of_the_config() -> None:
    """Routes named 'METHOD /path' are gateway routes; other names price client calls."""
    meter = Meter(
        {
            "routes": {
                "POST /v1/chat/completions": {"max_body_bytes": 1000},
                "POST /v1/messages": {},
                "support": {"markup": "10%"},
            }
        }
    )
    routes = gateway_routes(meter)
    assert set(routes) == {("POST", "/v1/chat/completions"), ("POST", "/v1/messages")}
    assert routes[("POST", "/v1/chat/completions")].max_body_bytes == 1000
    assert routes[("POST", "/v1/messages")].api == "anthropic"
    assert routes[("POST", "/v1/messages")].provider == "anthropic"
    with pytest.raises(ConfigError, match="METHOD /path"):
        gateway_routes(meter, ["support"])


# -- callers ------------------------------------------------------------------------------


def scope(*headers: tuple[bytes, bytes]) -> dict[str, Any]:
    return {"type": "http", "headers": list(headers)}


def test_api_keys_map_bearer_and_x_api_key_headers_to_accounts() -> None:
    """Both header styles resolve, in ASGI scopes and WSGI environs alike."""
    keys = ApiKeys({"sk-live-acme": "acme"})
    assert keys(scope((b"authorization", b"Bearer sk-live-acme"))) == "acme"
    assert keys(scope((b"x-api-key", b"sk-live-acme"))) == "acme"
    assert keys({"HTTP_AUTHORIZATION": "Bearer sk-live-acme"}) == "acme"
    assert keys({"HTTP_X_API_KEY": "sk-live-acme"}) == "acme"


def test_api_keys_ignore_other_schemes_and_unknown_keys() -> None:
    """Basic auth and unknown keys are unidentified when no secret is configured."""
    keys = ApiKeys({"sk-live-acme": "acme"})
    assert keys(scope((b"authorization", b"Basic sk-live-acme"))) is None
    assert keys(scope((b"authorization", b"Bearer sk-unknown"))) is None
    assert keys(scope()) is None


def test_api_keys_name_unknown_keys_by_keyed_hash() -> None:
    """With a secret, an unknown key becomes key:<16 hex>, stable and not the key itself."""
    account = ApiKeys(secret="s3cret").account("sk-live-XYZ")
    assert account is not None
    assert account.startswith("key:")
    assert len(account) == len("key:") + 16
    assert "XYZ" not in account
    assert ApiKeys(secret="s3cret").account("sk-live-XYZ") == account
    assert ApiKeys(secret="other").account("sk-live-XYZ") != account


def test_api_keys_keep_no_raw_key() -> None:
    """Neither repr nor the stored digests hold the key text."""
    keys = ApiKeys({"sk-live-very-secret": "acme"})
    assert "very-secret" not in repr(keys)
    assert all(b"very-secret" not in digest for digest in keys._digests)


def test_api_keys_from_env_parses_pairs_and_never_echoes_a_key() -> None:
    """METERED_API_KEYS holds key=account pairs; a malformed pair is named by position."""
    keys = ApiKeys.from_env(environ={"METERED_API_KEYS": "sk-a=acme, sk-b=globex"})
    assert (keys.account("sk-a"), keys.account("sk-b"), keys.account("sk-c")) == (
        "acme",
        "globex",
        None,
    )
    with pytest.raises(ConfigError) as error:
        ApiKeys.from_env(environ={"METERED_API_KEYS": "sk-a=acme sk-secret-no-account"})
    assert "sk-secret" not in str(error.value)
    assert "METERED_API_KEYS[1]" in str(error.value)


def test_caller_of_normalises_resolver_results() -> None:
    """Names and callers pass, empty ones are unidentified, anything else is a bug."""
    caller = CallerContext(account="acme", tier="pro")
    assert caller_of("acme") == "acme"
    assert caller_of(caller) is caller
    assert caller_of("") is None
    assert caller_of(CallerContext()) is None
    assert caller_of(None) is None
    with pytest.raises(TypeError):
        caller_of(42)


def test_unknown_key_named_by_secret_is_tracked_but_not_identified() -> None:
    """With a secret, an unlisted key gets a stable account but still counts as unidentified."""
    from metered.http.identity import is_unidentified

    keys = ApiKeys({"sk-known": "acme"}, secret="s3cret")
    known = keys.account("sk-known")
    unknown = keys.account("sk-random-1")
    assert known == "acme"
    assert not is_unidentified(known)
    assert unknown is not None
    assert unknown.startswith("key:")
    assert unknown == keys.account("sk-random-1")  # stable
    assert is_unidentified(unknown)
    assert is_unidentified(None)
