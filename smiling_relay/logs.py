"""Logging set-up: JSON lines or text, each line with its correlation ids.

`configure_logging` installs one handler on the root logger with `ContextFilter`, which copies
the request, connection and call ids (`calls.log_context`) onto every record that does not carry
them already (the relay passes its call id with `extra=`, since it knows no faces). `LOG_FORMAT`
picks `JsonFormatter` (one object per line: production's default, for log shippers) or a text
format that appends the ids as `key=value`.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from calls.log_context import FIELDS

_OURS = "_smiling_relay_handler"
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(context)s"
# LogRecord's own attributes: everything else on a record came from `extra=` and is logged.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "context"}


class ContextFilter(logging.Filter):
    """Adds `request_id`, `connection_id`, `call_id` (None when unknown) and `context`."""

    def filter(self, record: logging.LogRecord) -> bool:
        parts = []
        for name, var in FIELDS:
            value = getattr(record, name, None) or var.get()
            setattr(record, name, value)
            if value:
                parts.append(f"{name}={value}")
        record.context = f" [{' '.join(parts)}]" if parts else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, the ids, any `extra=` fields."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and value is not None:
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def make_handler(log_format: str, stream: Any = None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.addFilter(ContextFilter())
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    return handler


def configure_logging(level: int, log_format: str = "text") -> None:
    """Install the root logger's handler of `log_format` ("json" or "text"), replacing the one
    an earlier call installed (handlers others added, e.g. a test runner's, are left alone)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _OURS, False)]:
        root.removeHandler(old)
    handler = make_handler(log_format)
    setattr(handler, _OURS, True)
    root.addHandler(handler)
    root.setLevel(level)
