"""Test helpers: an in-process fake of the OpenAI, Anthropic and Gemini HTTP APIs.

:class:`FakeUpstream` answers ``POST /v1/chat/completions``, ``POST /v1/responses``,
``POST /v1/messages``, ``GET /v1/models`` and Gemini's ``POST
/v1beta/models/{model}:generateContent`` / ``:streamGenerateContent`` in the providers'
real wire formats (JSON and server-sent events), so the unmodified ``openai``,
``anthropic`` and ``google-genai`` SDK clients run against it
(:meth:`FakeUpstream.genai_client`). Token counts come from :mod:`metered.tokens`, so the
usage it reports is what metered would estimate for the same request.

One upstream, several ways in; all share one request handler:

- as an ``httpx2`` or ``httpx`` transport, in-process and without sockets::

      upstream = FakeUpstream(reply="Hi there!")
      client = OpenAI(
          api_key="x",
          base_url="http://fake/v1",
          http_client=httpx2.Client(transport=upstream.httpx2_transport()),
      )
      # or simply: client = upstream.openai_client()

- as an ASGI application (``FakeUpstream`` instances are ASGI callables);
- over a real loopback socket, served by uvicorn in a background thread::

      with upstream.serve() as url:
          client = OpenAI(api_key="x", base_url=f"{url}/v1")

Faults are queued and consumed one per request, in order: :meth:`FakeUpstream.fail_next`
(an HTTP error in the provider's error shape, or an error event mid-stream),
:meth:`FakeUpstream.disconnect_next` and :meth:`FakeUpstream.timeout_next`. Every
request received is recorded (:attr:`FakeUpstream.requests`) with credentials redacted.

Layout: :mod:`~metered.testing.upstream` holds :class:`FakeUpstream` and its one request
handler; each API's answers live in :mod:`~metered.testing.openai_chat`,
:mod:`~metered.testing.openai_responses`, :mod:`~metered.testing.anthropic` and
:mod:`~metered.testing.gemini`, over the
framing and error bodies they share (``_wire``) and the request record, faults and reply
generation (``_exchange``); :mod:`~metered.testing.transports` reaches the upstream
through httpx/httpx2 transports or a loopback socket; :mod:`~metered.testing.capture`
holds :func:`capture_spend`.
"""

from metered.testing._exchange import DEFAULT_MODELS, DEFAULT_REPLY, RecordedRequest
from metered.testing.capture import SpendCapture, capture_spend
from metered.testing.transports import serve_asgi
from metered.testing.upstream import FakeUpstream

__all__ = [
    "DEFAULT_MODELS",
    "DEFAULT_REPLY",
    "FakeUpstream",
    "RecordedRequest",
    "SpendCapture",
    "capture_spend",
    "serve_asgi",
]
