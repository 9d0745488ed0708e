"""Offline token counting: bundled encodings, chat/tool/image rules, pre-call estimates.

The package is split by concern; every public name is re-exported here:

* :mod:`~metered.tokens.encodings` — the bundled o200k/cl100k BPE files (sha256-checked),
  the model -> encoding table (:func:`set_model_encoding`) and cached text counts.
* :mod:`~metered.tokens.images` — image tokens (OpenAI tiles, Anthropic pixels).
* :mod:`~metered.tokens.chat` — :class:`ChatCounter`: messages, tools, tool calls, the
  Anthropic and Responses shapes.
* :mod:`~metered.tokens.request` — :func:`count_request` for a text, messages or a body.
* :mod:`~metered.tokens.estimate` — :func:`estimate_usage`: prompt plus output limit.
"""

from __future__ import annotations

from metered.tokens.chat import ChatCounter, Shape, count_anthropic, count_chat
from metered.tokens.encodings import (
    count_text,
    encoding_for_model,
    encoding_name_for_model,
    get_encoding,
    is_exact,
    set_model_encoding,
)
from metered.tokens.estimate import estimate_usage
from metered.tokens.request import TokenCount, count_request

__all__ = [
    "ChatCounter",
    "Shape",
    "TokenCount",
    "count_anthropic",
    "count_chat",
    "count_request",
    "count_text",
    "encoding_for_model",
    "encoding_name_for_model",
    "estimate_usage",
    "get_encoding",
    "is_exact",
    "set_model_encoding",
]
