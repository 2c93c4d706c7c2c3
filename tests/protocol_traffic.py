"""Every signaling frame of the tests, checked against `docs/signaling.schema.json`.

`check_traffic` (an autouse fixture of tests/conftest.py) watches the in-process server: each
text frame it sends must match `$defs/server.<event>`; each client frame it handles must match
`$defs/client.<event>` when the server accepted it, and must not when the server refused its
shape (`INVALID_MESSAGE`, `UNKNOWN_EVENT`, `VALIDATION_ERROR` of a field). A mismatch fails the
test that produced it, so the protocol, the schema and (through tests/signaling/test_schema.py)
docs/signaling.md cannot drift apart.
"""

from __future__ import annotations

import json
import weakref
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
from aiohttp import web

from calls.client_json import ClientJsonError, load_client_json
from signaling.connection import SignalingConnection

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "docs" / "signaling.schema.json"


@cache
def schema() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
    return loaded


def _is_integer(_checker: Any, instance: object) -> bool:
    # The server takes only integers written without a fraction (JSON Schema's "integer" also
    # admits 1.0): the schema's description says so.
    return isinstance(instance, int) and not isinstance(instance, bool)


Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine("integer", _is_integer),
)


@cache
def validator(name: str) -> Any:
    """A validator for `$defs/<name>` (e.g. "server.offer"), or None if there is none."""
    whole = schema()
    if name not in whole["$defs"]:
        return None
    return Validator({"$defs": whole["$defs"], "$ref": f"#/$defs/{name}"})


def problems(side: str, message: object) -> list[str]:
    """Why `message` (parsed JSON) is not a valid `side` ("client"/"server") message."""
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        return ["not an {event, data} object"]
    check = validator(f"{side}.{message['event']}")
    if check is None:
        return [f"no schema for the {side} event {message['event']!r}"]
    return [
        f"{'/'.join(map(str, error.absolute_path)) or '(message)'}: {error.message}"
        for error in check.iter_errors(message)
    ]


# Refusals of a message's shape: the schema must refuse the message too. (Other refusals, such
# as NOT_IN_ROOM or a candidate line's grammar — VALIDATION_ERROR with a `reason` — are about
# state or content the schema does not describe.)
SHAPE_REFUSALS = ("INVALID_MESSAGE", "UNKNOWN_EVENT")


def refused_shape(error: dict[str, Any]) -> bool:
    code, details = error.get("code"), error.get("details", {})
    if code in SHAPE_REFUSALS:
        return True
    return code == "VALIDATION_ERROR" and "field" in details and "reason" not in details


@dataclass
class Traffic:
    """What the in-process servers sent and handled during one test."""

    sent: int = 0
    handled: int = 0
    mismatches: list[str] = field(default_factory=list)

    def server_frame(self, text: str) -> None:
        self.sent += 1
        try:
            message = json.loads(text)
        except ValueError:
            self.mismatches.append(f"server sent a frame that is not JSON: {text[:200]!r}")
            return
        for problem in problems("server", message):
            self.mismatches.append(f"server {message.get('event')!r}: {problem}; {text[:300]}")

    def client_frame(self, text: str, refusal: dict[str, Any] | None) -> None:
        self.handled += 1
        try:
            message = load_client_json(text)
        except ClientJsonError:
            return  # not JSON: no schema decides that (the server refuses it, INVALID_MESSAGE)
        found = problems("client", message)
        if refusal is None and found:
            self.mismatches.append(
                f"the server accepted a client message the schema refuses ({found}): {text[:300]}"
            )
        elif refusal is not None and refused_shape(refusal) and not found:
            self.mismatches.append(
                f"the server refused a client message the schema accepts "
                f"({refusal['code']}: {refusal['message']}): {text[:300]}"
            )


def watch(monkeypatch: Any) -> Traffic:
    """Patch the server's send path and client-message handler to check every frame."""
    traffic = Traffic()
    signaling_sockets: weakref.WeakSet[web.WebSocketResponse] = weakref.WeakSet()
    init = SignalingConnection.__init__
    send_str = web.WebSocketResponse.send_str  # send_json goes through it too

    def recorded_init(self: SignalingConnection, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        signaling_sockets.add(self.ws)

    async def checked_send_str(
        self: web.WebSocketResponse, data: str, compress: int | None = None
    ) -> None:
        if self in signaling_sockets:  # not another handler's socket (a test's own)
            traffic.server_frame(data)
        await send_str(self, data, compress=compress)

    handle_text = SignalingConnection._handle_text
    refuse = SignalingConnection._refuse

    async def checked_handle_text(self: SignalingConnection, text: str) -> None:
        if self._bridge is not None:  # copied unparsed: the call's node checks it
            await handle_text(self, text)
            return
        refusals: list[dict[str, Any]] = []
        self._protocol_refusals = refusals  # type: ignore[attr-defined]
        try:
            await handle_text(self, text)
        finally:
            del self._protocol_refusals  # type: ignore[attr-defined]
        traffic.client_frame(text, refusals[0] if refusals else None)

    async def recorded_refuse(self: SignalingConnection, exc: Any) -> None:
        refusals = getattr(self, "_protocol_refusals", None)
        if refusals is not None:
            refusals.append({"code": exc.code, "message": exc.message, "details": exc.details})
        await refuse(self, exc)

    monkeypatch.setattr(SignalingConnection, "__init__", recorded_init)
    monkeypatch.setattr(web.WebSocketResponse, "send_str", checked_send_str)
    monkeypatch.setattr(SignalingConnection, "_handle_text", checked_handle_text)
    monkeypatch.setattr(SignalingConnection, "_refuse", recorded_refuse)
    return traffic
