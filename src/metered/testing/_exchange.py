"""One request to the fake upstream: what was received, what is answered, the faults
queued against it, and the helpers that read a request body."""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Awaitable, Callable, Generator, MutableMapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from metered.tokens import encoding_for_model

if TYPE_CHECKING:
    import tiktoken


DEFAULT_REPLY = "This is a reply from the metered fake upstream."
"""What :class:`FakeUpstream` answers unless told otherwise."""

DEFAULT_MODELS = (
    "gpt-4o",
    "gpt-4o-mini",
    "o4-mini",
    "gpt-5",
    "claude-sonnet-4-6",
    "claude-haiku-4-5",
)
"""The model ids ``GET /v1/models`` lists unless told otherwise."""

_FAKE_HOST = "http://fake-upstream.test"
_REDACTED = "[redacted]"
# Headers that carry credentials: never kept in the request record.
_SECRET_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "x-api-key", "x-goog-api-key", "api-key", "cookie"}
)
# Models that spend hidden reasoning tokens: OpenAI o-series and the gpt-5 family.
_REASONING_MODEL = re.compile(r"(?:^|/)(?:o\d|gpt-5)")

_Provider = Literal["openai", "anthropic", "google"]
_FaultKind = Literal["status", "disconnect", "timeout"]
_Frames = Generator[bytes, None, None]

