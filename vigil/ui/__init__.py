"""The operators' web view on the worker's own web server: keys, a live chart per key, alerts
and silences, models. Pages are static HTML + JS from ``static/`` (uPlot vendored: no CDN, works
offline) that read the JSON API of :mod:`vigil.ui.api`; docs/ui.md describes both."""

from __future__ import annotations

from vigil.ui.pages import add_ui

__all__ = ["add_ui"]
