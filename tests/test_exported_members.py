"""The public API: ``metered.__all__`` is sorted, complete and importable."""

from __future__ import annotations

import subprocess
import sys

import pytest

import metered


def test_all_is_sorted() -> None:
    """__all__ is kept sorted so additions are reviewed in one place."""
    assert metered.__all__ == sorted(metered.__all__)


def test_every_exported_name_resolves() -> None:
    """Each name in __all__ is an attribute of the package (lazy ones load on access)."""
    for name in metered.__all__:
        assert getattr(metered, name) is not None, name


#: Raised and answered by the HTTP doors themselves: importable from metered.errors, not
#: exported from the package (no user code catches them).
HTTP_ONLY = {
    "DuplicateKey",
    "NotFound",
    "RequestTooLarge",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamTimeout",
}


def test_http_door_errors_are_not_exported() -> None:
    """What only the HTTP doors raise and answer stays out of the top-level API."""
    assert not HTTP_ONLY & set(metered.__all__)


def test_public_classes_are_exported() -> None:
    """Every public class of the modules the README shows is reachable from ``metered``."""
    from metered import clients, errors
    from metered.engine import meter
    from metered.http import asgi, wsgi

    expected = {
        *errors.__all__,
        "Meter",
        "Call",
        *[n for n in clients.__all__ if n.startswith("Metered")],
        "MeteredMiddleware",
        "MeteredWSGIMiddleware",
    } - {"http_error", *HTTP_ONLY}
    assert expected <= set(metered.__all__)
    assert meter.Meter is metered.Meter
    assert asgi.MeteredMiddleware is metered.MeteredMiddleware
    assert wsgi.MeteredWSGIMiddleware is metered.MeteredWSGIMiddleware


def test_unknown_attribute_raises_attribute_error() -> None:
    """A typo is an AttributeError, not a silent None."""
    with pytest.raises(AttributeError, match="MeteredOpenAi"):
        metered.MeteredOpenAi  # type: ignore[attr-defined]  # noqa: B018


def test_import_is_cheap() -> None:
    """``import metered`` loads neither the SDKs, tiktoken, pydantic nor the engine."""
    code = (
        "import sys, metered; "
        "heavy = [m for m in ('openai', 'anthropic', 'tiktoken', 'pydantic', "
        "'metered.engine.meter', 'genai_prices', 'starlette') if m in sys.modules]; "
        "print(','.join(heavy))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""
