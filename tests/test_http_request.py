"""Tests for metered.http.request: gateway routes and the checks a request passes before
the engine sees it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from metered.engine.meter import Meter
from metered.errors import ConfigError, InvalidRequest, UnsupportedMediaType
from metered.http.request import (
    MAX_JSON_DEPTH,
    check_content_type,
    gateway_routes,
    parse_request,
    prepare_stream,
    public_headers,
    upstream_bytes,
)

HI = [{"role": "user", "content": "hi"}]


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


@pytest.mark.parametrize(
    ("raw", "param", "says"),
    [
        (b"{not json", None, "not valid UTF-8 JSON"),
        (b"\xff\xfe", None, "not valid UTF-8 JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b'{"messages": []}', "model", "'model' is required"),
        (b'{"model": ""}', "model", "non-empty string"),
        (b'{"model": 4}', "model", "non-empty string"),
        (b'{"model": "m", "stream_options": true}', "stream_options", "must be an object"),
        (b'{"model": "m", "n": "2"}', "n", "'n' must be an integer"),
    ],
)
def test_parse_request_refuses_bad_bodies_naming_the_param(
    raw: bytes, param: str | None, says: str
) -> None:
    """Each malformed body is an InvalidRequest that says what is wrong and where."""
    with pytest.raises(InvalidRequest, match=says) as refused:
        parse_request(raw)
    assert refused.value.param == param


def test_parse_request_refuses_bodies_nested_too_deep() -> None:
    """A body nested past MAX_JSON_DEPTH is refused before anything recurses into it."""
    deep = (
        b'{"model": "m", "x": ' + b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1) + b"}"
    )
    with pytest.raises(InvalidRequest, match="deeper than"):
        parse_request(deep)


@pytest.mark.parametrize(
    "value", ["application/json", "application/json; charset=utf-8", "application/merge+json"]
)
def test_json_content_types_are_accepted(value: str) -> None:
    """JSON and +json media types pass, parameters aside."""
    check_content_type(value)


@pytest.mark.parametrize("value", [None, "", "text/plain", "multipart/form-data"])
def test_other_content_types_are_refused(value: str | None) -> None:
    """Anything but JSON, or no content-type, is UnsupportedMediaType."""
    with pytest.raises(UnsupportedMediaType):
        check_content_type(value)


def test_public_headers_drop_credentials_and_lower_case_names() -> None:
    """Pricing rules and hooks never see authorization, API keys or cookies."""
    headers = public_headers(
        [
            ("Authorization", "Bearer sk-1"),
            ("X-Api-Key", "sk-2"),
            ("Api-Key", "azure-key"),
            ("X-Goog-Api-Key", "gemini-key"),
            ("Cookie", "s=1"),
            ("X-Tenant", "acme"),
        ]
    )
    assert headers == {"x-tenant": "acme"}


def test_prepare_stream_asks_a_chat_stream_for_usage_once() -> None:
    """A chat stream without include_usage gets it (and must be stripped); others are left."""
    body: dict[str, Any] = {"model": "m", "stream": True, "stream_options": {"x": 1}}
    assert prepare_stream(body, "chat") is True
    assert body["stream_options"] == {"x": 1, "include_usage": True}
    assert prepare_stream(body, "chat") is False
    assert prepare_stream({"model": "m", "stream": True}, "responses") is False
    assert prepare_stream({"model": "m"}, "chat") is False


def test_upstream_bytes_are_the_clients_own_when_nothing_changed() -> None:
    """An unchanged body is forwarded byte for byte; a changed one is re-encoded."""
    raw = b'{"model":  "m", "messages": []}'
    sent = json.loads(raw)
    assert upstream_bytes(raw, sent, dict(sent)) is raw
    changed = {**sent, "messages": [{"role": "user", "content": "trimmed"}]}
    assert json.loads(upstream_bytes(raw, sent, changed)) == changed
    removed = {k: v for k, v in sent.items() if k != "messages"}
    assert json.loads(upstream_bytes(raw, sent, removed)) == removed


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":  "m", "messages": [{"role": "user", "content": "}"}]}',
        b'{"model":"m","messages":[]} \r\n',  # whitespace after the object
        b'{"model":"m" ,\n "messages":[] \n}',
        b"{}",
    ],
)
def test_members_metering_only_adds_are_appended_to_the_clients_bytes(raw: bytes) -> None:
    """A budgeted call's limit (or stream_options) is appended: the client's bytes up to
    their closing brace are forwarded as they came, however long the history."""
    sent = json.loads(raw)
    fitted = {**sent, "max_tokens": 10, "stream_options": {"include_usage": True}}
    out = upstream_bytes(raw, sent, fitted)
    assert json.loads(out) == fitted
    assert out.startswith(raw.rstrip()[:-1])
