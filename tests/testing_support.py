"""Constants and helpers shared by the tests of :mod:`metered.testing`."""

from __future__ import annotations

from typing import Any

from metered.testing import DEFAULT_REPLY
from metered.tokens import encoding_for_model

MODEL = "gpt-4o-mini"
REASONER = "o4-mini"
CLAUDE = "claude-haiku-4-5"
MESSAGES: list[Any] = [
    {"role": "system", "content": "You answer briefly."},
    {"role": "user", "content": "What does a meter do?"},
]
CHAT_BODY = {"model": MODEL, "messages": MESSAGES}


def reply_tokens(text: str = DEFAULT_REPLY, model: str = MODEL) -> list[int]:
    return encoding_for_model(model).encode_ordinary(text)


def first_tokens(n: int, text: str = DEFAULT_REPLY, model: str = MODEL) -> str:
    encoding = encoding_for_model(model)
    return encoding.decode(encoding.encode_ordinary(text)[:n])


def sse_events(raw: str) -> list[tuple[str | None, str]]:
    """(event name, data) pairs of an SSE body, as an SDK decoder would see them."""
    events = []
    for block in raw.split("\n\n"):
        if not block:
            continue
        name = None
        data = []
        for line in block.split("\n"):
            field, _, value = line.partition(": ")
            if field == "event":
                name = value
            elif field == "data":
                data.append(value)
        events.append((name, "\n".join(data)))
    return events
