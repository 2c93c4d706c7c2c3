"""`NodeStatus` as JSON text, for the backends that store text (SQLite, Redis).

Decoding ignores fields it does not know, so a fleet in the middle of a rolling deploy (a newer
node announcing a field this one lacks) still reads every heartbeat.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from cluster.state import NodeStatus

_FIELDS = frozenset(f.name for f in dataclasses.fields(NodeStatus))


def encode_status(status: NodeStatus) -> str:
    return json.dumps(dataclasses.asdict(status), separators=(",", ":"))


def decode_status(text: str | bytes) -> NodeStatus:
    raw: dict[str, Any] = json.loads(text)
    known = {name: value for name, value in raw.items() if name in _FIELDS}
    known["rooms"] = tuple(known.get("rooms", ()))
    return NodeStatus(**known)
