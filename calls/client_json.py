"""JSON from clients, as the REST API and the WebSocket read it.

`json.loads` alone accepts two things that later fail far from the input: nesting deep enough to
exhaust the interpreter's recursion limit (a `RecursionError` in whatever walks the value), and
`\\ud800`-style escapes that decode to lone surrogates, which no UTF-8 store (SQLite, MongoDB) can
encode. Both are refused here, at the door, as invalid JSON.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32  # the deepest legitimate message (an ICE candidate inside `data`) has depth 3


class ClientJsonError(ValueError):
    """The text is not JSON this service accepts; the message says why."""


def load_client_json(text: str | bytes) -> Any:
    try:
        value = json.loads(text)
    except RecursionError:
        raise ClientJsonError(f"nested deeper than {MAX_DEPTH} levels") from None
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError is a ValueError
        raise ClientJsonError(str(exc)) from None
    _check(value, 0)
    return value


def _check(value: Any, depth: int) -> None:
    if isinstance(value, str):
        _check_text(value)
    elif isinstance(value, dict | list):
        if depth >= MAX_DEPTH:
            raise ClientJsonError(f"nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for key, item in value.items():
                _check_text(key)
                _check(item, depth + 1)
        else:
            for item in value:
                _check(item, depth + 1)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ClientJsonError("strings must be valid Unicode (no lone surrogates)") from None
