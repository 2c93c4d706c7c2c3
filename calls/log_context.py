"""Correlation ids for log lines: the HTTP request, the WebSocket connection, the call.

Both faces set them (`api` the request id, `signaling` the connection and call ids) in the task
that handles the request; every log line written in that task (and in tasks it starts) carries
them, through the logging filter the composition root installs (`smiling_relay.logs`). Plain
`contextvars`, so this module imports nothing but the standard library.
"""

from __future__ import annotations

from contextvars import ContextVar

REQUEST_ID: ContextVar[str | None] = ContextVar("request_id", default=None)
CONNECTION_ID: ContextVar[str | None] = ContextVar("connection_id", default=None)
CALL_ID: ContextVar[str | None] = ContextVar("call_id", default=None)

# (record attribute, its variable): the fields `smiling_relay.logs` adds to every line.
FIELDS = (("request_id", REQUEST_ID), ("connection_id", CONNECTION_ID), ("call_id", CALL_ID))
