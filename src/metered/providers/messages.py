"""Messages in the GenAI semantic conventions' shape, for content capture.

``gen_ai.input.messages``, ``gen_ai.output.messages`` and ``gen_ai.system_instructions``
hold lists of messages (``{"role", "parts", "name"}``; output ones add
``finish_reason``) whose parts are ``text``, ``reasoning``, ``tool_call``,
``tool_call_response``, ``uri`` and ``blob`` objects. This module reads a request body or
a response of each wire format (JSON dict or SDK object, through the same
:func:`~metered.providers._common.get` as the usage readers) into that shape, and
:class:`Transcript` collects a stream's output as it passes.

Nothing here runs unless content capture is on. What is captured is bounded and holds no
credential: text is cut at a character budget (``…[+N chars]`` says how much went),
binary payloads over the budget are left out, and a media URL loses its query string and
user info (a pre-signed URL's signature is a credential).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from metered.providers._common import get

__all__ = [
    "Bound",
    "Transcript",
    "anthropic_input",
    "anthropic_output",
    "chat_input",
    "chat_output",
    "finish_reason",
    "responses_input",
    "responses_output",
]

Message = dict[str, Any]
Part = dict[str, Any]
#: A reader of a request body: (system instructions, input messages).
InputReader = Callable[[Any, "Bound"], tuple[list[Part], list[Message]]]

# the convention's finish reasons, from each format's own
_FINISH = {
    "tool_calls": "tool_call",
    "function_call": "tool_call",
    "tool_use": "tool_call",
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "max_output_tokens": "length",
    "refusal": "content_filter",
    "failed": "error",
    "cancelled": "error",
    "incomplete": "length",
}


def finish_reason(reason: str | None) -> str:
    """The convention's finish reason (``stop``, ``length``, ``content_filter``,
    ``tool_call``, ``error``) for a provider's; a missing one is an ``error``."""
    if reason is None:
        return "error"
    return _FINISH.get(reason, reason)


class Bound:
    """A character budget shared by the strings of one captured attribute."""

    __slots__ = ("left",)

    def __init__(self, limit: int) -> None:
        self.left = limit

    def text(self, value: str) -> str:
        """``value``, cut to what is left of the budget."""
        if len(value) <= self.left:
            self.left -= len(value)
            return value
        kept = max(self.left, 0)
        self.left = 0
        return f"{value[:kept]}…[+{len(value) - kept} chars]"

    def fits(self, size: int) -> bool:
        """Take ``size`` characters if they fit whole."""
        if size > self.left:
            return False
        self.left -= size
        return True