_Scope = MutableMapping[str, Any]
_Message = MutableMapping[str, Any]
_Receive = Callable[[], Awaitable[_Message]]
_Send = Callable[[_Message], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One request as the fake upstream received it.

    Attributes:
        method: HTTP method, upper case.
        path: URL path, e.g. ``/v1/chat/completions``.
        query: raw query string, without the ``?``.
        headers: header names lower-cased; credential headers (``authorization``,
            ``x-api-key``, ``api-key``, ``cookie``) have their value replaced by
            ``"[redacted]"``.
        body: the JSON body parsed, or ``None`` when the body is empty or not JSON.
        content: the raw body bytes.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: Any
    content: bytes = field(repr=False)


@dataclass(slots=True)
class _Fault:
    kind: _FaultKind
    times: int
    after_chunks: int
    status: int = 0
    message: str | None = None
    body: Any = None
    headers: tuple[tuple[str, str], ...] = ()


class _Interrupted(Exception):
    """The injected disconnect or timeout is due: the adapter turns it into its own kind."""

    def __init__(self, kind: _FaultKind) -> None:
        super().__init__(kind)
        self.kind = kind


class _InjectedDisconnect(ConnectionAbortedError):
    """Raised by the ASGI app to drop a connection: ASGI has no other way to do it."""


class _BadRequest(Exception):
    def __init__(self, status: int, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


@dataclass(slots=True)
class _Reply:
    """A response, independent of the adapter that delivers it.

    ``events`` lazily produces the SSE frames of a stream (``body`` is then unused);
    ``cut`` is the injected fault to apply while delivering it, and ``error_event``
    renders an in-stream error for the frame index it falls on.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    events: _Frames | None = None
    error_event: Callable[[_Fault, int], bytes] | None = None
    cut: _Fault | None = None
    latency: float = 0.0
    chunk_latency: float = 0.0

    @property
    def cut_before_response(self) -> _Fault | None:
        """The disconnect/timeout due before any body byte, if there is one."""
        cut = self.cut
        if cut is not None and cut.kind != "status" and cut.after_chunks == 0:
            return cut
        return None

    def frames(self) -> Generator[tuple[float, bytes], None, None]:
        """Yield ``(delay, frame)`` pairs; raise :class:`_Interrupted` where the cut falls."""
        if self.events is None:
            yield 0.0, self.body
            return
        cut = self.cut
        try:
            for index, frame in enumerate(self.events):
                delay = self.chunk_latency if index else 0.0
                if cut is not None and index == cut.after_chunks:
                    if cut.kind != "status":
                        raise _Interrupted(cut.kind)
                    if self.error_event is not None:
                        yield delay, self.error_event(cut, index)
                    return
                yield delay, frame
        finally:
            self.events.close()


@dataclass(frozen=True, slots=True)
class _Generation:
    """The reply a request gets, with the token counts a provider would report."""

    pieces: tuple[str, ...]
    prompt_tokens: int
    cached_tokens: int
    cache_write_tokens: int
    output_tokens: int
    reasoning_tokens: int
    truncated: bool

    @property
    def text(self) -> str:
        return "".join(self.pieces)


Generate = Callable[..., _Generation]
"""The upstream's generation step: a request and its prompt size -> the reply to send."""


# -- request helpers ----------------------------------------------------------------


def _object_body(record: RecordedRequest) -> dict[str, Any]:
    if not isinstance(record.body, dict):
        raise _BadRequest(400, "The request body must be a JSON object.")
    return record.body


def _streaming(body: Any) -> bool:
    return isinstance(body, dict) and body.get("stream") is True


def _model(body: dict[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest(400, "'model' is required", param="model")
    return model


def _limit(body: dict[str, Any], *names: str) -> int | None:
    """The tightest output-token limit among ``names``, validated as the APIs do."""
    limits = []
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if type(value) is not int or value < 1:
            raise _BadRequest(
                400, f"Invalid '{name}': expected an integer >= 1, got {value!r}", param=name
            )
        limits.append(value)
    return min(limits) if limits else None


def _is_reasoning(model: str) -> bool:
    return _REASONING_MODEL.search(model.lower()) is not None


def _check_portion(name: str, value: int | float) -> None:
    if type(value) is int:
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value!r}")
    elif type(value) is float:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} as a float is a fraction in [0, 1], got {value!r}")
    else:
        raise ValueError(f"{name} must be an int count or a float fraction, got {value!r}")


def _portion(spec: int | float, total: int) -> int:
    if type(spec) is float:
        return int(total * spec)
    return min(int(spec), total)


def _token_bytes(model: str, text: str) -> tuple[bytes, ...]:
    return _encoded(encoding_for_model(model), text)


@functools.lru_cache(maxsize=256)
def _encoded(encoding: tiktoken.Encoding, text: str) -> tuple[bytes, ...]:
    # Replies repeat across calls: tokenise each (encoding, text) once.
    return tuple(encoding.decode_tokens_bytes(encoding.encode_ordinary(text)))


def _split(
    tokens: tuple[bytes, ...], *, limit: int | None, chunk_tokens: int
) -> tuple[tuple[str, ...], int, bool]:
    """Cut the reply at ``limit`` tokens and group it into stream deltas.

    Returns the deltas, the number of tokens kept and whether the reply was truncated.
    Tokens can split a multi-byte character: the incremental decoder holds partial
    bytes back, so every delta is valid text and the deltas join to the exact reply.
    """
    truncated = limit is not None and len(tokens) > limit
    if limit is not None:
        tokens = tokens[:limit]
    # never flushed: a truncation that ends mid-character drops the partial bytes
    decoder = codecs.getincrementaldecoder("utf-8")()
    pieces = []
    for start in range(0, len(tokens), chunk_tokens):
        piece = decoder.decode(b"".join(tokens[start : start + chunk_tokens]))
        if piece:
            pieces.append(piece)
    return tuple(pieces), len(tokens), truncated


def generation(
    text: str,
    model: str,
    prompt_tokens: int,
    limit: int | None,
    reasoning_tokens: int,
    chunk_tokens: int,
    cached: int | float,
    cache_write: int | float,
) -> _Generation:
    """The reply ``text`` as the model would generate it: cut to ``limit`` output tokens
    (reasoning spent first), in chunks, with the cached and cache-write portions of the
    prompt (a count, or a fraction of it)."""
    if limit is not None:
        reasoning_tokens = min(reasoning_tokens, limit)
        limit -= reasoning_tokens
    pieces, output_tokens, truncated = _split(
        _token_bytes(model, text), limit=limit, chunk_tokens=chunk_tokens
    )
    cached_tokens = _portion(cached, prompt_tokens)
    return _Generation(
        pieces=pieces,
        prompt_tokens=prompt_tokens,
        cached_tokens=cached_tokens,
        cache_write_tokens=_portion(cache_write, prompt_tokens - cached_tokens),
        output_tokens=output_tokens + reasoning_tokens,
        reasoning_tokens=reasoning_tokens,
        truncated=truncated,
    )
