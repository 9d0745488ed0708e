"""The fake Gemini API (``POST /v1beta/models/{model}:generateContent`` and
``:streamGenerateContent?alt=sse``): the ``GenerateContentResponse``, its chunk stream
and mid-stream error, and a ``google-genai`` client wired to the fake."""

from __future__ import annotations

import importlib
import importlib.util
import re
from typing import TYPE_CHECKING, Any

from metered.testing._exchange import (
    _FAKE_HOST,
    Generate,
    RecordedRequest,
    _BadRequest,
    _Fault,
    _Frames,
    _Generation,
    _object_body,
    _Reply,
)
from metered.testing._wire import _google_error, _json_reply, _sse, _sse_reply
from metered.testing.transports import _transport_class
from metered.tokens import count_request

if TYPE_CHECKING:
    from google import genai

    from metered.testing.upstream import FakeUpstream

__all__ = ["GEMINI_PATH", "gemini_client", "gemini_reply"]

#: ``/v1beta/models/{model}:{method}`` (also ``v1`` and ``v1alpha``).
GEMINI_PATH = re.compile(
    r"/v1(?:beta|alpha)?/models/([^/:]+):(generateContent|streamGenerateContent)"
)
# Gemini 2.5 and later think unless the thinking budget is 0.
_THINKING_MODEL = re.compile(r"gemini-(?:2\.5|[3-9])")


def _config(body: dict[str, Any]) -> dict[str, Any]:
    config = body.get("generationConfig", body.get("generation_config"))
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise _BadRequest(400, "Invalid value at 'generation_config'", param="generationConfig")
    return config


def _limit(config: dict[str, Any]) -> int | None:
    value = config.get("maxOutputTokens", config.get("max_output_tokens"))
    if value is None:
        return None
    if type(value) is not int or value < 1:
        raise _BadRequest(
            400,
            f"Invalid value at 'generation_config.max_output_tokens' ({value!r})",
            param="generationConfig.maxOutputTokens",
        )
    return value


def _thinks(model: str, config: dict[str, Any]) -> bool:
    thinking = config.get("thinkingConfig", config.get("thinking_config"))
    budget = None
    if isinstance(thinking, dict):
        budget = thinking.get("thinkingBudget", thinking.get("thinking_budget"))
    return _THINKING_MODEL.search(model.lower()) is not None and budget != 0


def gemini_reply(
    record: RecordedRequest, model: str, stream: bool, serial: int, generate: Generate
) -> _Reply:
    """Answer one ``generateContent`` request as Gemini would.

    Args:
        record: the request received.
        model: the model named in the path.
        stream: the path's method is ``streamGenerateContent``.
        serial: the upstream's request number, used in the response id.
        generate: the upstream's generation step (reply text, token counts).

    Returns:
        The ``GenerateContentResponse`` as JSON, or its chunks as server-sent events.

    Raises:
        _BadRequest: the body has no ``contents``, or an invalid generation config.
    """
    body = _object_body(record)
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        raise _BadRequest(400, "* GenerateContentRequest.contents: contents is not specified")
    config = _config(body)
    prompt_tokens = count_request({**body, "contents": contents}, model=model).tokens
    gen = generate(
        record,
        model=model,
        prompt_tokens=prompt_tokens,
        limit=_limit(config),
        reasoning=_thinks(model, config),
    )
    if not stream:
        return _json_reply(200, _response(gen, model, serial, [gen.text], final=True))
    return _sse_reply(_chunks(gen, model, serial), _gemini_event_error)


def _usage(gen: _Generation, *, final: bool) -> dict[str, Any]:
    usage: dict[str, Any] = {"promptTokenCount": gen.prompt_tokens}
    total = gen.prompt_tokens
    if final:
        # thoughts are reported beside the candidates; both are billed as output
        usage["candidatesTokenCount"] = gen.output_tokens - gen.reasoning_tokens
        total += gen.output_tokens
        if gen.reasoning_tokens:
            usage["thoughtsTokenCount"] = gen.reasoning_tokens
    if gen.cached_tokens:
        usage["cachedContentTokenCount"] = gen.cached_tokens
    usage["totalTokenCount"] = total
    return usage


def _response(
    gen: _Generation, model: str, serial: int, texts: list[str], *, final: bool
) -> dict[str, Any]:
    candidate: dict[str, Any] = {
        "content": {"role": "model", "parts": [{"text": text} for text in texts]},
        "index": 0,
    }
    if final:
        candidate["finishReason"] = "MAX_TOKENS" if gen.truncated else "STOP"
    return {
        "candidates": [candidate],
        "usageMetadata": _usage(gen, final=final),
        "modelVersion": model,
        "responseId": f"fake{serial:08d}",
    }


def _chunks(gen: _Generation, model: str, serial: int) -> _Frames:
    pieces = gen.pieces or ("",)
    last = len(pieces) - 1
    for index, piece in enumerate(pieces):
        yield _sse(_response(gen, model, serial, [piece], final=index == last))


def _gemini_event_error(fault: _Fault, index: int) -> bytes:
    return _sse(
        fault.body if fault.body is not None else _google_error(fault.status, fault.message)
    )


def gemini_client(upstream: FakeUpstream, **kwargs: Any) -> genai.Client:
    """A ``google.genai.Client`` wired to ``upstream`` through in-process transports."""
    from google import genai
    from google.genai import types

    options: dict[str, Any] = {
        "base_url": _FAKE_HOST,
        # one attempt: injected faults surface at once, never after the SDK's own sleeps
        "retry_options": types.HttpRetryOptions(attempts=1),
    }
    given = kwargs.pop("http_options", None)
    if isinstance(given, types.HttpOptions):
        given = given.model_dump(exclude_none=True)
    options.update(given or {})
    if "httpx_client" not in options and "httpx_async_client" not in options:
        # the SDK runs on httpx2 when it is installed, else on httpx: use the same
        library = "httpx2" if importlib.util.find_spec("httpx2") is not None else "httpx"
        module = importlib.import_module(library)
        transport = _transport_class(library)(upstream)  # serves sync and async clients
        options["httpx_client"] = module.Client(transport=transport)
        options["httpx_async_client"] = module.AsyncClient(transport=transport)
    return genai.Client(
        **{"api_key": "fake-google-key", **kwargs}, http_options=types.HttpOptions(**options)
    )
