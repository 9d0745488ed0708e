"""Chat counting: messages, tool definitions and tool calls, Anthropic and Responses shapes.

Messages are counted with the rules of OpenAI's cookbook "How to count tokens with
tiktoken" (3 tokens per message, +1 per ``name``, +3 to prime the reply; every string
field's text). Tool definitions use the cookbook's ``num_tokens_for_tools`` formula, which
reproduces the API's reported counts for the cookbook's example (105 tokens on gpt-4 /
gpt-3.5-turbo, 101 on gpt-4o / gpt-4o-mini). Nested schemas, tool calls in the history
and other shapes the cookbook does not cover are approximated, and the count is then
marked inexact (:attr:`ChatCounter.exact` is ``False``). Anthropic Messages and Gemini
``contents`` have no public tokenizer: they are counted with the same framing and always
marked estimated (a Gemini image or other media part as 258 tokens, Gemini's count for an
image of up to 384 px a side, the least it bills for one).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal

from metered.errors import InvalidRequest
from metered.tokens.encodings import text_counter, tokenizer
from metered.tokens.images import anthropic_image_tokens, openai_image_tokens

__all__ = ["ChatCounter", "Shape", "count_anthropic", "count_chat"]

Shape = Literal["openai", "anthropic", "gemini"]

# Tool calls in the history: name + arguments, plus a framing estimate (not published).
_TOOL_CALL_OVERHEAD: Final = 3
# Anthropic adds a hidden tool-use system prompt when tools are given; its pricing docs
# list 346 tokens for Claude 3.5+ / 4 models with tool_choice auto (the largest value).
_ANTHROPIC_TOOL_PROMPT: Final = 346
# Gemini bills an image of up to 384 px a side as 258 tokens, larger ones per 768 px tile.
_GEMINI_MEDIA: Final = 258
_GEMINI_TOOL_KEYS: Final = ("functionDeclarations", "function_declarations")
_GEMINI_SCHEMA_KEYS: Final = ("parameters", "parametersJsonSchema", "parameters_json_schema")
_FLAT_PROPERTY_KEYS: Final = frozenset({"type", "description", "enum"})
_TEXT_PART_TYPES: Final = frozenset({"text", "input_text", "output_text", "refusal"})
_PLAIN_MESSAGE_KEYS: Final = frozenset({"role", "content", "name"})
_METADATA_KEYS: Final = frozenset({"type", "id", "status", "tool_call_id"})


class ChatCounter:
    """Counts the pieces of one request with one model's rules.

    Each method returns the tokens of one piece; :attr:`exact` turns ``False`` as soon as
    any piece needed an estimate (unknown model, image without size, tool calls, ...).
    :func:`count_chat` and the trimming module use it so that every message is counted
    exactly once.

    Args:
        model: the model id (provider prefixes and ``ft:`` ids are understood).
        shape: ``"openai"`` (Chat Completions / Responses), ``"anthropic"`` (Messages) or
            ``"gemini"`` (``generateContent`` contents).
    """

    __slots__ = ("_count", "_tok", "encoding", "exact", "model", "shape")

    def __init__(self, model: str, *, shape: Shape = "openai") -> None:
        self.model = model
        self.shape: Shape = shape
        self._tok = tokenizer(model)
        self.encoding: str = self._tok.encoding
        self.exact: bool = self._tok.exact and shape == "openai"
        self._count = text_counter(self._tok.encoding)

    @property
    def reply_priming(self) -> int:
        """Tokens the API adds to prime the assistant's reply."""
        return self._tok.rules.reply_priming

    def text(self, text: str) -> int:
        """Tokens of ``text`` as ordinary text."""
        return self._count(text)

    def _json(self, value: Any) -> int:
        if isinstance(value, str):
            return self._count(value)
        try:
            return self._count(json.dumps(value, ensure_ascii=False, separators=(",", ":")))
        except (TypeError, ValueError):
            return 0

    def message(self, message: Mapping[str, Any]) -> int:
        """Tokens of one message or Responses input item, framing included."""
        # dicts skip the Mapping ABC check, which costs more than counting a cached text
        if type(message) is not dict and not isinstance(message, Mapping):
            raise InvalidRequest(
                f"a message must be an object, got {type(message).__name__}", param="messages"
            )
        if self.shape == "anthropic":
            return self._anthropic_message(message)
        if self.shape == "gemini":
            return self._gemini_content(message)
        if "role" not in message and "type" in message:
            return self._responses_item(message)
        rules = self._tok.rules
        count = self._count
        n = rules.per_message
        for key, value in message.items():
            if isinstance(value, str):  # a StrEnum role is its text too
                if key in _METADATA_KEYS:
                    # item type, ids, status: not rendered as text for the model
                    if key == "tool_call_id":
                        self.exact = False
                    continue
                n += count(value)
                if key == "name":
                    n += rules.per_name
                elif key not in _PLAIN_MESSAGE_KEYS:
                    self.exact = False
            elif value is None:
                continue
            elif key == "content":
                n += self._parts(value)
            elif key == "tool_calls":
                n += self._tool_calls(value)
            elif key == "function_call":
                n += self._function_call(value)
            else:
                self.exact = False
        return n

    def _tool_calls(self, calls: Any) -> int:
        self.exact = False
        if not isinstance(calls, Sequence):
            return 0
        return sum(
            self._function_call(call.get("function")) for call in calls if isinstance(call, Mapping)
        )

    def _function_call(self, call: Any) -> int:
        self.exact = False
        if not isinstance(call, Mapping):
            return 0
        return (
            _TOOL_CALL_OVERHEAD
            + self._count(str(call.get("name") or ""))
            + self._json(call.get("arguments") or "")
        )

    def _responses_item(self, item: Mapping[str, Any]) -> int:
        kind = item.get("type")
        self.exact = False
        if kind == "function_call":
            return self._function_call(item)
        if kind == "function_call_output":
            return self._tok.rules.per_message + self._json(item.get("output") or "")
        return 0

    def _parts(self, content: Any) -> int:
        if isinstance(content, str):
            return self._count(content)
        if not isinstance(content, Sequence):
            self.exact = False
            return 0
        n = 0
        for part in content:
            if isinstance(part, str):
                n += self._count(part)
                continue
            if not isinstance(part, Mapping):
                self.exact = False
                continue
            kind = part.get("type")
            # parts come from request bodies: a list "type" must not raise from a set lookup
            if isinstance(kind, str) and kind in _TEXT_PART_TYPES:
                n += self._count(str(part.get(kind if kind == "refusal" else "text") or ""))
            elif kind in ("image_url", "input_image"):
                n += self._openai_image(part)
            else:
                # input_audio, file, ...: no published formula
                self.exact = False
        return n

    def _openai_image(self, part: Mapping[str, Any]) -> int:
        image = part.get("image_url")
        if isinstance(image, Mapping):  # chat: {"image_url": {"url": ..., "detail": ...}}
            url, detail = image.get("url"), image.get("detail")
        else:  # responses: {"image_url": "...", "detail": ...}
            url, detail = image, part.get("detail")
        n, exact = openai_image_tokens(self._tok.tiles, url, detail)
        if not (exact and self._tok.tiles_exact):
            self.exact = False
        return n

    def tools(self, tools: Sequence[Mapping[str, Any]] | None) -> int:
        """Tokens of the tool (or legacy ``functions``) definitions of a request.

        Raises:
            InvalidRequest: ``tools`` is not a list.
        """
        if not tools:
            return 0
        if isinstance(tools, (str, bytes)) or not isinstance(tools, Sequence):
            # tools come from request bodies: `"tools": true` is a 400, not a TypeError
            raise InvalidRequest("tools must be a list of tool definitions", param="tools")
        if self.shape == "gemini":
            return self._gemini_tools(tools)
        if self.shape == "anthropic":
            return _ANTHROPIC_TOOL_PROMPT + sum(
                self._count(str(tool.get("name") or ""))
                + self._count(str(tool.get("description") or ""))
                + self._json(tool.get("input_schema") or {})
                for tool in tools
                if isinstance(tool, Mapping)
            )
        rules = self._tok.rules
        n = 0
        for tool in tools:
            if not isinstance(tool, Mapping):
                self.exact = False
                continue
            function = tool.get("function", tool)
            if tool.get("type", "function") != "function" or not isinstance(function, Mapping):
                # built-in tools (web_search, file_search, ...) have no published count
                self.exact = False
                continue
            n += rules.func_init
            description = function.get("description")
            if not isinstance(description, str):
                self.exact = False
                description = ""
            n += self._count(f"{function.get('name', '')}:{description.removesuffix('.')}")
            parameters = function.get("parameters")
            properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
            if isinstance(properties, Mapping) and properties:  # a list here is not a schema
                n += rules.prop_init + self._properties(properties)
        return n + rules.func_end

    def _properties(self, properties: Mapping[str, Any]) -> int:
        rules = self._tok.rules
        n = 0
        for key, spec in properties.items():
            n += rules.prop_key
            if not isinstance(spec, Mapping):
                self.exact = False
                continue
            if not spec.keys() <= _FLAT_PROPERTY_KEYS:
                # nested objects, arrays, anyOf ...: beyond the cookbook's formula; nested
                # properties are counted with the same per-property rule
                self.exact = False
            kind = spec.get("type", "")
            if not isinstance(kind, str):
                kind = " | ".join(map(str, kind)) if isinstance(kind, Sequence) else ""
            enum = spec.get("enum")
            if isinstance(enum, Sequence) and not isinstance(enum, str):
                n += rules.enum_init
                n += sum(rules.enum_item + self._count(str(item)) for item in enum)
            description = spec.get("description")
            description = description if isinstance(description, str) else ""
            n += self._count(f"{key}:{kind}:{description.removesuffix('.')}")
            for nested in (spec, spec.get("items")):
                inner = nested.get("properties") if isinstance(nested, Mapping) else None
                if isinstance(inner, Mapping) and inner:
                    n += rules.prop_init + self._properties(inner)
        return n

    # -- Anthropic ---------------------------------------------------------------------

    def system(self, system: Any) -> int:
        """Tokens of an Anthropic top-level ``system`` (string or text blocks) or a Gemini
        ``systemInstruction`` (a content or a string)."""
        if not system:
            return 0
        if self.shape == "gemini":
            if isinstance(system, str):
                return self._tok.rules.per_message + self._count(system)
            if not isinstance(system, Mapping):
                return 0
            return self._tok.rules.per_message + self._gemini_parts(system.get("parts"))
        return self._tok.rules.per_message + self._blocks(system)

    def _anthropic_message(self, message: Mapping[str, Any]) -> int:
        role = message.get("role")
        n = self._tok.rules.per_message + (self._count(role) if isinstance(role, str) else 0)
        return n + self._blocks(message.get("content"))

    def _blocks(self, content: Any) -> int:
        if isinstance(content, str):
            return self._count(content)
        if not isinstance(content, Sequence):
            return 0
        n = 0
        for block in content:
            if not isinstance(block, Mapping):
                continue
            kind = block.get("type")
            if kind == "text":
                n += self._count(str(block.get("text") or ""))
            elif kind == "image":
                n += anthropic_image_tokens(block.get("source"))
            elif kind == "tool_use":
                n += self._function_call(
                    {"name": block.get("name"), "arguments": block.get("input") or {}}
                )
            elif kind == "tool_result":
                n += _TOOL_CALL_OVERHEAD + self._blocks(block.get("content"))
            elif kind == "thinking":
                n += self._count(str(block.get("thinking") or ""))
            elif kind == "document":
                source = block.get("source")
                if isinstance(source, Mapping) and source.get("type") == "text":
                    n += self._count(str(source.get("data") or ""))
                elif isinstance(source, Mapping) and source.get("type") == "content":
                    n += self._blocks(source.get("content"))
        return n

    # -- Gemini ------------------------------------------------------------------------

    def _gemini_content(self, content: Mapping[str, Any]) -> int:
        role = content.get("role")
        n = self._tok.rules.per_message + (self._count(role) if isinstance(role, str) else 0)
        return n + self._gemini_parts(content.get("parts"))

    def _gemini_parts(self, parts: Any) -> int:
        if not isinstance(parts, Sequence) or isinstance(parts, (str, bytes)):
            return 0
        n = 0
        for part in parts:
            if not isinstance(part, Mapping):
                continue
            text = part.get("text")
            if isinstance(text, str):
                n += self._count(text)
            if _either(part, "inlineData", "inline_data") or _either(part, "fileData", "file_data"):
                n += _GEMINI_MEDIA
            call = _either(part, "functionCall", "function_call")
            if isinstance(call, Mapping):
                n += self._function_call({"name": call.get("name"), "arguments": call.get("args")})
            response = _either(part, "functionResponse", "function_response")
            if isinstance(response, Mapping):
                n += _TOOL_CALL_OVERHEAD + self._count(str(response.get("name") or ""))
                n += self._json(response.get("response") or "")
            for key in ("executableCode", "codeExecutionResult"):
                if isinstance(part.get(key), Mapping):
                    n += self._json(part[key])
        return n

    def _gemini_tools(self, tools: Sequence[Mapping[str, Any]]) -> int:
        n = 0
        for tool in tools:
            if not isinstance(tool, Mapping):
                continue
            declarations = next((tool[k] for k in _GEMINI_TOOL_KEYS if k in tool), None)
            if not isinstance(declarations, Sequence) or isinstance(declarations, str):
                continue  # googleSearch, codeExecution, ...: no published count
            for function in declarations:
                if isinstance(function, Mapping):
                    n += self._tok.rules.func_init
                    n += self._count(str(function.get("name") or ""))
                    n += self._count(str(function.get("description") or ""))
                    schema: Any = next(
                        (function[k] for k in _GEMINI_SCHEMA_KEYS if function.get(k)), {}
                    )
                    n += self._json(schema)
        return n

    # -- totals ------------------------------------------------------------------------

    def total(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        system: Any = None,
    ) -> int:
        """Prompt tokens of a whole request: messages, tools, system and reply priming."""
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
            raise InvalidRequest("messages must be a list of message objects", param="messages")
        n = self._tok.rules.reply_priming
        if tools:
            n += self.tools(tools)
        if system:
            n += self.system(system)
        for message in messages:
            n += self.message(message)
        return n


def _either(part: Mapping[str, Any], camel: str, snake: str) -> Any:
    value = part.get(camel)
    return part.get(snake) if value is None else value


def count_chat(
    messages: Sequence[Mapping[str, Any]],
    *,
    model: str,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Prompt tokens of an OpenAI chat request, as the API bills them.

    Args:
        messages: the ``messages`` list (dicts; content as a string or parts).
        model: the model id.
        tools: the ``tools`` (or legacy ``functions``) definitions, if any.

    Example:
        The cookbook's 6-message ``example_messages`` count 129 on gpt-4 and 124 on
        gpt-4o, the numbers the API reported.
    """
    return ChatCounter(model).total(messages, tools=tools)


def count_anthropic(
    messages: Sequence[Mapping[str, Any]],
    *,
    model: str,
    system: Any = None,
    tools: Sequence[Mapping[str, Any]] | None = None,
) -> int:
    """Estimated input tokens of an Anthropic Messages request (no public tokenizer)."""
    return ChatCounter(model, shape="anthropic").total(messages, tools=tools, system=system)
