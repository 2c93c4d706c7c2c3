"""One WebSocket client: its messages translated into calls on `calls.service.CallService`
(authenticate, join a room) and on the relay (offers, answers, candidates), and the relay's
events back into the protocol's messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from aiohttp import WSMsgType, web

from calls.audit import Origin
from calls.errors import CallError, ErrorKind, unavailable
from calls.identity import Identity
from calls.log_context import CALL_ID, CONNECTION_ID
from calls.service import JOIN_ENDPOINT, CallEnded, CallService, OverBudget, RoomIsFull, Seat
from relay.adaptation import Direction, GateReason
from relay.candidates import CandidateError
from relay.negotiation import NegotiationError
from relay.participant import Participant, ParticipantInfo, TrackInfo
from relay.reasons import LeaveReason
from relay.room import Room, RoomClosed, RoomFull
from relay.sfu import Relay
from signaling import liveness, protocol
from signaling.bridge import Bridge, BridgeRefused, CallLocator
from signaling.limits import Occupancy, Place, SignalingLimits, TokenBucket
from signaling.liveness import Liveness, Verdict
from signaling.protocol import Message, ProtocolError

logger = logging.getLogger(__name__)

AUTHENTICATE_TIMEOUT = 10.0
MAX_ERRORS = 20
CLOSE_POLICY_VIOLATION = 1008
CLOSE_UNAUTHENTICATED = 4401
CLOSE_RATE_LIMITED = 4429
CLOSE_REPLACED = 4409
CLOSE_ENDED = 4000
# How a refused authentication is told (the protocol's own names for the service's kinds).
AUTH_REFUSALS = {
    ErrorKind.UNAUTHENTICATED: ("AUTHENTICATION_FAILED", CLOSE_UNAUTHENTICATED),
    ErrorKind.RATE_LIMITED: ("RATE_LIMITED", CLOSE_RATE_LIMITED),
}


class SignalingObserver(Protocol):
    """Told about every message and every error event (metrics implements it)."""

    def ws_message(self, event: str, direction: str) -> None:
        """One message: `direction` "in" (client → server) or "out" (server → client)."""

    def ws_error(self, code: str) -> None:
        """One `error` event sent to a client."""


class _NoObserver:
    def ws_message(self, event: str, direction: str) -> None:
        pass

    def ws_error(self, code: str) -> None:
        pass


NO_OBSERVER: SignalingObserver = _NoObserver()


@dataclass(frozen=True)
class Fleet:
    """What a connection needs when calls live on several nodes (docs/scaling.md)."""

    locator: CallLocator
    # The fleet's shared secret, shown to the holder's internal listener by a bridge (None:
    # one process, nothing is bridged here or from here).
    secret: str | None
    # The client session bridges are opened with (the app's, made at start-up).
    http: Callable[[], aiohttp.ClientSession]


@dataclass(frozen=True)
class Bridged:
    """A connection that another node bridged here: the client's own socket id and address."""

    socket_id: str
    client_ip: str | None
    # The entry node let it in over the user's connection budget: it may only rejoin a seat.
    seat_only: bool = False


