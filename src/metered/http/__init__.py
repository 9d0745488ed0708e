"""The HTTP doors: the ASGI and WSGI middlewares (:mod:`~metered.http.asgi`,
:mod:`~metered.http.wsgi`) and what they share — who is calling (:mod:`~metered.http.identity`),
gateway routes and request checks (:mod:`~metered.http.request`), the response core
(:mod:`~metered.http.response`), responses read as they pass (:mod:`~metered.http.wire`),
the one mapping of errors to HTTP (:mod:`~metered.http.errors`) and the exception handlers
that apply it to an app's own handlers (:func:`add_exception_handlers`)."""

from metered.http.handlers import add_exception_handlers

__all__ = ["add_exception_handlers"]
