"""The fake upstream: one request handler behind every adapter."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from typing import TYPE_CHECKING, Any, Literal, overload

from metered.errors import InvalidRequest
from metered.testing._exchange import (
    _FAKE_HOST,
    _REDACTED,
    _SECRET_HEADERS,
    DEFAULT_MODELS,
    DEFAULT_REPLY,
    RecordedRequest,
    _BadRequest,
    _check_portion,
    _Fault,
    _Generation,
    _Provider,
    _Receive,
    _Reply,
    _Scope,
    _Send,
    _streaming,
    generation,
)
from metered.testing._wire import _error_reply, _json_reply, _model_entry, _model_list
from metered.testing.anthropic import messages_reply
from metered.testing.gemini import GEMINI_PATH, gemini_client, gemini_reply
from metered.testing.openai_chat import chat_reply
from metered.testing.openai_responses import responses_reply
from metered.testing.transports import (
    _not_injected,
    _transport_class,
    client_defaults,
    serve_asgi,
    serve_scope,
)

if TYPE_CHECKING:
    import anthropic
    import httpx
    import httpx2
    import openai
    from google import genai


class FakeUpstream:
    """An in-process fake of the OpenAI, Anthropic and Gemini HTTP APIs.

    Instances are ASGI applications and hand out ``httpx2``/``httpx`` transports; all
    of them share one request handler, one request record and one fault queue (safe to
    use from several threads).

    Args:
        reply: the assistant text, or a callable building it from the request.
        chunk_tokens: tokens per streamed delta.
        latency: seconds before the response starts (time to first byte).
        chunk_latency: seconds between two streamed events.
        cached_tokens: prompt tokens reported as read from the provider's cache: an
            ``int`` is a count (capped at the prompt size), a ``float`` in ``[0, 1]`` a
            fraction of the prompt.
        cache_write_tokens: prompt tokens reported as written to the cache, same forms,
            out of the prompt not read from the cache (OpenAI ``cache_write_tokens``,
            Anthropic ``cache_creation_input_tokens``).
        reasoning_tokens: hidden reasoning tokens added to the output of OpenAI
            reasoning models (o-series, gpt-5 family) and of Anthropic requests with
            ``thinking`` enabled; they count against the output limit first, as they do
            upstream.
        prompt_scale: prompt tokens reported per counted token (a provider's own tokenizer).
        models: the model ids ``GET /v1/models`` lists.
        keep_requests: how many of the latest requests :attr:`requests` keeps; ``None``
            keeps all (long benchmarks should bound it).

    Raises:
        ValueError: an option is out of range.
    """

    def __init__(
        self,
        *,
        reply: str | Callable[[RecordedRequest], str] = DEFAULT_REPLY,
        chunk_tokens: int = 1,
        latency: float = 0.0,
        chunk_latency: float = 0.0,
        cached_tokens: int | float = 0,
        cache_write_tokens: int | float = 0,
        reasoning_tokens: int = 0,
        prompt_scale: Fraction | int | str = 1,
        models: Iterable[str] = DEFAULT_MODELS,
        keep_requests: int | None = None,
    ) -> None:
        if type(chunk_tokens) is not int or chunk_tokens < 1:
            raise ValueError(f"chunk_tokens must be a positive int, got {chunk_tokens!r}")
        for name, seconds in (("latency", latency), ("chunk_latency", chunk_latency)):
            if not 0 <= seconds < float("inf"):
                raise ValueError(f"{name} must be a finite number of seconds >= 0, got {seconds!r}")
        _check_portion("cached_tokens", cached_tokens)
        _check_portion("cache_write_tokens", cache_write_tokens)
        if type(reasoning_tokens) is not int or reasoning_tokens < 0:
            raise ValueError(f"reasoning_tokens must be an int >= 0, got {reasoning_tokens!r}")
        if keep_requests is not None and (type(keep_requests) is not int or keep_requests < 0):
            raise ValueError(f"keep_requests must be an int >= 0 or None, got {keep_requests!r}")
        self._reply = reply
        self._chunk_tokens = chunk_tokens
        self._latency = float(latency)
        self._chunk_latency = float(chunk_latency)
        self._cached_tokens = cached_tokens
        self._cache_write_tokens = cache_write_tokens
        self._reasoning_tokens = reasoning_tokens
        self._prompt_scale = Fraction(prompt_scale)
        if self._prompt_scale <= 0:
            raise ValueError(f"prompt_scale must be positive, got {prompt_scale!r}")
        self._models = tuple(models)
        self._lock = threading.Lock()
        self._faults: deque[_Fault] = deque()
        self._requests: deque[RecordedRequest] = deque(maxlen=keep_requests)
        self._serial = 0

    def __repr__(self) -> str:
        return f"FakeUpstream(requests={len(self._requests)}, faults={len(self._faults)})"

    # -- recording and faults -------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, oldest first (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def last_request(self) -> RecordedRequest:
        """The most recent request.

        Raises:
            LookupError: no request was received yet.
        """
        with self._lock:
            if not self._requests:
                raise LookupError("the fake upstream has not received any request")
            return self._requests[-1]

    def reset(self) -> None:
        """Forget the recorded requests and drop every queued fault."""
        with self._lock:
            self._requests.clear()
            self._faults.clear()

    def fail_next(
        self,
        status: int = 429,
        *,
        times: int = 1,
        message: str | None = None,
        body: Any = None,
        headers: dict[str, str] | None = None,
        retry_after: float | None = None,
        after_chunks: int = 0,
    ) -> None:
        """Answer the next request(s) with an HTTP error in the provider's error shape.

        The SDKs raise their typed errors for it (``RateLimitError`` for 429,
        ``InternalServerError`` for 5xx, ``anthropic.OverloadedError`` for 529 …).

        Args:
            status: HTTP status code (400-599).
            times: how many consecutive requests fail.
            message: error message; a typical one for the status by default.
            body: the whole JSON error body, replacing the provider-shaped default.
            headers: extra response headers.
            retry_after: seconds sent as ``retry-after-ms``: the SDKs wait that long
                before retrying instead of their exponential backoff.
            after_chunks: for streamed responses, deliver this many events, then the
                error as an in-stream error event (the status stays 200); ``0`` fails
                the request itself.
        """
        if not 400 <= status <= 599:
            raise ValueError(f"status must be an HTTP error status (400-599), got {status!r}")
        extra = dict(headers or {})
        if retry_after is not None:
            # the SDKs prefer the millisecond header; other clients read the standard one
            extra["retry-after-ms"] = f"{retry_after * 1000:g}"
            extra["retry-after"] = str(math.ceil(retry_after))
        self._queue(
            _Fault(
                "status",
                times,
                after_chunks,
                status=status,
                message=message,
                body=body,
                headers=tuple(extra.items()),
            )
        )

    def disconnect_next(self, *, after_chunks: int = 0, times: int = 1) -> None:
        """Drop the connection of the next request(s).

        Clients see a broken connection: ``RemoteProtocolError`` from httpx/httpx2, which
        the SDKs raise as ``APIConnectionError`` (mid-stream, older SDK lines on httpx
        let the httpx error through, as they do against the real APIs).

        Args:
            after_chunks: events delivered before the drop (a JSON body is one chunk);
                ``0`` drops before the response. Over ASGI the response headers are
                always sent first: ASGI servers cannot drop a connection silently.
            times: how many consecutive requests are dropped.
        """
        self._queue(_Fault("disconnect", times, after_chunks))

    def timeout_next(self, *, after_chunks: int = 0, times: int = 1) -> None:
        """Stop answering the next request(s), as a hung upstream does.

        Through the transports the client's read timeout fires at once
        (``httpx2.ReadTimeout``, ``APITimeoutError`` in the SDKs), without waiting.
        Over ASGI/:meth:`serve` the fake really goes silent until the client gives up,
        so give the client a timeout.

        Args:
            after_chunks: events delivered before going silent; ``0`` stalls before
                the response.
            times: how many consecutive requests stall.
        """
        self._queue(_Fault("timeout", times, after_chunks))

    def _queue(self, fault: _Fault) -> None:
        if type(fault.times) is not int or fault.times < 1:
            raise ValueError(f"times must be a positive int, got {fault.times!r}")
        if type(fault.after_chunks) is not int or fault.after_chunks < 0:
            raise ValueError(f"after_chunks must be an int >= 0, got {fault.after_chunks!r}")
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self) -> _Fault | None:
        # caller holds the lock
        if not self._faults:
            return None
        fault = self._faults[0]
        fault.times -= 1
        if fault.times == 0:
            self._faults.popleft()
        return fault

    # -- the one request handler ----------------------------------------------------

    def _exchange(
        self,
        method: str,
        path: str,
        query: str,
        headers: Iterable[tuple[str, str]],
        content: bytes,
    ) -> _Reply:
        """Build the reply to one request; every adapter delivers what this returns."""
        kept = {}
        for name, value in headers:
            name = name.lower()
            kept[name] = _REDACTED if name in _SECRET_HEADERS else value
        try:
            body = json.loads(content) if content else None
        except ValueError:
            body = None
        record = RecordedRequest(method.upper(), path, query, kept, body, content)
        route = path[3:] if path.startswith("/v1/") else path
        gemini = GEMINI_PATH.fullmatch(path)
        provider: _Provider = "google" if gemini else "openai"
        if route == "/messages" or "anthropic-version" in kept:
            provider = "anthropic"
        with self._lock:
            self._requests.append(record)
            fault = self._take_fault()
            self._serial += 1
            serial = self._serial
        request_id = f"req_fake{serial:08d}"
        streaming = _streaming(body) or (gemini is not None and gemini[2][0] == "s")
        in_stream = fault is not None and fault.after_chunks > 0 and streaming
        if fault is not None and fault.kind == "status" and not in_stream:
            reply = _error_reply(provider, fault.status, fault.message, body=fault.body)
            reply.headers.extend(fault.headers)
        else:
            try:
                reply = self._route(record, route, provider, serial)
            except _BadRequest as exc:
                reply = _error_reply(provider, exc.status, exc.message, param=exc.param)
            except InvalidRequest as exc:  # metered.tokens could not count the body
                reply = _error_reply(provider, 400, exc.message, param=exc.param)
            reply.cut = fault
        reply.headers.append(
            ("request-id" if provider == "anthropic" else "x-request-id", request_id)
        )
        reply.latency = self._latency
        reply.chunk_latency = self._chunk_latency
        return reply

    def _route(
        self, record: RecordedRequest, route: str, provider: _Provider, serial: int
    ) -> _Reply:
        method = record.method
        if method == "POST" and route == "/chat/completions":
            return chat_reply(record, serial, self._generate)
        if method == "POST" and route == "/responses":
            return responses_reply(record, serial, self._generate)
        if method == "POST" and route == "/messages":
            return messages_reply(record, serial, self._generate)
        gemini = GEMINI_PATH.fullmatch(record.path)
        if method == "POST" and gemini is not None:
            stream = gemini[2] == "streamGenerateContent"
            return gemini_reply(record, gemini[1], stream, serial, self._generate)
        if method == "GET" and route == "/models":
            return _json_reply(200, _model_list(provider, self._models))
        if method == "GET" and route.startswith("/models/"):
            model = route.removeprefix("/models/")
            if model not in self._models:
                raise _BadRequest(404, f"The model '{model}' does not exist", param="model")
            return _json_reply(200, _model_entry(provider, model))
        raise _BadRequest(404, f"Invalid URL ({method} {record.path})")

    def _generate(
        self,
        record: RecordedRequest,
        *,
        model: str,
        prompt_tokens: int,
        limit: int | None,
        reasoning: bool,
    ) -> _Generation:
        text = self._reply if isinstance(self._reply, str) else self._reply(record)
        reasoning_tokens = self._reasoning_tokens if reasoning else 0
        portions = (self._chunk_tokens, self._cached_tokens, self._cache_write_tokens)
        prompt_tokens = math.ceil(prompt_tokens * self._prompt_scale)
        return generation(text, model, prompt_tokens, limit, reasoning_tokens, *portions)

    # -- adapters -------------------------------------------------------------------

    async def __call__(self, scope: _Scope, receive: _Receive, send: _Send) -> None:
        """Serve one ASGI connection scope (``http``; ``lifespan`` is acknowledged)."""
        await serve_scope(self._exchange, scope, receive, send)

    def httpx2_transport(self) -> httpx2.BaseTransport:
        """A transport for ``httpx2.Client(transport=...)`` (openai 3.x, anthropic 2.x)."""
        transport: httpx2.BaseTransport = _transport_class("httpx2")(self)
        return transport

    def async_httpx2_transport(self) -> httpx2.AsyncBaseTransport:
        """A transport for ``httpx2.AsyncClient(transport=...)``."""
        transport: httpx2.AsyncBaseTransport = _transport_class("httpx2")(self)
        return transport

    def httpx_transport(self) -> httpx.BaseTransport:
        """A transport for ``httpx.Client(transport=...)`` (SDK lines built on httpx)."""
        transport: httpx.BaseTransport = _transport_class("httpx")(self)
        return transport

    def async_httpx_transport(self) -> httpx.AsyncBaseTransport:
        """A transport for ``httpx.AsyncClient(transport=...)``."""
        transport: httpx.AsyncBaseTransport = _transport_class("httpx")(self)
        return transport

    @overload
    def openai_client(self, *, async_: Literal[False] = False, **kwargs: Any) -> openai.OpenAI: ...

    @overload
    def openai_client(self, *, async_: Literal[True], **kwargs: Any) -> openai.AsyncOpenAI: ...

    def openai_client(
        self, *, async_: bool = False, **kwargs: Any
    ) -> openai.OpenAI | openai.AsyncOpenAI:
        """An ``openai`` client wired to this fake through an in-process transport.

        Defaults: a fake API key and ``max_retries=0`` (so injected faults surface at
        once). Pass ``base_url`` (e.g. from :meth:`serve`) to talk over a socket
        instead; any other keyword goes to the client constructor.

        Args:
            async_: build an ``AsyncOpenAI`` instead of an ``OpenAI``.
            **kwargs: client constructor arguments, overriding the defaults.
        """
        import openai

        kwargs = self._client_defaults(openai, kwargs, "sk-fake", f"{_FAKE_HOST}/v1", async_=async_)
        return openai.AsyncOpenAI(**kwargs) if async_ else openai.OpenAI(**kwargs)

    @overload
    def anthropic_client(
        self, *, async_: Literal[False] = False, **kwargs: Any
    ) -> anthropic.Anthropic: ...

    @overload
    def anthropic_client(
        self, *, async_: Literal[True], **kwargs: Any
    ) -> anthropic.AsyncAnthropic: ...

    def anthropic_client(
        self, *, async_: bool = False, **kwargs: Any
    ) -> anthropic.Anthropic | anthropic.AsyncAnthropic:
        """An ``anthropic`` client wired to this fake; same defaults as :meth:`openai_client`.

        Args:
            async_: build an ``AsyncAnthropic`` instead of an ``Anthropic``.
            **kwargs: client constructor arguments, overriding the defaults.
        """
        import anthropic

        kwargs = self._client_defaults(anthropic, kwargs, "sk-ant-fake", _FAKE_HOST, async_=async_)
        return anthropic.AsyncAnthropic(**kwargs) if async_ else anthropic.Anthropic(**kwargs)

    def _client_defaults(
        self, sdk: Any, kwargs: dict[str, Any], api_key: str, base_url: str, *, async_: bool
    ) -> dict[str, Any]:
        return client_defaults(self, sdk, kwargs, api_key, base_url, async_=async_)

    def genai_client(self, **kwargs: Any) -> genai.Client:
        """A ``google-genai`` client (``client.models`` and ``client.aio.models``) wired to
        this fake through in-process transports: a fake API key, one attempt per request
        (injected faults surface at once). Keywords go to ``genai.Client``; an
        ``http_options`` (dict or ``HttpOptions``) is merged over these defaults.
        """
        return gemini_client(self, **kwargs)

    @contextlib.contextmanager
    def serve(self, *, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
        """Serve this fake over HTTP with uvicorn in a background thread.

        Needs ``uvicorn`` (the ``fastapi``/``gateway`` extras). Use it for tests that
        need real sockets; the transports are faster otherwise.

        Args:
            host: IPv4 address to listen on.
            port: TCP port; ``0`` picks a free one.

        Yields:
            The base URL, e.g. ``http://127.0.0.1:54321`` (OpenAI clients want
            ``f"{url}/v1"``; Anthropic clients take it as is).
        """
        # the injected disconnects are deliberate: keep their tracebacks out of the logs
        uvicorn_errors = logging.getLogger("uvicorn.error")
        uvicorn_errors.addFilter(_not_injected)
        try:
            with serve_asgi(self, host=host, port=port) as url:
                yield url
        finally:
            uvicorn_errors.removeFilter(_not_injected)
