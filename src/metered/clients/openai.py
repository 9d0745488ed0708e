"""Metered OpenAI clients: wrap one ``OpenAI`` / ``AsyncOpenAI`` object, change nothing else.

Usage stays one line::

    client = MeteredOpenAI(OpenAI())                                # price, trace, enforce nothing
    client = MeteredOpenAI(OpenAI(), meter=meter, account="team-a")  # + policy and budgets

Metered: ``chat.completions.create`` (streamed or not), ``.parse``, ``.stream``,
``responses.create`` (streamed or not), ``.parse``, ``.stream``, the same methods under
``beta`` where the installed SDK has them, and all of them through ``with_raw_response``
and ``with_streaming_response`` (on the client, ``chat``, ``completions`` or
``responses``). Everything else (``models.list()``, ``files``, ``embeddings`` ...) is the
SDK's own object, untouched; ``with_options()``/``copy()`` return a metered client and
``isinstance(client, OpenAI)`` stays true. No SDK class or module is patched: other
clients are not metered.

Who pays, highest precedence first:

1. per call: ``extra_headers={"x-metered-account": "user-42"}`` (also ``x-metered-tier``,
   ``x-metered-feature``, ``x-metered-route``, ``x-metered-urgent: true``); these headers
   are removed before the request is sent;
2. the proxy: ``MeteredOpenAI(client, account=..., tier=..., feature=..., route=...)``;
3. the context bound by the middleware or :func:`metered.context.bind`;
4. the meter's ``default_account``.

Streams: ``stream_options={"include_usage": True}`` is added to streamed chat calls that do
not set ``include_usage``, so the provider reports the stream's usage; the extra
usage-only chunk (``choices == []``) is then hidden from the caller. A caller that sets
``include_usage`` itself sees the chunk as usual. If no usage arrives, the delivered text is
counted (``metered.tokens.source = estimated``). A raw response whose streamed body is read
with ``iter_lines()``/``iter_bytes()`` cannot be seen by metered and settles the pre-call
estimate. ``extra_body`` is sent as is but not metered.

A refused call (:class:`~metered.errors.PolicyDenied`,
:class:`~metered.errors.BudgetExceeded`) raises before any HTTP request; an upstream
error settles the call as failed and is re-raised unchanged.
"""

from __future__ import annotations

from metered.clients.adapter import Endpoint
from metered.clients.observers import ChatObserver, ResponsesObserver
from metered.clients.proxy import MeteredClient, Node, async_method, child, helper, method

__all__ = ["MeteredAsyncOpenAI", "MeteredOpenAI"]

_CHAT = Endpoint(api="chat", observer=ChatObserver, stream_usage=True)
_RESPONSES = Endpoint(api="responses", observer=ResponsesObserver)


class _ChatCompletions(Node):
    create = method("create", _CHAT)
    parse = method("parse", _CHAT)
    stream = helper("stream")


class _AsyncChatCompletions(Node):
    create = async_method("create", _CHAT)
    parse = async_method("parse", _CHAT)
    stream = helper("stream")


class _Responses(Node):
    create = method("create", _RESPONSES)
    parse = method("parse", _RESPONSES)
    stream = helper("stream")


class _AsyncResponses(Node):
    create = async_method("create", _RESPONSES)
    parse = async_method("parse", _RESPONSES)
    stream = helper("stream")


class _Chat(Node):
    completions = child("completions", _ChatCompletions)


class _AsyncChat(Node):
    completions = child("completions", _AsyncChatCompletions)


class _Beta(Node):
    chat = child("chat", _Chat)
    responses = child("responses", _Responses)


class _AsyncBeta(Node):
    chat = child("chat", _AsyncChat)
    responses = child("responses", _AsyncResponses)


class MeteredOpenAI(MeteredClient):
    """An ``openai.OpenAI`` client whose chat calls are metered.

    Args:
        client: the ``OpenAI`` client to meter (it is not modified).
        meter: the engine; default a shared ``Meter()`` (see
            :func:`metered.clients.default_meter`).
        account / tier / feature / route: who pays and under which rules, for every call
            of this client (per-call headers override; unset items come from the bound
            context).
        urgent: raise the tier's output cap for this client's calls.

    Example::

        client = MeteredOpenAI(OpenAI(), meter=meter, account="team-a")
        client.chat.completions.create(model="gpt-4o", messages=[...])
        meter.spent("team-a")
    """

    _provider = "openai"
    chat = child("chat", _Chat)
    responses = child("responses", _Responses)
    beta = child("beta", _Beta)


class MeteredAsyncOpenAI(MeteredClient):
    """An ``openai.AsyncOpenAI`` client whose chat calls are metered (see
    :class:`MeteredOpenAI`)."""

    _async = True
    _provider = "openai"
    chat = child("chat", _AsyncChat)
    responses = child("responses", _AsyncResponses)
    beta = child("beta", _AsyncBeta)
