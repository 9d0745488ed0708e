"""The HTTP doors: the ASGI and WSGI middlewares (:mod:`~metered.http.asgi`,
:mod:`~metered.http.wsgi`) and what they share — who is calling (:mod:`~metered.http.identity`),
gateway routes and request checks (:mod:`~metered.http.request`), the response core
(:mod:`~metered.http.response`), responses read as they pass (:mod:`~metered.http.wire`), and
the one mapping of errors to HTTP (:mod:`~metered.http.errors`)."""
