"""The wire format of `/ws` (docs/signaling.md): client messages parsed and validated, and every
server message's JSON built here (the media core has no wire format of its own)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from calls.client_json import ClientJsonError, load_client_json
from calls.service import CallEnded
from relay.participant import MediaState, Participant, TrackInfo
from relay.reasons import LeaveReason

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 64 * 1024
MAX_SDP_CHARS = 32 * 1024
MAX_ROOM_ID_CHARS = 128
TARGETS = ("publisher", "subscriber")

CLIENT_EVENTS = (
    "authenticate",
    "join-room",
    "offer",
    "answer",
    "ice-candidate",
    "media-state",
    "leave-room",
    "ping",
    "e2ee-key",
)
# The relay never trickles: aiortc gathers its candidates before it makes a description, so
# every candidate of the relay is in its offers and answers (there is no server `ice-candidate`).
SERVER_EVENTS = (
    "authenticated",
    "room-joined",
    "user-joined",
    "user-reconnecting",
    "user-left",
    "offer",
    "answer",
    "tracks",
    "media-state",
    "video-paused",
    "video-resumed",
    "room-left",
    "call-ended",
    "pong",
    "e2ee-key",
    "error",
)


class ProtocolError(Exception):
    """A message the server refuses; answered with an `error` event."""

    def __init__(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details or {}


@dataclass(frozen=True)
class Message:
    event: str
    data: dict[str, Any]


def parse_message(text: str) -> Message:
    if len(text) > MAX_MESSAGE_BYTES:
        raise ProtocolError("INVALID_MESSAGE", f"messages are limited to {MAX_MESSAGE_BYTES} bytes")
    try:
        raw = load_client_json(text)
    except ClientJsonError as exc:
        raise ProtocolError("INVALID_MESSAGE", f"not valid JSON: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("event"), str):
        raise ProtocolError("INVALID_MESSAGE", 'expected {"event": string, "data": object}')
    event = raw["event"]
    data = raw.get("data", {})
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ProtocolError("INVALID_MESSAGE", "`data` must be an object", {"event": event})
    if event not in CLIENT_EVENTS:
        raise ProtocolError("UNKNOWN_EVENT", f"unknown event {event!r}", {"event": event})
    return Message(event, data)


def _invalid(event: str, field: str, problem: str) -> ProtocolError:
    return ProtocolError(
        "VALIDATION_ERROR",
        f"{event}: `{field}` {problem}",
        {"event": event, "field": field},
    )


def require_str(data: dict[str, Any], event: str, field: str, max_chars: int) -> str:
    value = data.get(field)
    if not isinstance(value, str) or not value.strip():
        raise _invalid(event, field, "must be a non-empty string")
    if len(value) > max_chars:
        raise _invalid(event, field, f"must be at most {max_chars} characters")
    return value


def require_target(data: dict[str, Any], event: str, default: str | None = None) -> str:
    target = data.get("target", default)
    if target not in TARGETS:
        raise _invalid(event, "target", "must be 'publisher' or 'subscriber'")
    return str(target)


def session_description(data: dict[str, Any], event: str, field: str, kind: str) -> str:
    """The SDP of `{field: {type, sdp}}`; also accepts a bare SDP string."""
    value = data.get(field)
    if isinstance(value, str):
        sdp = value
    elif isinstance(value, dict):
        if value.get("type", kind) != kind:
            raise _invalid(event, f"{field}.type", f"must be {kind!r}")
        sdp = value.get("sdp")  # type: ignore[assignment]
    else:
        raise _invalid(event, field, "must be an RTCSessionDescription {type, sdp}")
    if not isinstance(sdp, str) or not sdp.startswith("v=0"):
        raise _invalid(event, f"{field}.sdp", "must be an SDP text starting with v=0")
    if len(sdp) > MAX_SDP_CHARS:
        raise _invalid(event, f"{field}.sdp", f"must be at most {MAX_SDP_CHARS} characters")
    return sdp


def ice_candidate(data: dict[str, Any]) -> dict[str, Any] | None:
    candidate = data.get("candidate")
    if candidate is None:
        return None
    if not isinstance(candidate, dict):
        raise _invalid("ice-candidate", "candidate", "must be an RTCIceCandidate object or null")
    text = candidate.get("candidate")
    if text in (None, ""):
        return None
    if not isinstance(text, str) or len(text) > 1024:
        raise _invalid("ice-candidate", "candidate.candidate", "must be a candidate line")
    mid = candidate.get("sdpMid")
    index = candidate.get("sdpMLineIndex")
    if mid is not None and not isinstance(mid, str):
        raise _invalid("ice-candidate", "candidate.sdpMid", "must be a string")
    if index is not None and (not isinstance(index, int) or isinstance(index, bool) or index < 0):
        raise _invalid("ice-candidate", "candidate.sdpMLineIndex", "must be a non-negative integer")
    return {"candidate": text, "sdpMid": mid, "sdpMLineIndex": index}


def media_state(data: dict[str, Any]) -> tuple[bool, bool, bool]:
    values = []
    for field in ("audio", "video", "screen"):
        value = data.get(field, field != "screen")
        if not isinstance(value, bool):
            raise _invalid("media-state", field, "must be true or false")
        values.append(value)
    return values[0], values[1], values[2]


# An `e2ee-key` (docs/e2ee.md) is the browsers' key exchange: public keys and media keys wrapped
# for each recipient. The server cannot read it; it checks the shape and size and forwards it.
E2EE_MAX_WRAPPED = 16
E2EE_MAX_KEY_CHARS = 200  # base64 of a 65-byte P-256 point or of IV + 32-byte key + tag


def e2ee_key(data: dict[str, Any]) -> dict[str, Any]:
    """The forwarded part of an `e2ee-key`: {capable, publicKey?, keyId?, wrapped?}."""
    event = "e2ee-key"
    capable = data.get("capable")
    if not isinstance(capable, bool):
        raise _invalid(event, "capable", "must be true or false")
    if not capable:
        return {"capable": False}
    public_key = require_str(data, event, "publicKey", E2EE_MAX_KEY_CHARS)
    key_id = data.get("keyId")
    if not isinstance(key_id, int) or isinstance(key_id, bool) or not 0 <= key_id <= 255:
        raise _invalid(event, "keyId", "must be an integer 0-255")
    wrapped = data.get("wrapped", {})
    if not isinstance(wrapped, dict) or len(wrapped) > E2EE_MAX_WRAPPED:
        raise _invalid(event, "wrapped", f"must be an object of at most {E2EE_MAX_WRAPPED} keys")
    for socket_id, value in wrapped.items():
        if len(socket_id) > MAX_ROOM_ID_CHARS or not isinstance(value, str):
            raise _invalid(event, "wrapped", "must map socket ids to strings")
        if not value or len(value) > E2EE_MAX_KEY_CHARS:
            raise _invalid(event, "wrapped", f"values must be 1-{E2EE_MAX_KEY_CHARS} characters")
    return {"capable": True, "publicKey": public_key, "keyId": key_id, "wrapped": wrapped}


# -- server messages ----------------------------------------------------------------------------

# A participant the relay removed is told why with an `error` event: (code, message).
CLOSED_BY_RELAY = {
    LeaveReason.REPLACED: ("REPLACED", "this call was opened again somewhere else"),
    LeaveReason.ICE_FAILED: (
        "CONNECTION_FAILED",
        "the media connection to the relay failed; join again",
    ),
}
CLOSED_BY_RELAY_DEFAULT = ("CALL_ENDED", "the relay ended the call")


def iso_timestamp(wall: float) -> str:
    """ISO 8601 UTC with milliseconds and `Z`, as the REST API's times (docs/api.md)."""
    stamp = datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def track_json(track: TrackInfo) -> dict[str, Any]:
    return {
        "mid": track.mid,
        "kind": track.kind,
        "socketId": track.socket_id,
        "userId": track.user_id,
    }


