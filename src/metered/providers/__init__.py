"""One reader per provider wire format, used by every door.

The client proxies (SDK objects) and the HTTP doors (JSON bodies, server-sent events)
read responses through the same functions, so usage, finish reasons and the estimate of
a stream cut short cannot differ between doors:

* :mod:`~metered.providers.openai_chat` — OpenAI Chat Completions;
* :mod:`~metered.providers.openai_responses` — OpenAI Responses API;
* :mod:`~metered.providers.anthropic` — Anthropic Messages;
* :mod:`~metered.providers.gemini` — Google Gemini ``generateContent``.

Each format is a :class:`Format`: ``usage(response)``, ``read(response)`` (an
:class:`Outcome`) and ``stream(model=..., strip_usage=...)`` (a :class:`StreamReader`
whose ``feed(event)`` takes an SSE-decoded dict or an SDK event).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from metered.providers import anthropic, gemini, messages, openai_chat, openai_responses
from metered.providers._common import Outcome, StreamReader, WireFormat, settled_usage
from metered.providers.gemini_messages import gemini_input, gemini_output
from metered.providers.messages import Bound, InputReader, Message, Transcript
from metered.usage import Usage

__all__ = [
    "ANTHROPIC",
    "CHAT",
    "FORMATS",
    "GEMINI",
    "RESPONSES",
    "Bound",
    "Format",
    "InputReader",
    "Message",
    "Outcome",
    "StreamReader",
    "Transcript",
    "WireFormat",
    "settled_usage",
]


@dataclass(frozen=True, slots=True)
class Format:
    """The reader of one wire format.

    Attributes:
        name: the format (the engine's ``api``).
        usage: the usage of a whole response (``None`` when it reports none).
        read: usage, model, id and finish reasons of a whole response.
        stream: the stream reader class.
        input_messages: (system instructions, input messages) of a request body, in the
            GenAI conventions' shape (content capture only).
        output_messages: the output messages of a whole response (content capture only).
    """

    name: WireFormat
    usage: Callable[[Any], Usage | None]
    read: Callable[[Any], Outcome]
    stream: type[StreamReader]
    input_messages: InputReader
    output_messages: Callable[[Any, Bound], list[Message]]


CHAT = Format(
    "chat",
    openai_chat.from_openai_chat,
    openai_chat.read,
    openai_chat.ChatStream,
    messages.chat_input,
    messages.chat_output,
)
RESPONSES = Format(
    "responses",
    openai_responses.from_openai_responses,
    openai_responses.read,
    openai_responses.ResponsesStream,
    messages.responses_input,
    messages.responses_output,
)
ANTHROPIC = Format(
    "anthropic",
    anthropic.from_anthropic,
    anthropic.read,
    anthropic.AnthropicStream,
    messages.anthropic_input,
    messages.anthropic_output,
)
GEMINI = Format(
    "gemini",
    gemini.from_gemini,
    gemini.read,
    gemini.GeminiStream,
    gemini_input,
    gemini_output,
)
#: Every format by name.
FORMATS: dict[str, Format] = {f.name: f for f in (CHAT, RESPONSES, ANTHROPIC, GEMINI)}
