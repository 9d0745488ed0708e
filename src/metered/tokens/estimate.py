"""Pre-call estimates: the counted prompt plus the most output the request allows.

The output limit a request sets is read here (whichever of the three names carries it, or
Gemini's nested ``generationConfig.maxOutputTokens``), below :mod:`metered.fitting.policy`,
which applies the tier caps to it: counting never depends on the fitting layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from metered.errors import InvalidRequest
from metered.tokens.request import count_request
from metered.usage import Usage

__all__ = [
    "GEMINI_CONFIG",
    "GEMINI_OUTPUT_LIMIT",
    "GEMINI_OUTPUT_LIMIT_KEYS",
    "MAX_OUTPUT_TOKENS",
    "OUTPUT_LIMIT_PARAMS",
    "checked_output_limit",
    "estimate_usage",
    "gemini_config",
    "requested_output_limit",
]

#: Names an output limit goes by: Chat Completions (``max_completion_tokens``, or the
#: older ``max_tokens``), Responses (``max_output_tokens``), Anthropic (``max_tokens``).
OUTPUT_LIMIT_PARAMS: Final = ("max_completion_tokens", "max_output_tokens", "max_tokens")
#: Gemini's output limit, a key of the request's ``generationConfig`` object (the dotted
#: path is the parameter name errors and :class:`~metered.fitting.policy.OutputCap` use).
GEMINI_OUTPUT_LIMIT: Final = "generationConfig.maxOutputTokens"
#: The spellings the Gemini API accepts (proto JSON takes camelCase and snake_case).
GEMINI_CONFIG: Final = ("generationConfig", "generation_config")
GEMINI_OUTPUT_LIMIT_KEYS: Final = ("maxOutputTokens", "max_output_tokens")
#: No model emits a million tokens in one call: a larger output limit is a client bug or
#: an attempt to make the reservation absurd.
MAX_OUTPUT_TOKENS: Final = 1_000_000


def checked_output_limit(value: object, *, param: str) -> int:
    """``value`` as an output limit: an integer from 1 to :data:`MAX_OUTPUT_TOKENS`.

    Raises:
        InvalidRequest: anything else (``param`` names the parameter).
    """
    # bool is an int subclass; True is not a token limit
    if type(value) is not int or not 1 <= value <= MAX_OUTPUT_TOKENS:
        raise InvalidRequest(
            f"{param} must be an integer from 1 to {MAX_OUTPUT_TOKENS}, got {value!r}",
            param=param,
        )
    return value


def gemini_config(body: Mapping[str, Any]) -> tuple[str, Mapping[str, Any] | None]:
    """The key and value of a Gemini body's generation config (``None``: not set).

    Raises:
        InvalidRequest: it is not an object, or both spellings are set (the API would
            read one of them; metering must not read the other).
    """
    present = [name for name in GEMINI_CONFIG if body.get(name) is not None]
    if len(present) > 1:
        raise InvalidRequest(
            "set generationConfig or generation_config, not both", param=GEMINI_CONFIG[0]
        )
    name = present[0] if present else GEMINI_CONFIG[0]
    config = body.get(name)
    if config is not None and not isinstance(config, Mapping):
        raise InvalidRequest(f"{name} must be an object", param=name)
    return name, config


def requested_output_limit(body: Mapping[str, Any], api: str = "chat") -> int | None:
    """The output limit a request body sets, whichever name carries it.

    When several names are set, the largest wins, so a reservation never undercounts.
    A Gemini body (``api="gemini"``) carries it in ``generationConfig.maxOutputTokens``.

    Raises:
        InvalidRequest: a limit is not a positive integer (``param`` names it).
    """
    names: tuple[str, ...] = OUTPUT_LIMIT_PARAMS
    if api == "gemini":
        _, config = gemini_config(body)
        if config is None:
            return None
        body, names = config, GEMINI_OUTPUT_LIMIT_KEYS
    found: int | None = None
    for name in names:
        value = body.get(name)
        if value is not None:
            param = name if api != "gemini" else GEMINI_OUTPUT_LIMIT
            limit = checked_output_limit(value, param=param)
            found = limit if found is None else max(found, limit)
    return found


def estimate_usage(
    body: Mapping[str, Any],
    *,
    model: str | None = None,
    default_output_tokens: int | None = None,
) -> Usage:
    """Pre-call estimate: the counted prompt plus the most the call may output.

    The output side is the request's own limit (``max_completion_tokens``,
    ``max_output_tokens``, ``max_tokens`` or Gemini's ``generationConfig.maxOutputTokens``),
    else ``default_output_tokens`` (pass the model's maximum output to reserve the worst
    case), else 0.

    Args:
        body: the request body.
        model: the model to count for; defaults to ``body["model"]``.
        default_output_tokens: the output cap to assume when the request sets none.

    Raises:
        InvalidRequest: no model, or an invalid output limit.
    """
    name = model if model is not None else body.get("model")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("the request names no model", param="model")
    prompt = count_request(body, model=name)
    output = requested_output_limit(body, "gemini" if "contents" in body else "chat")
    if output is None:
        output = default_output_tokens or 0
    return Usage(input_tokens=prompt.tokens, output_tokens=output, source="estimated")
