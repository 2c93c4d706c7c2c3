"""The application key the metrics package reads (`/metrics`, the request middleware); only
`metrics.setup.setup_metrics` sets it. Other layers never read it: the composition root hands the
`Metrics` object to them through the protocols they define (`SignalingObserver`, `QualityReader`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from metrics.setup import Metrics

METRICS_KEY: web.AppKey[Metrics] = web.AppKey("smiling_relay.metrics")
