"""Counting a whole request: a text, a message list, or a Chat / Anthropic / Responses /
Gemini body.

:func:`count_request` recognises the body's API by its fields and returns a
:class:`TokenCount`: the tokens, the encoding used and whether the count is exact.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from metered.errors import InvalidRequest
from metered.tokens.chat import ChatCounter, Shape
from metered.tokens.encodings import count_text, encoding_name_for_model, is_exact

__all__ = ["TokenCount", "count_request", "gemini_contents", "gemini_system"]


@dataclass(frozen=True, slots=True)
class TokenCount:
    """A count and how far to trust it.

    Attributes:
        tokens: the number of tokens.
        encoding: the encoding used (``o200k_base``, ``cl100k_base``, ...).
        exact: ``False`` when the model's tokenizer is not public or a part of the request
            was estimated (images without a size, tool calls, unknown part types).
    """

    tokens: int
    encoding: str
    exact: bool


_ANTHROPIC_BLOCKS: Final = frozenset({"tool_use", "tool_result", "document", "thinking"})


def _is_anthropic(body: Mapping[str, Any]) -> bool:
    if "system" in body:
        return True
    tools = body.get("tools")
    if isinstance(tools, Sequence) and any(
        isinstance(t, Mapping) and "input_schema" in t for t in tools
    ):
        return True
    messages = body.get("messages")
    if not isinstance(messages, Sequence) or isinstance(messages, str):
        return False  # not messages at all: counting them refuses the body
    for message in messages:
        content = message.get("content") if isinstance(message, Mapping) else None
        if isinstance(content, list):
            for block in content:
                kind = block.get("type") if isinstance(block, Mapping) else None
                # a list "type" from a request body must not raise from a set lookup
                if isinstance(kind, str) and (
                    kind in _ANTHROPIC_BLOCKS or (kind == "image" and "source" in block)
                ):
                    return True
    return False


def gemini_contents(contents: Any) -> Sequence[Mapping[str, Any]]:
    """A Gemini body's ``contents`` as a list of contents.

    Raises:
        InvalidRequest: it is not a list.
    """
    if isinstance(contents, (str, bytes)) or not isinstance(contents, Sequence):
        raise InvalidRequest("contents must be a list of contents", param="contents")
    return contents


def gemini_system(body: Mapping[str, Any]) -> Any:
    """A Gemini body's system instruction, whichever spelling carries it."""
    system = body.get("systemInstruction")
    return body.get("system_instruction") if system is None else system


def count_request(body_or_text: Any, *, model: str, chat: bool = True) -> TokenCount:
    """Count a request body, a message list or a plain text.

    * ``str``: the text alone (``chat=False``) or as one user message (``chat=True``).
    * ``list``: OpenAI chat ``messages``.
    * ``Mapping``: a Chat Completions body (``messages``, ``tools``/``functions``), an
      Anthropic Messages body (``system``, ``input_schema`` tools or Anthropic blocks), a
      Responses body (``instructions``, ``input``), a Gemini ``generateContent`` body
      (``contents``, ``systemInstruction``, ``tools``) or a legacy ``prompt``.

    Raises:
        InvalidRequest: nothing countable was found.
    """
    if isinstance(body_or_text, str):
        if not chat:
            return TokenCount(
                count_text(body_or_text, model=model),
                encoding_name_for_model(model),
                is_exact(model),
            )
        body_or_text = [{"role": "user", "content": body_or_text}]
    if isinstance(body_or_text, Sequence) and not isinstance(body_or_text, (str, bytes)):
        body_or_text = {"messages": body_or_text}
    if not isinstance(body_or_text, Mapping):
        raise InvalidRequest(
            f"cannot count a {type(body_or_text).__name__}: pass text, messages or a body"
        )
    body = body_or_text
    counter: ChatCounter
    if "messages" in body:
        shape: Shape = "anthropic" if _is_anthropic(body) else "openai"
        counter = ChatCounter(model, shape=shape)
        tools = body.get("tools") or body.get("functions")
        tokens = counter.total(body["messages"], tools=tools, system=body.get("system"))
    elif "contents" in body:
        counter = ChatCounter(model, shape="gemini")
        tokens = counter.total(
            gemini_contents(body["contents"]),
            tools=body.get("tools"),
            system=gemini_system(body),
        )
    elif "input" in body:
        counter = ChatCounter(model)
        items = body["input"]
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        elif not isinstance(items, Sequence) or isinstance(items, bytes):
            # input comes from request bodies: null or 5 is a 400, not a TypeError
            raise InvalidRequest("input must be a string or a list of items", param="input")
        instructions = body.get("instructions")
        if instructions:
            items = [{"role": "system", "content": instructions}, *items]
        tokens = counter.total(items, tools=body.get("tools"))
    elif isinstance(body.get("prompt"), str):
        return count_request(body["prompt"], model=model, chat=False)
    else:
        raise InvalidRequest("the body has no messages, input or prompt to count", param="messages")
    return TokenCount(tokens, counter.encoding, counter.exact)