class SignalingConnection:
    """Implements the relay's `ParticipantListener` by sending events down the socket."""

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        relay: Relay,
        service: CallService,
        observer: SignalingObserver = NO_OBSERVER,
        *,
        limits: SignalingLimits | None = None,
        sessions: Occupancy | None = None,
        on_authenticated: Callable[[], None] = lambda: None,
        fleet: Fleet | None = None,
        bridged: Bridged | None = None,
    ) -> None:
        limits = limits or SignalingLimits()
        self.request = request
        self.ws = ws
        self.relay = relay
        self.service = service
        self.observer = observer
        self.fleet = fleet
        # Set on the holder's side of a bridge: the client is another node's connection.
        self.bridged = bridged
        self.socket_id = bridged.socket_id if bridged else uuid.uuid4().hex
        self.remote = bridged.client_ip if bridged else request.remote
        self._token: str | None = None
        # Set once this connection's call is on another node: frames are copied both ways.
        self._bridge: Bridge | None = None
        self._bridge_pump: asyncio.Task[None] | None = None
        self.identity: Identity | None = None
        self.room: Room | None = None
        self.participant: Participant | None = None
        self._errors = 0
        # Events to send, a {"close": code} item, or a bridged frame's text as received.
        self._outbox: asyncio.Queue[dict[str, Any] | str | None] = asyncio.Queue()
        # While a join is being audited, the room's events for us wait here: `room-joined`
        # goes first (a client drops a subscriber offer of a room it has not joined yet).
        self._held: list[dict[str, Any]] | None = None
        self._writer: asyncio.Task[None] | None = None
        self._messages = TokenBucket(limits.messages_per_second, limits.message_burst)
        self._sessions = sessions or Occupancy(limits.max_sessions_per_user)
        self._session: Place | None = None
        self._on_authenticated = on_authenticated
        # How the call ended, set by `end_call` just before the relay closes the room.
        self.call_ended: CallEnded | None = None
        # Set when this side closes the socket (a refusal, abuse): the seat is not held then.
        self._closed_on_purpose = False
        # Set when the connection came in over the user's budget: it may only take back a seat
        # the user holds in the room it joins (a reconnect), else it is refused as RATE_LIMITED.
        self._seat_only = bridged is not None and bridged.seat_only
        self._liveness = Liveness(time.monotonic)

    # -- lifecycle ----------------------------------------------------------------------------

    async def run(self, token: str | None) -> None:
        CONNECTION_ID.set(self.socket_id)  # this handler's task: every line of it carries it
        self._writer = asyncio.create_task(self._write_loop())
        keep_alive = asyncio.create_task(self._keep_alive())
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
            keep_alive.cancel()
            if self._session is not None:
                self._session.release()  # before leaving: closing the media may take a while
            # shielded: leaving the room must complete even if this handler is cancelled. A
            # socket that went away (not closed by us for a reason) keeps its seat a while.
            hold = not self._closed_on_purpose
            await asyncio.shield(self._leave(LeaveReason.DISCONNECTED, hold_seat=hold))
            if self._bridge is not None:
                await asyncio.shield(self._bridge.close())  # ends the pump too
            with contextlib.suppress(Exception):
                await self._writer

    async def _await_authenticate_message(self) -> bool:
        deadline = asyncio.get_running_loop().time() + AUTHENTICATE_TIMEOUT
        try:
            async with asyncio.timeout_at(deadline):
                raw = await self._receive_answering_pings()
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
        try:
            identity = await self.service.connect(token, counted=self.bridged is None)
        except OverBudget as exc:
            if not self._may_hold_seat(exc.identity):
                return await self._refuse_authentication(exc)
            identity, self._seat_only = exc.identity, True
        except CallError as exc:
            return await self._refuse_authentication(exc)
        return await self._authenticated(identity, token)

    def _may_hold_seat(self, identity: Identity) -> bool:
        """Whether the user may hold a seat that a connection over the budget could take back:
        one on this node, or in a fleet anywhere (the call's node checks it at the join)."""
        clustered = self.fleet is not None and self.fleet.secret is not None
        return clustered or any(
            self._seat_in(room, identity.user_id) for room in self.relay.rooms.values()
        )

    @staticmethod
    def _seat_in(room: Room | None, user_id: str) -> bool:
        """A live or held seat of this user in `room`."""
        if room is None:
            return False
        live = any(p.info.user_id == user_id for p in room.participants.values())
        return live or user_id in room.held

    async def _refuse_authentication(self, exc: CallError) -> bool:
        code, close = AUTH_REFUSALS.get(exc.kind, (exc.code, CLOSE_POLICY_VIOLATION))
        self._send_error(code, exc.message, exc.details)
        await self._close(close)
        return False

    async def _authenticated(self, identity: Identity, token: str) -> bool:
        self._session = self._sessions.take(identity.user_id)
        if self._session is None:
            limit = self._sessions.limit
            self._send_error(
                "TOO_MANY_CONNECTIONS",
                f"this user already has {limit} open connections; close one first",
                {"limit": limit},
            )
            await self._close(CLOSE_RATE_LIMITED)
            return False
        self.identity = identity
        self._token = token  # shown again by a bridge to the call's node
        self._on_authenticated()
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

    async def _keep_alive(self) -> None:
        """Ping a silent socket; close one that answers nothing while its media is silent too
        (signaling/liveness.py: a weak link's TCP stalls while its audio still arrives). The
        close is the transport's, without a close frame: the link is presumed dead."""
        watch = self._liveness
        while not self.ws.closed:
            await asyncio.sleep(liveness.TICK)
            participant = self.participant
            media = participant.media_progress() if participant is not None else None
            verdict = watch.check(media)
            if verdict is Verdict.PING:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.ping()
            elif verdict is Verdict.DEAD:
                now = time.monotonic()
                logger.info(
                    "keep-alive: nothing on the socket for %.1f s, no media for %.1f s: closed",
                    now - watch.heard_at,
                    now - watch.media_at,
                )
                if self.request.transport is not None:
                    self.request.transport.close()
                return

    async def _receive_answering_pings(self) -> aiohttp.WSMessage:
        """The next frame that is not a ping or a pong (pings answered: no autoping, so that
        the keep-alive sees every frame)."""
        while True:
            raw = await self.ws.receive()
            self._liveness.heard()
            if raw.type == WSMsgType.PING:
                with contextlib.suppress(ConnectionError, RuntimeError):
                    await self.ws.pong(raw.data)
            elif raw.type != WSMsgType.PONG:
                return raw

    async def _read_loop(self) -> None:
        while not self.ws.closed:
            raw = await self._receive_answering_pings()
            if raw.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            if raw.type in (WSMsgType.TEXT, WSMsgType.BINARY) and not self._messages.take():
                await self._refuse(
                    ProtocolError(
                        "RATE_LIMITED",
                        "too many messages; slow down",
                        {"retryAfter": round(self._messages.retry_after(), 3)},
                    )
                )
            elif raw.type == WSMsgType.TEXT:
                await self._handle_text(raw.data)
            elif raw.type == WSMsgType.BINARY:
                await self._refuse(ProtocolError("INVALID_MESSAGE", "binary frames are not used"))
            elif raw.type == WSMsgType.ERROR:
                break
            if self.ws.closed:
                break

    async def _handle_text(self, text: str) -> None:
        if self._bridge is not None:
            await self._bridge.send(text)  # the call's node parses and answers it
            return
        event: str | None = None
        try:
            message = protocol.parse_message(text)
            event = message.event
            self.observer.ws_message(event, "in")
            await self._dispatch(message)
        except ProtocolError as exc:
            await self._refuse(exc)
        except CallError as exc:
            await self._refuse(ProtocolError(exc.code, exc.message, exc.details))
        except CandidateError as exc:
            await self._refuse(
                ProtocolError(
                    "VALIDATION_ERROR",
                    f"ice-candidate: {exc.reason}",
                    {"event": event, "field": "candidate.candidate", "reason": exc.reason},
                )
            )
        except NegotiationError as exc:
            await self._refuse(
                ProtocolError("NEGOTIATION_FAILED", str(exc), {"event": event, "reason": str(exc)})
            )
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
            raise ProtocolError(
                "VALIDATION_ERROR", "this connection is already authenticated", {"event": event}
            )
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
                raise ProtocolError(
                    "VALIDATION_ERROR",
                    "only the publisher connection is offered",
                    {"event": event, "field": "target"},
                )
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
                    "VALIDATION_ERROR",
                    "only the subscriber connection is answered",
                    {"event": event, "field": "target"},
                )
            sdp = protocol.session_description(data, event, "answer", "answer")
            await participant.handle_subscriber_answer(sdp)
        elif event == "ice-candidate":
            target = protocol.require_target(data, event)
            await participant.add_ice_candidate(target, protocol.ice_candidate(data))
        elif event == "media-state":
            audio, video, screen = protocol.media_state(data)
            media = participant.media
            if (audio, video, screen) != (media.audio, media.video, media.screen):
                # only changes are relayed: repeating a state costs the others nothing
                self._require_room().set_media_state(participant, audio, video, screen)
        elif event == "e2ee-key":
            self._forward_e2ee_key(participant, protocol.e2ee_key(data))

    def _forward_e2ee_key(self, participant: Participant, key: dict[str, Any]) -> None:
        """Hand the browsers' key exchange to the room's other participants, stamped with its
        sender (the server cannot read it: docs/e2ee.md)."""
        sender = {"socketId": self.socket_id, "userId": participant.info.user_id}
        for other in self._require_room().participants.values():
            if other is not participant and isinstance(other.listener, SignalingConnection):
                other.listener._send("e2ee-key", {**key, **sender})

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
        if self.fleet is not None and await self._bridged_elsewhere(room_id):
            return
        if self._seat_only and not await self._reconnect_allowed(identity, room_id):
            return
        origin = Origin(
            ip_address=self.remote,
            user_agent=self.request.headers.get("User-Agent"),
            endpoint=JOIN_ENDPOINT,
            socket_id=self.socket_id,
        )

        listed: list[dict[str, Any]] = []

        async def take_seat(seat: Seat) -> tuple[Room, Participant]:
            info = ParticipantInfo(
                socket_id=self.socket_id,
                user_id=seat.user_id,
                user_name=seat.user_name,
                role=seat.role,
            )
            self._held = []
            try:
                room, participant = await self._enter(room_id, info)
            except RoomFull as exc:
                raise RoomIsFull(str(exc), exc.limit) from None
            # Taken with the seat (no await between): whoever joins or leaves from now on is
            # told by an event, held until `room-joined` is sent.
            listed.extend(
                protocol.participant_json(p)
                for p in room.participants.values()
                if p is not participant
            )
            # Before the service audits the join: the relay may already talk to us meanwhile.
            self.room, self.participant = room, participant
            CALL_ID.set(room_id)
            return room, participant

        try:
            joined = await self.service.join_room(identity, room_id, origin, take_seat)
        except Exception:
            # Refused (or the audit failed after seating): nothing of the room reaches the
            # client, and a seat taken is given back.
            self._held = None
            await asyncio.shield(self._leave(LeaveReason.LEFT))
            raise
        held, self._held = self._held or [], None
        self._send(
            "room-joined",
            {
                "roomId": room_id,
                "sessionId": joined.session_id,
                "socketId": self.socket_id,
                "protocolVersion": protocol.PROTOCOL_VERSION,
                "maxParticipants": self.relay.settings.max_participants,
                "participants": listed,
            },
        )
        for item in held:
            self._outbox.put_nowait(item)

    async def _reconnect_allowed(self, identity: Identity, room_id: str) -> bool:
        """A connection over the user's budget joins only to take back its seat (a reconnect);
        anything else is refused as the budget says, and the socket closed (4429)."""
        if not self._seat_in(self.relay.rooms.get(room_id), identity.user_id):
            self._send_error(
                "RATE_LIMITED",
                "too many connections per minute; only a reconnect to your seat is let in",
                {"retryAfter": 60},
            )
            await self._close(CLOSE_RATE_LIMITED)
            return False
        try:
            await self.service.reconnect_to_seat(identity)
        except CallError as exc:
            self._send_error(exc.code, exc.message, exc.details)
            await self._close(CLOSE_RATE_LIMITED)
            return False
        return True

    async def _bridged_elsewhere(self, room_id: str) -> bool:
        """Ask placement where the call is; if on another node, bridge there (True)."""
        assert self.fleet is not None
        node_url = await self.fleet.locator.locate(room_id)
        if node_url is None:
            return False
        if self.bridged is not None:  # bridges are never chained
            raise unavailable("this call moved to another server; reconnect to join it", 1)
        try:
            await self._open_bridge(node_url, room_id)
        except CallError:
            # The holder did not answer: maybe it just died. Placement checks its heartbeat
            # and may place the call anew (here or elsewhere); one more try, then the error.
            node_url = await self.fleet.locator.locate(room_id, unreachable=node_url)
            if node_url is None:
                return False
            await self._open_bridge(node_url, room_id)
        return True

    async def _open_bridge(self, node_url: str, room_id: str) -> None:
        """Carry this connection to the node holding the call, starting with its join."""
        assert self.fleet is not None and self.fleet.secret and self._token is not None
        join = json.dumps({"event": "join-room", "data": {"roomId": room_id}})
        try:
            self._bridge = await Bridge.open(
                self.fleet.http(),
                node_url,
                secret=self.fleet.secret,
                token=self._token,
                socket_id=self.socket_id,
                client_ip=self.request.remote,
                user_agent=self.request.headers.get("User-Agent"),
                join=join,
                max_msg_size=protocol.MAX_MESSAGE_BYTES,
                seat_only=self._seat_only,
            )
        except BridgeRefused as refused:
            self._outbox.put_nowait(refused.event)
            await self._close(refused.close_code)
            return
        CALL_ID.set(room_id)
        logger.info("bridged to the call's node %s", node_url)
        self._bridge_pump = asyncio.create_task(self._pump_bridge(self._bridge))

    async def _pump_bridge(self, bridge: Bridge) -> None:
        """The holder's frames to the client; when the holder closes, the client is closed
        with its code (or 1012 when it vanished, so the client reconnects)."""
        while (text := await bridge.receive()) is not None:
            self._outbox.put_nowait(text)
        self._outbox.put_nowait({"close": bridge.close_code})

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

    async def _leave(self, reason: LeaveReason, *, hold_seat: bool = False) -> None:
        room, participant = self.room, self.participant
        self.room = self.participant = None
        CALL_ID.set(None)
        if room is not None and participant is not None:
            await room.leave(participant, reason, hold_seat=hold_seat)

    # -- ParticipantListener ------------------------------------------------------------------

    def user_joined(self, other: Participant) -> None:
        joined = protocol.participant_json(other)
        if other.rejoined_from is not None:
            joined["previousSocketId"] = other.rejoined_from  # took its held seat back
        self._send("user-joined", joined)

    def user_reconnecting(self, other: Participant) -> None:
        self._send(
            "user-reconnecting",
            {
                "socketId": other.socket_id,
                "userId": other.info.user_id,
                "graceSeconds": self.relay.settings.seat_grace,
            },
        )

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

    def video_changed(
        self, subject: Participant, direction: Direction, paused: bool, reason: GateReason
    ) -> None:
        event = "video-paused" if paused else "video-resumed"
        self._send(event, protocol.video_changed_json(subject, str(direction), str(reason)))

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
        room = self.room
        self.room = self.participant = None
        if reason is LeaveReason.CALL_ENDED:
            room_id = room.room_id if room is not None else None
            self._send("call-ended", protocol.call_ended_json(room_id, self.call_ended))
            self._put({"close": CLOSE_ENDED})
            return
        code, message = protocol.CLOSED_BY_RELAY.get(reason, protocol.CLOSED_BY_RELAY_DEFAULT)
        self._send_error(code, message, {"reason": str(reason)})
        replaced = reason is LeaveReason.REPLACED
        self._put({"close": CLOSE_REPLACED if replaced else CLOSE_ENDED})

    def negotiation_failed(self, message: str) -> None:
        self._send_error("NEGOTIATION_FAILED", message, {"target": "subscriber", "reason": message})

    # -- sending ------------------------------------------------------------------------------

    def _send(self, event: str, data: dict[str, Any]) -> None:
        self.observer.ws_message(event, "out")
        self._put(protocol.outbound(event, data))

    def _send_error(self, code: str, message: str, details: dict[str, Any] | None = None) -> None:
        self.observer.ws_error(code)
        self._put(protocol.error_event(code, message, details))

    def _put(self, item: dict[str, Any]) -> None:
        if self._held is not None:
            self._held.append(item)
        else:
            self._outbox.put_nowait(item)

    async def _write_loop(self) -> None:
        while (item := await self._outbox.get()) is not None:
            if self.ws.closed:
                continue
            try:
                if isinstance(item, str):
                    await self.ws.send_str(item)
                elif "close" in item:
                    await self.ws.close(code=item["close"])
                else:
                    await self.ws.send_json(item)
            except (ConnectionResetError, RuntimeError):
                continue

    async def _close(self, code: int) -> None:
        self._closed_on_purpose = True
        self._put({"close": code})


async def end_call(relay: Relay, ended: CallEnded) -> None:
    """A call ended: its participants get `call-ended`, then their sockets close (4000).

    The composition root hands this to `CallService.on_call_ended`; the relay only learns the
    reason (`CALL_ENDED`), the connections learn who ended the call and its duration here.
    """
    if ended.room_id is None:
        return
    room = relay.rooms.get(ended.room_id)
    if room is None:
        return  # nobody is in the call
    for participant in room.participants.values():
        if isinstance(participant.listener, SignalingConnection):
            participant.listener.call_ended = ended
    await relay.end_call(ended.room_id)