def media_state_json(media: MediaState) -> dict[str, bool]:
    return {"audio": media.audio, "video": media.video, "screen": media.screen}


def participant_json(participant: Participant) -> dict[str, Any]:
    info = participant.info
    return {
        "socketId": info.socket_id,
        "userId": info.user_id,
        "userName": info.user_name,
        "userRole": info.role,
        "joinedAt": iso_timestamp(participant.joined_at_wall),
        "media": media_state_json(participant.media),
    }


def video_changed_json(subject: Participant, direction: str, reason: str) -> dict[str, Any]:
    """`video-paused` / `video-resumed` (audio first): whose link, which way, why."""
    return {
        "socketId": subject.socket_id,
        "userId": subject.info.user_id,
        "direction": direction,
        "reason": reason,
    }


def outbound(event: str, data: dict[str, Any]) -> dict[str, Any]:
    return {"event": event, "data": data}


def call_ended_json(room_id: str | None, ended: CallEnded | None) -> dict[str, Any]:
    """`call-ended`: who ended the call (a user and their role, or the server) and its length."""
    if ended is None:  # the relay closed the room for a call it was not told about
        return {"roomId": room_id, "sessionId": None, "endedBy": None, "durationMinutes": None}
    return {
        "roomId": ended.room_id or room_id,
        "sessionId": ended.session_id,
        "endedBy": {"userId": ended.ended_by_user_id, "role": ended.ended_by_role},
        "durationMinutes": ended.duration_minutes,
    }


def error_event(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    return outbound("error", {"code": code, "message": message, "details": details or {}})
