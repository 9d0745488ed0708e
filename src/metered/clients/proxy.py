"""The proxy tree: it mirrors the SDK's. The client proxy hands out proxies of the
namespaces that lead to a metered method (``client.chat`` → ``.completions`` →
``.create``), cached per proxy; every other attribute is the SDK's own object, untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from metered.clients.adapter import SDK_OPTIONS, ClientContext, Endpoint, acall, call
from metered.clients.streams import BaseObjectProxy, CollectingStreamManager
from metered.engine.meter import Meter

__all__ = ["MeteredClient", "Node", "async_method", "child", "helper", "method"]

_AZURE_CLIENTS = frozenset({"AzureOpenAI", "AsyncAzureOpenAI"})


class _Built:
    """An attribute of a proxy, built on its first access and then kept on the proxy.

    wrapt stores an attribute whose name the proxy class defines on the proxy itself, not
    on the wrapped object; this descriptor has no ``__set__``, so once stored the value is
    found in the proxy's own ``__dict__`` with no Python call: the
    ``client.chat.completions`` chain of every call costs plain attribute reads.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.__doc__ = f"The SDK's ``{name}``, metered."

    def build(self, node: Node) -> Any:
        """The attribute's value for one proxy."""
        raise NotImplementedError

    def __get__(self, node: Node | None, owner: type | None = None) -> Any:
        if node is None:
            return self
        value = self.build(node)
        setattr(node, self.name, value)
        return value


class _Child(_Built):
    def __init__(self, name: str, factory: Callable[[Any, ClientContext], Any]) -> None:
        super().__init__(name)
        self.factory = factory

    def build(self, node: Node) -> Any:
        return self.factory(getattr(node.__wrapped__, self.name), node._self_ctx)


class _View(_Built):
    """The SDK's ``with_raw_response`` / ``with_streaming_response`` view.

    The SDK builds these views from the resource they wrap; built from the proxy, their
    methods call the metered ones.
    """

    def build(self, node: Node) -> Any:
        return type(getattr(node.__wrapped__, self.name))(node)


class Node(BaseObjectProxy):
    """A proxied SDK object: metered children and methods; everything else passes through."""

    def __init__(self, wrapped: Any, ctx: ClientContext) -> None:
        super().__init__(wrapped)
        self._self_ctx = ctx

    with_raw_response: Any = _View("with_raw_response")
    with_streaming_response: Any = _View("with_streaming_response")


def child(name: str, factory: Callable[[Any, ClientContext], Any]) -> Any:
    """The proxied SDK attribute ``name`` (``factory(sdk_attribute, ctx)``, built once per
    proxy)."""
    return _Child(name, factory)


def method(name: str, endpoint: Endpoint) -> Callable[..., Any]:
    """A metered sync SDK method (keyword arguments only, like the SDK's)."""

    def metered(self: Node, *args: Any, **kwargs: Any) -> Any:
        target = getattr(self.__wrapped__, name)
        if args:  # not an SDK call shape: let the SDK raise its own TypeError
            return target(*args, **kwargs)
        return call(self._self_ctx, endpoint, target, kwargs)

    metered.__name__ = name
    metered.__doc__ = f"The SDK's ``{name}()``, metered."
    return metered


def async_method(name: str, endpoint: Endpoint) -> Callable[..., Any]:
    """A metered async SDK method."""

    async def metered(self: Node, *args: Any, **kwargs: Any) -> Any:
        target = getattr(self.__wrapped__, name)
        if args:
            return await target(*args, **kwargs)
        return await acall(self._self_ctx, endpoint, target, kwargs)

    metered.__name__ = name
    metered.__doc__ = f"The SDK's ``{name}()``, metered."
    return metered


def helper(name: str) -> Callable[..., Any]:
    """An SDK stream helper that calls ``self.create``: run it on the proxy.

    ``chat.completions.stream()`` and ``responses.stream()`` build a stream manager around
    ``resource.create``; running the SDK's own function with the proxy as ``resource``
    meters the request, and the manager is wrapped so that leaving it settles the call.
    """

    def metered(self: Node, *args: Any, **kwargs: Any) -> Any:
        manager = getattr(type(self.__wrapped__), name)(self, *args, **kwargs)
        return CollectingStreamManager(manager)

    metered.__name__ = name
    metered.__doc__ = f"The SDK's ``{name}()``, metered."
    return metered


class MeteredClient(Node):
    """Base of the client proxies; see :class:`metered.clients.MeteredOpenAI`."""

    _provider = ""
    _options = SDK_OPTIONS
    _async = False

    def __init__(
        self,
        client: Any,
        *,
        meter: Meter | None = None,
        account: str | None = None,
        tier: str | None = None,
        feature: str | None = None,
        route: str | None = None,
        urgent: bool | None = None,
    ) -> None:
        name = type(self).__name__
        if isinstance(client, MeteredClient):
            # metering twice would charge twice
            raise TypeError(f"{name}: the client is metered already; wrap the SDK client itself")
        if inspect.iscoroutinefunction(getattr(client, "close", None)) is not self._async:
            kind = "an async" if self._async else "a sync"
            raise TypeError(f"{name} wraps {kind} SDK client, not {type(client).__name__}")
        identity = {
            "account": account,
            "tier": tier,
            "feature": feature,
            "route": route,
            "urgent": urgent,
        }
        provider = self._provider
        if any(cls.__name__ in _AZURE_CLIENTS for cls in type(client).__mro__):
            provider = "azure"  # gen_ai.provider.name azure.ai.openai
        ctx = ClientContext(
            client, meter=meter, provider=provider, identity=identity, options=self._options
        )
        super().__init__(client, ctx)

    def with_options(self, **kwargs: Any) -> Any:
        """The SDK's ``with_options()``: a metered proxy of the new client."""
        return type(self)(self.__wrapped__.with_options(**kwargs), **self._self_ctx.settings)

    def copy(self, **kwargs: Any) -> Any:
        """The SDK's ``copy()``: a metered proxy of the new client."""
        return type(self)(self.__wrapped__.copy(**kwargs), **self._self_ctx.settings)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of {self.__wrapped__!r}>"