def _plain(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    return dump() if callable(dump) else value


def _arguments(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return _plain(value)


def _media(url: str, bound: Bound, modality: str = "image") -> Part:
    if url.startswith("data:"):
        header, _, payload = url[5:].partition(",")
        part: Part = {"type": "blob", "mime_type": header.split(";")[0] or None}
        part["modality"] = modality
        if ";base64" in header and bound.fits(len(payload)):
            part["content"] = payload
        return part
    pieces = urlsplit(url)
    host = pieces.hostname or ""
    if pieces.port is not None:
        host = f"{host}:{pieces.port}"
    clean = urlunsplit((pieces.scheme, host, pieces.path, "", ""))
    return {"type": "uri", "mime_type": None, "modality": modality, "uri": clean}


def _text(value: Any, bound: Bound, kind: str = "text") -> list[Part]:
    return [{"type": kind, "content": bound.text(value)}] if isinstance(value, str) else []


def _content_parts(content: Any, bound: Bound) -> list[Part]:
    """Parts of an OpenAI content (a string or a list of typed parts, either API)."""
    if isinstance(content, str):
        return _text(content, bound)
    parts: list[Part] = []
    for item in content if isinstance(content, list) else ():
        kind = get(item, "type")
        if kind in ("text", "input_text", "output_text"):
            parts += _text(get(item, "text"), bound)
        elif kind == "refusal":
            parts += _text(get(item, "refusal"), bound)
        elif kind in ("image_url", "input_image"):
            url = get(item, "image_url")
            url = url if isinstance(url, str) else get(url, "url")
            if isinstance(url, str) and url:
                parts.append(_media(url, bound))
        elif kind == "input_audio":
            audio = get(item, "input_audio")
            data = get(audio, "data")
            mime = f"audio/{get(audio, 'format') or 'wav'}"
            if isinstance(data, str):
                parts.append(_media(f"data:{mime};base64,{data}", bound, "audio"))
    return parts


def _tool_call(call_id: Any, name: Any, arguments: Any) -> Part:
    return {
        "type": "tool_call",
        "id": call_id if isinstance(call_id, str) else None,
        "name": name if isinstance(name, str) else "",
        "arguments": _arguments(arguments),
    }


def _response(content: Any, bound: Bound) -> Any:
    if isinstance(content, str):
        return bound.text(content)
    texts = [p["content"] for p in _content_parts(content, bound) if p["type"] == "text"]
    return "".join(texts) if texts else _plain(content)


def _message(role: Any, parts: list[Part], name: Any = None) -> Message:
    return {"role": str(role), "parts": parts, "name": name if isinstance(name, str) else None}


# -- OpenAI Chat Completions -------------------------------------------------------------


def chat_input(body: Any, bound: Bound) -> tuple[list[Part], list[Message]]:
    """The ``messages`` of a chat request (system messages stay in the input, as the
    official OpenAI instrumentation records them)."""
    out: list[Message] = []
    messages = get(body, "messages")
    for message in messages if isinstance(messages, list) else ():
        role = get(message, "role")
        content = get(message, "content")
        parts: list[Part] = []
        if role == "tool":
            parts.append(
                {
                    "type": "tool_call_response",
                    "id": get(message, "tool_call_id"),
                    "response": _response(content, bound),
                }
            )
        else:
            calls = get(message, "tool_calls") if role == "assistant" else None
            for call in calls if isinstance(calls, list) else ():
                function = get(call, "function")
                parts.append(
                    _tool_call(get(call, "id"), get(function, "name"), get(function, "arguments"))
                )
            parts += _content_parts(content, bound)
            parts += _text(get(message, "refusal"), bound)
        if parts:
            out.append(_message(role, parts, get(message, "name")))
    return [], out


def chat_output(response: Any, bound: Bound) -> list[Message]:
    """One output message per choice of a chat completion."""
    out: list[Message] = []
    choices = get(response, "choices")
    for choice in choices if isinstance(choices, list) else ():
        message = get(choice, "message")
        if message is None:
            continue
        parts: list[Part] = []
        calls = get(message, "tool_calls")
        for call in calls if isinstance(calls, list) else ():
            function = get(call, "function")
            parts.append(
                _tool_call(get(call, "id"), get(function, "name"), get(function, "arguments"))
            )
        parts += _content_parts(get(message, "content"), bound)
        parts += _text(get(message, "refusal"), bound)
        out.append(
            {
                "role": get(message, "role") or "assistant",
                "parts": parts,
                "finish_reason": finish_reason(get(choice, "finish_reason")),
                "name": None,
            }
        )
    return out


# -- OpenAI Responses --------------------------------------------------------------------


def responses_input(body: Any, bound: Bound) -> tuple[list[Part], list[Message]]:
    """``instructions`` (system instructions) and ``input`` of a Responses request."""
    system = _text(get(body, "instructions"), bound)
    items = get(body, "input")
    if isinstance(items, str):
        return system, [_message("user", _text(items, bound))]
    out: list[Message] = []
    for item in items if isinstance(items, list) else ():
        kind = get(item, "type")
        if kind == "function_call":
            call = _tool_call(get(item, "call_id"), get(item, "name"), get(item, "arguments"))
            out.append(_message("assistant", [call]))
        elif kind == "function_call_output":
            response = _response(get(item, "output"), bound)
            part = {"type": "tool_call_response", "id": get(item, "call_id"), "response": response}
            out.append(_message("tool", [part]))
        elif kind in (None, "message") and get(item, "role") is not None:
            parts = _content_parts(get(item, "content"), bound)
            if parts:
                out.append(_message(get(item, "role"), parts))
    return system, out


def responses_output(response: Any, bound: Bound) -> list[Message]:
    """The output items of a Responses response, as one assistant message."""
    parts: list[Part] = []
    tool = False
    items = get(response, "output")
    for item in items if isinstance(items, list) else ():
        kind = get(item, "type")
        if kind == "message":
            parts += _content_parts(get(item, "content"), bound)
        elif kind == "reasoning":
            summary = get(item, "summary")
            for piece in summary if isinstance(summary, list) else ():
                parts += _text(get(piece, "text"), bound, "reasoning")
        elif kind == "function_call":
            tool = True
            parts.append(
                _tool_call(get(item, "call_id"), get(item, "name"), get(item, "arguments"))
            )
    status = get(response, "status")
    if status == "incomplete":
        status = get(get(response, "incomplete_details"), "reason") or status
    reason = "tool_call" if tool and status == "completed" else finish_reason(_status(status))
    return [{"role": "assistant", "parts": parts, "finish_reason": reason, "name": None}]


def _status(status: Any) -> str | None:
    if status == "completed":
        return "stop"
    return status if isinstance(status, str) else None


# -- Anthropic Messages ------------------------------------------------------------------


def _blocks(content: Any, bound: Bound) -> list[Part]:
    if isinstance(content, str):
        return _text(content, bound)
    parts: list[Part] = []
    for block in content if isinstance(content, list) else ():
        kind = get(block, "type")
        if kind == "text":
            parts += _text(get(block, "text"), bound)
        elif kind == "thinking":
            parts += _text(get(block, "thinking"), bound, "reasoning")
        elif kind in ("tool_use", "server_tool_use"):
            parts.append(_tool_call(get(block, "id"), get(block, "name"), get(block, "input")))
        elif kind == "tool_result":
            response = _response(get(block, "content"), bound)
            parts.append(
                {
                    "type": "tool_call_response",
                    "id": get(block, "tool_use_id"),
                    "response": response,
                }
            )
        elif kind in ("image", "document"):
            source = get(block, "source")
            modality = "image" if kind == "image" else "document"
            if get(source, "type") == "base64":
                url = f"data:{get(source, 'media_type')};base64,{get(source, 'data')}"
                parts.append(_media(url, bound, modality))
            elif isinstance(url := get(source, "url"), str):
                parts.append(_media(url, bound, modality))
    return parts


def anthropic_input(body: Any, bound: Bound) -> tuple[list[Part], list[Message]]:
    """``system`` (system instructions) and ``messages`` of an Anthropic request."""
    system = _blocks(get(body, "system"), bound)
    out: list[Message] = []
    messages = get(body, "messages")
    for message in messages if isinstance(messages, list) else ():
        parts = _blocks(get(message, "content"), bound)
        if parts:
            out.append(_message(get(message, "role"), parts))
    return system, out


def anthropic_output(message: Any, bound: Bound) -> list[Message]:
    """A whole Anthropic message as one output message."""
    return [
        {
            "role": "assistant",
            "parts": _blocks(get(message, "content"), bound),
            "finish_reason": finish_reason(get(message, "stop_reason")),
            "name": None,
        }
    ]


# -- streams -----------------------------------------------------------------------------


class Transcript:
    """A stream's output, collected part by part while content capture is on.

    The stream readers call :meth:`text` with each text or reasoning delta and
    :meth:`tool` with each piece of a tool call; a Responses stream's final event, which
    carries the whole response, replaces the lot (:attr:`final`). Text beyond ``limit``
    characters is counted, not kept.

    Args:
        limit: the character budget of the captured output.
    """

    __slots__ = ("_choices", "_left", "_lost", "final")

    def __init__(self, limit: int) -> None:
        self._choices: dict[int, list[Part]] = {}
        self._left = limit
        self._lost = 0
        self.final: list[Message] | None = None

    def bound(self) -> Bound:
        """The budget left, for a whole response read at the end of the stream."""
        return Bound(self._left)

    def _parts(self, choice: int) -> list[Part]:
        parts = self._choices.get(choice)
        if parts is None:
            parts = self._choices[choice] = []
        return parts

    def text(self, value: object, *, choice: int = 0, kind: str = "text") -> None:
        """Add a text (or ``reasoning``) delta."""
        if not isinstance(value, str) or not value:
            return
        kept = value[: max(self._left, 0)]
        self._lost += len(value) - len(kept)
        self._left -= len(kept)
        parts = self._parts(choice)
        if parts and parts[-1]["type"] == kind:
            parts[-1]["content"] += kept
        else:
            parts.append({"type": kind, "content": kept})

    def tool(
        self,
        key: object,
        *,
        choice: int = 0,
        call_id: Any = None,
        name: Any = None,
        args: Any = None,
    ) -> None:
        """Add to the tool call ``key`` (its stream index or item id)."""
        parts = self._parts(choice)
        for part in parts:
            if part["type"] == "tool_call" and part["key"] == key:
                break
        else:
            part = {"type": "tool_call", "key": key, "id": None, "name": "", "arguments": ""}
            parts.append(part)
        if isinstance(call_id, str):
            part["id"] = call_id
        if isinstance(name, str):
            part["name"] += name
        if isinstance(args, str):
            part["arguments"] += args

    def messages(self, finish_reasons: list[str]) -> list[Message]:
        """The output messages, one per choice, with the stream's finish reasons."""
        if self.final is not None:
            return self.final
        out: list[Message] = []
        for index, choice in enumerate(sorted(self._choices)):
            parts = []
            for part in self._choices[choice]:
                if part["type"] == "tool_call":
                    args = _arguments(part["arguments"]) if part["arguments"] else None
                    parts.append(_tool_call(part["id"], part["name"], args))
                else:
                    parts.append(part)
            reason = finish_reasons[index] if index < len(finish_reasons) else None
            out.append(
                {
                    "role": "assistant",
                    "parts": parts,
                    "finish_reason": finish_reason(reason),
                    "name": None,
                }
            )
        if self._lost and out and out[-1]["parts"]:
            last = out[-1]["parts"][-1]
            if "content" in last:
                last["content"] += f"…[+{self._lost} chars]"
        return out
