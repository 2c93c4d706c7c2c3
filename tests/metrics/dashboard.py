"""Reading the Grafana dashboard's PromQL the way Grafana would send it."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "smiling-relay.json"
METRIC_NAME = re.compile(r"\bsmiling_relay_[a-z0-9_]+")


@dataclass(frozen=True)
class Query:
    panel: str
    ref_id: str
    expr: str

    @property
    def per_call(self) -> bool:
        return "$call" in self.expr

    def render(self, call: str, rate_interval: str = "5s") -> str:
        """The expression with Grafana's variables substituted."""
        return self.expr.replace("$__rate_interval", rate_interval).replace("$call", call)


def load() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text())
    assert isinstance(data, dict)
    return data


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", ())  # collapsed rows keep their panels inside


def queries(dashboard: dict[str, Any] | None = None) -> list[Query]:
    dashboard = dashboard or load()
    return [
        Query(panel["title"], target["refId"], target["expr"])
        for panel in panels(dashboard)
        for target in panel.get("targets", ())
    ]
