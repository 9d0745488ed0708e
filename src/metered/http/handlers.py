"""Exception handlers for apps: every :class:`~metered.errors.MeteredError` a handler lets
through (a caller over budget, a model the lists deny) answered as the gateway routes
answer it, JSON in OpenAI's error shape with ``Retry-After`` on budgets, never a 500::

    app = FastAPI()
    add_exception_handlers(app)   # Starlette/FastAPI, or a Flask app

The middlewares already do this for the requests they see (``MeteredMiddleware`` for any
ASGI app; ``MeteredWSGIMiddleware`` registers these handlers on the Flask app it wraps,
since Flask turns a view's exception into its own 500 before a WSGI middleware sees it).
Use this function for an app metered without them.

A refusal can only become a 402/400 before the response starts. In a streaming handler,
make the metered call (``create(..., stream=True)``) in the handler itself and pass the
stream to the streaming response: a refusal raised inside the response's generator comes
after the 200 has gone out.
"""

from __future__ import annotations

from typing import Any

from metered.errors import MeteredError
from metered.http.errors import error_parts

__all__ = ["add_exception_handlers", "is_flask_app"]


def add_exception_handlers(app: Any) -> None:
    """Answer :class:`~metered.errors.MeteredError` as JSON in ``app``.

    Args:
        app: a Starlette or FastAPI app (``add_exception_handler``) or a Flask app
            (``register_error_handler``).

    Raises:
        TypeError: ``app`` is neither.
    """
    if callable(getattr(app, "add_exception_handler", None)):
        app.add_exception_handler(MeteredError, _starlette_handler)
    elif is_flask_app(app):
        app.register_error_handler(MeteredError, _flask_handler)
    else:
        raise TypeError(f"cannot add exception handlers to {type(app).__name__}")


def is_flask_app(app: object) -> bool:
    """Whether ``app`` registers error handlers the way Flask does."""
    return callable(getattr(app, "register_error_handler", None))


async def _starlette_handler(request: Any, exc: Exception) -> Any:
    # Starlette is an optional dependency: imported only by apps built on it
    from starlette.responses import Response

    assert isinstance(exc, MeteredError)
    status, headers, body = error_parts(exc)
    return Response(body, status_code=status, headers=dict(headers))


def _flask_handler(exc: Exception) -> tuple[bytes, int, list[tuple[str, str]]]:
    assert isinstance(exc, MeteredError)
    status, headers, body = error_parts(exc)
    return body, status, headers
