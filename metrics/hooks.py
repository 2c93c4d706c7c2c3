"""The verbs the rest of the service calls; they keep Prometheus out of every other package.

Each takes the aiohttp application (or a request: its `config_dict` is used, so sub-apps work)
and is a no-op when metrics are not set up on that app (unit tests of other packages).

    count_ws_message(app, event, "in")   # the /ws handler, once per parsed client message
    count_ws_message(app, event, "out")  # the /ws sender, once per message sent to a client
    count_error(app, code, "ws")         # whenever an `error` event is sent over the WebSocket

REST errors are counted by the metrics middleware from the envelope; do not count them again.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from metrics.keys import METRICS_KEY

if TYPE_CHECKING:
    from metrics.setup import Metrics

log = logging.getLogger(__name__)


def _metrics(target: web.Application | web.Request) -> Metrics | None:
    if isinstance(target, web.Request):
        return target.config_dict.get(METRICS_KEY)
    return target.get(METRICS_KEY)


def count_ws_message(target: web.Application | web.Request, event: str, direction: str) -> None:
    """One signaling message: `direction` "in" (client → server) or "out" (server → client).

    Unknown client event names are recorded as `unknown`, so clients cannot mint label values.
    """
    metrics = _metrics(target)
    if metrics is not None:
        metrics.instruments.count_ws_message(event, direction)


def count_error(target: web.Application | web.Request, code: str, source: str = "ws") -> None:
    """One error reported to a client (`source` "ws", "api" or "relay"); feeds both
    `smiling_relay_errors_total` and the hourly/daily `errorCounts`."""
    metrics = _metrics(target)
    if metrics is not None:
        metrics.count_error(code, source)
