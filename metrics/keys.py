"""Application keys owned by the metrics package (kept out of `smiling_relay.appkeys` on purpose:
the rest of the service only ever talks to metrics through the verb functions in `metrics.hooks`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from metrics.setup import Metrics

METRICS_KEY: web.AppKey[Metrics] = web.AppKey("smiling_relay.metrics")
