"""One WebSocket client: authentication, the join policy, and the relay's messages to it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from datetime import datetime
from typing import Any

from aiohttp import WSMsgType, web

from api.access import evaluate_access
from api.audit import client_address, record_access, user_agent
from calls.identity import AuthError, Identity, decode_token
from metrics.hooks import count_error, count_ws_message
from relay.negotiation import NegotiationError
from relay.participant import Participant, ParticipantInfo, TrackInfo
from relay.reasons import LeaveReason
from relay.room import Room, RoomClosed, RoomFull
from relay.sfu import Relay
from signaling import protocol
from signaling.protocol import Message, ProtocolError
from smiling_relay.appkeys import CONFIG_KEY, STORAGE_KEY, WS_RATE_LIMITER_KEY

logger = logging.getLogger(__name__)

AUTHENTICATE_TIMEOUT = 10.0
MAX_ERRORS = 20
CLOSE_POLICY_VIOLATION = 1008
CLOSE_UNAUTHENTICATED = 4401
CLOSE_RATE_LIMITED = 4429
CLOSE_REPLACED = 4409
CLOSE_ENDED = 4000
ROLE_NAMES = {"client": "Client", "psychologist": "Psychologist", "admin": "Admin"}


class SignalingConnection:
    """Implements the relay's `ParticipantListener` by sending events down the socket."""

    def __init__(self, request: web.Request, ws: web.WebSocketResponse, relay: Relay) -> None:
        self.request = request
        self.ws = ws
        self.relay = relay
        self.socket_id = uuid.uuid4().hex
        self.identity: Identity | None = None
        self.room: Room | None = None
        self.participant: Participant | None = None
        self._errors = 0
        self._outbox: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, token: str | None) -> None:
        self._writer = asyncio.create_task(self._write_loop())
        try:
            if token is not None:
                authenticated = await self._authenticate(token)
            else:
                authenticated = await self._await_authenticate_message()
            if authenticated:
                await self._read_loop()
        finally:
            # The writer is told to stop first: aiohttp may cancel this handler when the client
            # vanishes, and nothing after the cancellation point would run.
            self._outbox.put_nowait(None)
            # shielded: leaving the room must complete even if this handler is cancelled
            await asyncio.shield(self._leave(LeaveReason.DISCONNECTED))
            with contextlib.suppress(Exception):
                await self._writer

    async def _await_authenticate_message(self) -> bool:
        try:
            raw = await self.ws.receive(timeout=AUTHENTICATE_TIMEOUT)
        except TimeoutError:
            self._send_error("AUTHENTICATION_FAILED", "no authenticate message within 10 s")
            await self._close(CLOSE_UNAUTHENTICATED)
            return False
        if raw.type != WSMsgType.TEXT:
            return False
        try:
            message = protocol.parse_message(raw.data)
            if message.event != "authenticate":
                raise ProtocolError("AUTHENTICATION_FAILED", "authenticate first")
            token = protocol.require_str(message.data, "authenticate", "token", 8192)
        except ProtocolError as exc:
            self._send_error("AUTHENTICATION_FAILED", exc.message)
            await self._close(CLOSE_UNAUTHENTICATED)
            return False
        return await self._authenticate(token)

    async def _authenticate(self, token: str) -> bool:
        config = self.request.app[CONFIG_KEY]
        try:
            identity = decode_token(token, config.jwt_secret, now=config.clock())
        except AuthError as exc:
            self._send_error("AUTHENTICATION_FAILED", exc.message, {"reason": exc.reason})
            await self._close(CLOSE_UNAUTHENTICATED)
            return False
        limit = self.request.app[WS_RATE_LIMITER_KEY].hit(f"user:{identity.user_id}")
        if not limit.allowed:
            self._send_error(
                "RATE_LIMITED",
                f"at most {limit.limit} connections per minute",
                {"retryAfter": limit.retry_after},
            )
            await self._close(CLOSE_RATE_LIMITED)
            return False
        self.identity = identity
        self._send(
            "authenticated",
            {
                "userId": identity.user_id,
                "role": identity.role,
                "socketId": self.socket_id,
                "protocolVersion": protocol.PROTOCOL_VERSION,
            },
        )
        return True

    async def _read_loop(self) -> None:
        async for raw in self.ws:
            if raw.type == WSMsgType.TEXT:
                await self._handle_text(raw.data)
            elif raw.type == WSMsgType.BINARY:
                await self._refuse(ProtocolError("INVALID_MESSAGE", "binary frames are not used"))
            elif raw.type == WSMsgType.ERROR:
                break
            if self.ws.closed:
                break

    async def _handle_text(self, text: str) -> None:
        try:
            message = protocol.parse_message(text)
            count_ws_message(self.request.app, message.event, "in")
            await self._dispatch(message)
        except ProtocolError as exc:
            await self._refuse(exc)
        except NegotiationError as exc:
            await self._refuse(ProtocolError("NEGOTIATION_FAILED", str(exc)))
        except Exception:
            logger.exception("signaling message failed on %s", self.socket_id)
            await self._refuse(ProtocolError("INTERNAL_ERROR", "the server could not handle that"))

    async def _refuse(self, exc: ProtocolError) -> None:
        self._send_error(exc.code, exc.message, exc.details)
        self._errors += 1
        if self._errors > MAX_ERRORS:
            await self._close(CLOSE_POLICY_VIOLATION)

    # -- events -------------------------------------------------------------------------------

    async def _dispatch(self, message: Message) -> None:
        event, data = message.event, message.data
        if event == "ping":
            self._send("pong", {})
        elif event == "authenticate":
            raise ProtocolError("VALIDATION_ERROR", "this connection is already authenticated")
        elif event == "join-room":
            await self._join(
                protocol.require_str(data, event, "roomId", protocol.MAX_ROOM_ID_CHARS)
            )
        elif event == "leave-room":
            room_id = self._require_room().room_id
            await self._leave(LeaveReason.LEFT)
            self._send("room-left", {"roomId": room_id})
        else:
            await self._dispatch_media(event, data)

    async def _dispatch_media(self, event: str, data: dict[str, Any]) -> None:
        participant = self._require_participant()
        if event == "offer":
            protocol.require_target(data, event, "publisher")
            if data.get("target", "publisher") != "publisher":
                raise ProtocolError("VALIDATION_ERROR", "only the publisher connection is offered")
            sdp = protocol.session_description(data, event, "offer", "offer")
            answer = await participant.handle_publisher_offer(sdp)
            self._send(
                "answer",
                {
                    "answer": {"type": "answer", "sdp": answer},
                    "target": "publisher",
                    "from": "relay",
                },
            )
        elif event == "answer":
            if protocol.require_target(data, event, "subscriber") != "subscriber":
                raise ProtocolError(
                    "VALIDATION_ERROR", "only the subscriber connection is answered"
                )
            sdp = protocol.session_description(data, event, "answer", "answer")
            await participant.handle_subscriber_answer(sdp)
        elif event == "ice-candidate":
            target = protocol.require_target(data, event)
            await participant.add_ice_candidate(target, protocol.ice_candidate(data))
        elif event == "media-state":
            audio, video, screen = protocol.media_state(data)
            self._require_room().set_media_state(participant, audio, video, screen)

    def _require_room(self) -> Room:
        if self.room is None:
            raise ProtocolError("NOT_IN_ROOM", "join a room first")
        return self.room

    def _require_participant(self) -> Participant:
        if self.participant is None or self.participant.closed:
            raise ProtocolError("NOT_IN_ROOM", "join a room first")
        return self.participant

    async def _join(self, room_id: str) -> None:
        identity = self.identity
        assert identity is not None
        if self.participant is not None and not self.participant.closed:
            raise ProtocolError("ALREADY_IN_ROOM", "this connection is already in a room")
        app = self.request.app
        storage, now = app[STORAGE_KEY], app[CONFIG_KEY].clock()
        session = await storage.find_session_by_room(room_id)
        if session is None:
            await self._audit("join_denied", "denied", None, room_id, now, "ROOM_NOT_FOUND")
            raise ProtocolError(
                "ROOM_NOT_FOUND", "no session has this room id", {"roomId": room_id}
            )
        decision = evaluate_access(session, identity, now)
        if not decision.can_join:
            code = "PERMISSION_DENIED" if decision.http_status == 403 else decision.reason
            await self._audit("join_denied", "denied", session.id, room_id, now, code)
            details: dict[str, Any] = {"reason": decision.reason, "sessionId": session.id}
            if decision.minutes_until_session is not None:
                details["minutesUntilSession"] = decision.minutes_until_session
            raise ProtocolError(code or "PERMISSION_DENIED", decision.message, details)
        user = await storage.get_user(identity.user_id)
        info = ParticipantInfo(
            socket_id=self.socket_id,
            user_id=identity.user_id,
            user_name=user.name if user else ROLE_NAMES.get(identity.role, identity.role),
            role=decision.participant_role or identity.role,
        )
        try:
            room, participant = await self._enter(room_id, info)
        except RoomFull as exc:  # a full room has participants: nothing to tidy up
            await self._audit("join_denied", "denied", session.id, room_id, now, "ROOM_FULL")
            raise ProtocolError("ROOM_FULL", str(exc), {"maxParticipants": exc.limit}) from None
        self.room, self.participant = room, participant
        await self._audit("join_success", "allowed", session.id, room_id, now, None)
        self._send(
            "room-joined",
            {
                "roomId": room_id,
                "sessionId": session.id,
                "socketId": self.socket_id,
                "protocolVersion": protocol.PROTOCOL_VERSION,
                "maxParticipants": self.relay.settings.max_participants,
                "participants": [
                    protocol.participant_json(p)
                    for p in room.participants.values()
                    if p is not participant
                ],
            },
        )

    async def _enter(self, room_id: str, info: ParticipantInfo) -> tuple[Room, Participant]:
        """Join the relay's room; if it closes under us (its last participant just left), the
        relay opens a fresh one for the same id."""
        for _ in range(3):
            room = self.relay.room(room_id)
            try:
                return room, await room.join(info, self)
            except RoomClosed:
                continue
        raise ProtocolError("INTERNAL_ERROR", "the room kept closing; try again")

    async def _audit(
        self,
        action: str,
        result: str,
        session_id: str | None,
        room_id: str,
        now: datetime,
        code: str | None,
    ) -> None:
        await record_access(
            self.request.app[STORAGE_KEY],
            action=action,
            result=result,
            identity=self.identity,
            session_id=session_id,
            reason=code,
            ip_address=client_address(self.request),
            user_agent=user_agent(self.request),
            room_id=room_id,
            metadata={"endpoint": "WS join-room", "socketId": self.socket_id},
            now=now,
        )

    async def _leave(self, reason: LeaveReason) -> None:
        room, participant = self.room, self.participant
        self.room = self.participant = None
        if room is not None and participant is not None:
            await room.leave(participant, reason)

    # -- ParticipantListener ------------------------------------------------------------------

    def user_joined(self, other: Participant) -> None:
        self._send("user-joined", protocol.participant_json(other))

    def user_left(self, other: Participant, reason: LeaveReason) -> None:
        self._send(
            "user-left",
            {"socketId": other.socket_id, "userId": other.info.user_id, "reason": str(reason)},
        )

    def media_state_changed(self, other: Participant) -> None:
        self._send(
            "media-state",
            {
                "socketId": other.socket_id,
                "userId": other.info.user_id,
                **protocol.media_state_json(other.media),
            },
        )

    def subscriber_offer(self, sdp: str, tracks: list[TrackInfo]) -> None:
        self._send(
            "offer",
            {
                "offer": {"type": "offer", "sdp": sdp},
                "target": "subscriber",
                "from": "relay",
                "tracks": [protocol.track_json(t) for t in tracks],
            },
        )

    def tracks_changed(self, tracks: list[TrackInfo]) -> None:
        self._send("tracks", {"tracks": [protocol.track_json(t) for t in tracks]})

    def closed_by_relay(self, reason: LeaveReason) -> None:
        """The relay removed this participant (replaced by a reload, ICE failure, shutdown)."""
        self.room = self.participant = None
        code, message = protocol.CLOSED_BY_RELAY.get(reason, protocol.CLOSED_BY_RELAY_DEFAULT)
        self._send_error(code, message, {"reason": str(reason)})
        replaced = reason is LeaveReason.REPLACED
        self._outbox.put_nowait({"close": CLOSE_REPLACED if replaced else CLOSE_ENDED})

    def negotiation_failed(self, message: str) -> None:
        self._send_error("NEGOTIATION_FAILED", message, {"target": "subscriber"})

    # -- sending ------------------------------------------------------------------------------

    def _send(self, event: str, data: dict[str, Any]) -> None:
        count_ws_message(self.request.app, event, "out")
        self._outbox.put_nowait(protocol.outbound(event, data))

    def _send_error(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        count_error(self.request.app, code, "ws")
        self._outbox.put_nowait(protocol.error_event(code, message, details))

    async def _write_loop(self) -> None:
        while (item := await self._outbox.get()) is not None:
            if self.ws.closed:
                continue
            if "close" in item:
                await self.ws.close(code=item["close"])
                continue
            try:
                await self.ws.send_json(item)
            except (ConnectionResetError, RuntimeError):
                continue

    async def _close(self, code: int) -> None:
        self._outbox.put_nowait({"close": code})
