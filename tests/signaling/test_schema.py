"""docs/signaling.schema.json, signaling/protocol.py and docs/signaling.md name the same events,
codes and close codes; the traffic checker of every test (tests/protocol_traffic.py) is live."""

from __future__ import annotations

import re
from pathlib import Path

import jsonschema

from signaling import bridge, connection, setup
from signaling.protocol import CLIENT_EVENTS, SERVER_EVENTS
from storage.base import Storage
from tests.helpers import BookingFactory
from tests.protocol_traffic import SCHEMA_PATH, Traffic, problems, schema
from tests.relay.helpers import open_room
from tests.signaling.helpers import Client, join, ping

SIGNALING_MD = Path(__file__).resolve().parents[2] / "docs" / "signaling.md"


def section(title: str) -> str:
    """The text of the docs/signaling.md section with this heading, up to the next heading."""
    text = SIGNALING_MD.read_text()
    start = text.index(f"\n{title}\n")
    following = re.search(r"\n#{2,3} ", text[start + len(title) + 2 :])
    end = start + len(title) + 2 + following.start() if following else len(text)
    return text[start:end]


def table_events(title: str) -> list[str]:
    return re.findall(r"^\| `([a-z0-9-]+)` \|", section(title), flags=re.MULTILINE)


def schema_events(side: str) -> set[str]:
    return {name.split(".", 1)[1] for name in schema()["$defs"] if name.startswith(f"{side}.")}


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    jsonschema.Draft202012Validator.check_schema(schema())
    assert schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert SCHEMA_PATH.name == "signaling.schema.json"


def test_every_event_has_a_schema_and_every_schema_an_event() -> None:
    assert schema_events("client") == set(CLIENT_EVENTS)
    assert schema_events("server") == set(SERVER_EVENTS)


def test_the_documents_event_tables_list_exactly_the_protocols_events() -> None:
    assert table_events("## Client → server") == list(CLIENT_EVENTS)
    assert table_events("## Server → client") == list(SERVER_EVENTS)


def test_the_documented_error_codes_are_the_schemas() -> None:
    documented = set(re.findall(r"`([A-Z][A-Z_]+)`", section("### Error codes")))
    assert documented == set(schema()["$defs"]["errorCode"]["enum"])


def test_the_documented_close_codes_are_the_servers() -> None:
    documented = {int(c) for c in re.findall(r"^\| (\d{4}) \|", section("### Close codes"), re.M)}
    used = {
        connection.CLOSE_ENDED,
        connection.CLOSE_UNAUTHENTICATED,
        connection.CLOSE_REPLACED,
        connection.CLOSE_RATE_LIMITED,
        connection.CLOSE_POLICY_VIOLATION,
        bridge.CLOSE_HOLDER_LOST,
        1001,  # setup.close_connections
        1009,  # aiohttp, over setup's max_msg_size
    }
    assert documented == used
    assert setup.MAX_MESSAGE_BYTES == 64 * 1024


def test_the_checker_refuses_what_is_off_the_schema() -> None:
    """Not vacuous: a wrong field, a missing one, an extra one and an unknown event are caught."""
    good = {"event": "room-left", "data": {"roomId": "room-1"}}
    assert problems("server", good) == []
    assert problems("server", {"event": "room-left", "data": {"roomId": 7}})
    assert problems("server", {"event": "room-left", "data": {}})
    assert problems("server", {"event": "room-left", "data": {"roomId": "r", "extra": 1}})
    assert problems("server", {"event": "ice-candidate", "data": {}})  # the relay never trickles
    assert problems("server", {"event": "error", "data": {"code": "NOPE", "message": "x"}})
    negotiation = {"code": "NEGOTIATION_FAILED", "message": "m", "details": {}}
    assert problems("server", {"event": "error", "data": negotiation})  # `reason` is required
    traffic = Traffic()
    traffic.server_frame('{"event": "pong", "data": {"late": true}}')
    traffic.client_frame('{"event": "ping", "data": 3}', None)  # accepted, but off the schema
    refusal = {"code": "VALIDATION_ERROR", "message": "m", "details": {"field": "roomId"}}
    traffic.client_frame('{"event": "join-room", "data": {"roomId": "r"}}', refusal)
    assert len(traffic.mismatches) == 3, traffic.mismatches


async def test_real_traffic_is_checked(
    client: Client,
    booking_factory: BookingFactory,
    storage: Storage,
    signaling_traffic: Traffic,
) -> None:
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    ws = await join(client, booking.client_token, room_id)
    await ping(ws)
    await ws.send_json({"event": "join-room", "data": {"roomId": 5}})  # refused: its shape
    assert (await ws.receive_json(timeout=5))["data"]["code"] == "VALIDATION_ERROR"
    await ws.close()
    assert signaling_traffic.sent == 4  # authenticated, room-joined, pong, error
    assert signaling_traffic.handled == 3
    assert signaling_traffic.mismatches == []
