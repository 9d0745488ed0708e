"""Pre-call estimates: the counted prompt plus the most output the request allows.

The output limit a request sets is read here (whichever of the three names carries it),
below :mod:`metered.fitting.policy`, which applies the tier caps to it: counting never
depends on the fitting layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

from metered.errors import InvalidRequest
from metered.tokens.request import count_request
from metered.usage import Usage

__all__ = [
    "MAX_OUTPUT_TOKENS",
    "OUTPUT_LIMIT_PARAMS",
    "checked_output_limit",
    "estimate_usage",
    "requested_output_limit",
]

#: Names an output limit goes by: Chat Completions (``max_completion_tokens``, or the
#: older ``max_tokens``), Responses (``max_output_tokens``), Anthropic (``max_tokens``).
OUTPUT_LIMIT_PARAMS: Final = ("max_completion_tokens", "max_output_tokens", "max_tokens")
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


def requested_output_limit(body: Mapping[str, Any]) -> int | None:
    """The output limit a request body sets, whichever name carries it.

    When several names are set, the largest wins, so a reservation never undercounts.

    Raises:
        InvalidRequest: a limit is not a positive integer (``param`` names it).
    """
    found: int | None = None
    for name in OUTPUT_LIMIT_PARAMS:
        value = body.get(name)
        if value is not None:
            limit = checked_output_limit(value, param=name)
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
    ``max_output_tokens`` or ``max_tokens``), else ``default_output_tokens`` (pass the
    model's maximum output to reserve the worst case), else 0.

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
    output = requested_output_limit(body)
    if output is None:
        output = default_output_tokens or 0
    return Usage(input_tokens=prompt.tokens, output_tokens=output, source="estimated")
