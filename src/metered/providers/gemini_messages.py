"""Gemini ``generateContent`` messages in the GenAI conventions' shape (content capture).

The Gemini counterpart of :mod:`metered.providers.messages` (kept apart only to keep each
module short): ``systemInstruction`` becomes the system instructions, ``contents`` the
input messages (role ``model`` → ``assistant``; a turn of function responses only →
``tool``), each candidate an output message. Parts: ``text`` (``thought: true`` →
``reasoning``), ``inlineData`` → ``blob``, ``fileData`` → ``uri``, ``functionCall`` →
``tool_call``, ``functionResponse`` → ``tool_call_response``. JSON (camelCase) and SDK
objects (snake_case) are read alike.
"""

from __future__ import annotations

import base64
from typing import Any

from metered.providers._common import get
from metered.providers.gemini import field, gemini_finish_reason, parts_of
from metered.providers.messages import Bound, Message, Part, _media, _message, _text, _tool_call

__all__ = ["gemini_input", "gemini_output"]

_SYSTEM = ("systemInstruction", "system_instruction")
_INLINE = ("inlineData", "inline_data")
_FILE = ("fileData", "file_data")
_CALL = ("functionCall", "function_call")
_RESPONSE = ("functionResponse", "function_response")
_MIME = ("mimeType", "mime_type")
_URI = ("fileUri", "file_uri")
_FINISH = ("finishReason", "finish_reason")
_ROLES = {"model": "assistant", "user": "user", "function": "tool", "tool": "tool"}


def _modality(mime: Any) -> str:
    kind = mime.partition("/")[0] if isinstance(mime, str) else ""
    return kind if kind in ("image", "audio", "video") else "document"


def _parts(parts: Any, bound: Bound) -> list[Part]:
    out: list[Part] = []
    for part in parts if isinstance(parts, list) else ():
        kind = "reasoning" if get(part, "thought") is True else "text"
        out += _text(get(part, "text"), bound, kind)
        if (inline := field(part, _INLINE)) is not None:
            mime, data = field(inline, _MIME), get(inline, "data")
            if isinstance(data, bytes):
                data = base64.b64encode(data).decode("ascii")
            if isinstance(data, str):
                out.append(_media(f"data:{mime or ''};base64,{data}", bound, _modality(mime)))
        if (file := field(part, _FILE)) is not None:
            uri, mime = field(file, _URI), field(file, _MIME)
            if isinstance(uri, str) and uri:
                media = _media(uri, bound, _modality(mime))
                media["mime_type"] = mime if isinstance(mime, str) else None
                out.append(media)
        if (call := field(part, _CALL)) is not None:
            out.append(_tool_call(get(call, "id"), get(call, "name"), get(call, "args")))
        if (response := field(part, _RESPONSE)) is not None:
            answer = get(response, "response")
            dump = getattr(answer, "model_dump", None)
            out.append(
                {
                    "type": "tool_call_response",
                    "id": get(response, "id"),
                    "response": dump() if callable(dump) else answer,
                }
            )
    return out


def gemini_input(body: Any, bound: Bound) -> tuple[list[Part], list[Message]]:
    """``systemInstruction`` (system instructions) and ``contents`` of a request."""
    system_instruction = field(body, _SYSTEM)
    if isinstance(system_instruction, str):
        system = _text(system_instruction, bound)
    else:
        system = _parts(get(system_instruction, "parts"), bound)
    contents = get(body, "contents")
    if isinstance(contents, str):
        return system, [_message("user", _text(contents, bound))]
    out: list[Message] = []
    for content in contents if isinstance(contents, list) else ():
        parts = _parts(get(content, "parts"), bound)
        if not parts:
            continue
        role = _ROLES.get(str(get(content, "role") or "user"), "user")
        if all(p["type"] == "tool_call_response" for p in parts):
            role = "tool"
        out.append(_message(role, parts))
    return system, out


def gemini_output(response: Any, bound: Bound) -> list[Message]:
    """One output message per candidate of a ``generateContent`` response."""
    out: list[Message] = []
    candidates = get(response, "candidates")
    for candidate in candidates if isinstance(candidates, list) else ():
        parts = _parts(parts_of(candidate), bound)
        tool = any(p["type"] == "tool_call" for p in parts)
        out.append(
            {
                "role": "assistant",
                "parts": parts,
                "finish_reason": gemini_finish_reason(field(candidate, _FINISH), tool),
                "name": None,
            }
        )
    return out
