"""The fake OpenAI Responses API, driven by the real openai SDK."""

from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from metered.testing import DEFAULT_REPLY, FakeUpstream
from metered.tokens import count_request
from tests.testing_support import MODEL, REASONER, first_tokens, reply_tokens


@pytest.fixture
def upstream() -> FakeUpstream:
    return FakeUpstream()


@pytest.fixture
def client(upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with upstream.openai_client() as client:
        yield client


def test_responses_create_reports_cached_and_reasoning_usage() -> None:
    """usage has input_tokens_details.cached_tokens and output_tokens_details.reasoning."""
    upstream = FakeUpstream(cached_tokens=2, reasoning_tokens=6)
    body = {"model": REASONER, "input": "What does a meter do?", "instructions": "Be brief."}
    with upstream.openai_client() as client:
        response = client.responses.create(
            model=REASONER, input=body["input"], instructions=body["instructions"]
        )

    assert response.output_text == DEFAULT_REPLY
    assert response.status == "completed"
    assert response.usage is not None
    assert response.usage.input_tokens == count_request(body, model=REASONER).tokens
    assert response.usage.input_tokens_details.cached_tokens == 2
    assert response.usage.output_tokens_details.reasoning_tokens == 6
    assert response.usage.output_tokens == len(reply_tokens(model=REASONER)) + 6
    assert [item.type for item in response.output] == ["reasoning", "message"]


def test_responses_stream_event_sequence(client: openai.OpenAI) -> None:
    """A Responses stream goes created → deltas → completed, with usage at the end."""
    stream = client.responses.create(model=MODEL, input="Hello", stream=True)
    events = list(stream)

    kinds = [event.type for event in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = [event.delta for event in events if event.type == "response.output_text.delta"]
    assert "".join(deltas) == DEFAULT_REPLY
    completed = events[-1]
    assert completed.type == "response.completed"
    assert completed.response.usage is not None
    assert completed.response.usage.output_tokens == len(reply_tokens())


def test_responses_stream_helper_returns_final_response(client: openai.OpenAI) -> None:
    """The SDK's responses.stream() helper accepts the events and builds the final response."""
    with client.responses.stream(model=MODEL, input="Hello") as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()

    assert text == DEFAULT_REPLY
    assert final.output_text == DEFAULT_REPLY
    assert final.usage is not None
    assert final.usage.input_tokens == count_request({"input": "Hello"}, model=MODEL).tokens


def test_responses_max_output_tokens_makes_response_incomplete(client: openai.OpenAI) -> None:
    """max_output_tokens truncates: status incomplete, reason max_output_tokens."""
    response = client.responses.create(model=MODEL, input="Hello", max_output_tokens=3)

    assert response.status == "incomplete"
    assert response.incomplete_details is not None
    assert response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == first_tokens(3)


def test_responses_truncated_stream_ends_with_incomplete_event(client: openai.OpenAI) -> None:
    """A truncated Responses stream ends with response.incomplete, as OpenAI's does."""
    events = list(
        client.responses.create(model=MODEL, input="Hello", max_output_tokens=3, stream=True)
    )

    last = events[-1]
    assert last.type == "response.incomplete"
    assert last.response.usage is not None
    assert last.response.usage.output_tokens == 3
