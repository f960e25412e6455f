"""The operator's view: Prometheus metrics, a REST API and a live web dashboard.

Enabled by ``mqtt-anomaly detect --http [HOST:]PORT`` (``[http] listen``); served by the
detector service itself, in its event loop. See ``docs/operations.md``.

The web framework is imported only when the server is used: importing the settings (as the
configuration does) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .settings import HttpSettings, parse_listen

if TYPE_CHECKING:
    from .app import create_app, http_server, serve_http

__all__ = ["HttpSettings", "create_app", "http_server", "parse_listen", "serve_http"]


def __getattr__(name: str) -> Any:
    if name in ("create_app", "http_server", "serve_http"):
        from . import app

        return getattr(app, name)
    raise AttributeError(name)
