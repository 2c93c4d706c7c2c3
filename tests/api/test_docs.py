"""The OpenAPI document and docs/api.md describe every REST endpoint the app serves."""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from api.admin import routes as admin_routes
from api.health import routes as health_routes
from api.ratings import routes as rating_routes
from api.routes import routes as video_call_routes

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _served() -> set[tuple[str, str]]:
    """The routes of this package's route tables (other packages document their own)."""
    routes = set()
    for table in (video_call_routes, admin_routes, health_routes, rating_routes):
        for definition in table:
            assert isinstance(definition, web.RouteDef)
            routes.add((definition.method.lower(), definition.path))
    return routes


def _documented() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    path = None
    for line in (DOCS / "openapi.yaml").read_text().splitlines():
        if m := re.fullmatch(r"  (/\S+):", line):
            path = m.group(1)
        elif path and (m := re.fullmatch(r"    (get|post|patch|put|delete):", line)):
            found.add((m.group(1), path))
    return found


def test_openapi_matches_routes() -> None:
    served = _served()
    assert len(served) == 16
    assert served - _documented() == set()
    api_md = (DOCS / "api.md").read_text()
    for method, path in served:
        assert f"| {method.upper()} | `{path}`" in api_md, (method, path)
