"""End-to-end encryption for the QA tool's participants: the browser client's key exchange
(web/js/e2ee.js) and frame format (web/js/e2ee-worker.js) in Python, so that `synth` calls can
be E2EE calls, with browsers or among themselves (docs/e2ee.md).

- `E2eeSession`: an ephemeral ECDH P-256 key pair per connection, a random 32-byte sender
  secret wrapped (AES-256-GCM, HKDF of the pair's ECDH secret) for every other participant in an
  `e2ee-key` message, a new secret when someone joins or leaves, the mode ("e2ee", "pending",
  "relay") and the four-word security code.
- `FrameCipher`: AES-128-GCM per frame with the clear prefix the relay reads (VP8 payload header
  of a keyframe 10 bytes / delta 3, the Opus TOC 1), IV and key id in a trailer, a replay window.

The frames reach it through `relay._aiortc.transform_sent_frames` / `transform_received_frames`
(aiortc's encoded-frame layer). `cryptography` (an aiortc dependency) does the cryptography.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

log = logging.getLogger(__name__)

INFO = b"smiling-relay e2ee v1"
MAGIC = 0xE2
TRAILER = 14  # IV 12 + key id 1 + magic 1
TAG = 16
REPLAY_WINDOW = 256
KEY_RING = 3  # a sender's keys kept for frames still in flight after a rotation
KEY_SWITCH_DELAY = 0.4  # the others have the new key before the first frame it encrypts
ANSWER_GRACE = 3.0  # a participant silent this long cannot encrypt
WORDS_FILE = Path(__file__).resolve().parent.parent / "web" / "js" / "e2ee-words.js"


@cache
def code_words() -> tuple[str, ...]:
    """The browser client's 256 code words (web/js/e2ee-words.js); () when it is not installed."""
    try:
        return tuple(re.findall(r'"([a-z]+)"', WORDS_FILE.read_text()))
    except OSError:
        return ()


def security_code(public_keys: list[bytes]) -> str | None:
    words = code_words()
    if len(words) != 256:
        return None
    digest = hashlib.sha256(INFO + b" code" + b"".join(sorted(public_keys))).digest()
    return " ".join(words[b] for b in digest[:4])


def media_key(secret: bytes) -> AESGCM:
    return AESGCM(HKDF(hashes.SHA256(), 16, salt=INFO, info=b"media frame key").derive(secret))


def prefix_length(kind: str, frame: bytes) -> int:
    if kind == "audio":
        return min(1, len(frame))
    return min(10 if frame and frame[0] & 1 == 0 else 3, len(frame))


@dataclass
class _SendKey:
    key_id: int
    key: AESGCM
    salt: bytes = field(default_factory=lambda: os.urandom(3))
    counters: dict[str, int] = field(default_factory=lambda: {"audio": 0, "video": 0})


@dataclass
class _RecvKey:
    key: AESGCM
    # per IV stream (kind + salt): the highest counter and the counters seen within the window
    windows: dict[bytes, tuple[int, set[int]]] = field(default_factory=dict)

    def accept(self, stream: bytes, counter: int) -> bool:
        highest, seen = self.windows.get(stream, (-1, set()))
        if counter <= highest - REPLAY_WINDOW or counter in seen:
            return False
        seen.add(counter)
        if counter > highest:
            highest = counter
            if len(seen) > 2 * REPLAY_WINDOW:
                seen = {c for c in seen if c > highest - REPLAY_WINDOW}
        self.windows[stream] = (highest, seen)
        return True


@dataclass
class FrameStats:
    encrypted: int = 0
    decrypted: int = 0
    passed_clear: int = 0
    dropped: int = 0
    undecryptable: int = 0
    replayed: int = 0


class FrameCipher:
    """The worker's side (web/js/e2ee-worker.js): frames in and out, by mode."""

    def __init__(self) -> None:
        self.mode = "pending"
        self.send_key: _SendKey | None = None
        self.recv_keys: dict[str, dict[int, _RecvKey]] = {}
        self.stats = FrameStats()

    def set_send_key(self, key_id: int, secret: bytes) -> None:
        self.send_key = _SendKey(key_id, media_key(secret))

    def add_recv_key(self, sender: str, key_id: int, secret: bytes) -> None:
        ring = self.recv_keys.setdefault(sender, {})
        ring[key_id] = _RecvKey(media_key(secret))
        while len(ring) > KEY_RING:
            del ring[next(iter(ring))]

    def encrypt(self, kind: str, frame: bytes) -> bytes | None:
        if self.mode == "relay":
            self.stats.passed_clear += 1
            return frame
        k = self.send_key
        if k is None:
            self.stats.dropped += 1  # nothing leaves unencrypted while E2EE is on
            return None
        prefix = prefix_length(kind, frame)
        k.counters[kind] += 1
        iv = bytes([1 if kind == "video" else 0]) + k.salt + k.counters[kind].to_bytes(8, "big")
        sealed = k.key.encrypt(iv, frame[prefix:], frame[:prefix])
        self.stats.encrypted += 1
        return frame[:prefix] + sealed + iv + bytes([k.key_id, MAGIC])

    def decrypt(self, kind: str, frame: bytes) -> bytes | None:
        n = len(frame)
        if n >= TRAILER + TAG + 1 and frame[-1] == MAGIC:
            key_id, iv = frame[-2], frame[-TRAILER:-2]
            prefix = prefix_length(kind, frame)
            for ring in self.recv_keys.values():
                entry = ring.get(key_id)
                if entry is None:
                    continue
                try:
                    plain = entry.key.decrypt(iv, frame[prefix:-TRAILER], frame[:prefix])
                except InvalidTag:
                    continue
                if not entry.accept(iv[:4], int.from_bytes(iv[4:], "big")):
                    self.stats.replayed += 1
                    return None
                self.stats.decrypted += 1
                return frame[:prefix] + plain
            self.stats.undecryptable += 1
            return None
        if self.mode == "e2ee":  # nothing clear plays in an end-to-end encrypted call
            self.stats.dropped += 1
            return None
        self.stats.passed_clear += 1
        return frame


@dataclass
class _Peer:
    socket_id: str
    user_id: str | None
    since: float
    capable: bool | None = None
    public_raw: bytes | None = None
    wrap_key: AESGCM | None = None
    key_ids: set[int] = field(default_factory=set)
    mismatch: bool = False


class E2eeSession:
    """The key exchange of one connection (web/js/e2ee.js `E2eeSession`, same messages)."""

    def __init__(
        self,
        socket_id: str,
        send: Callable[[dict[str, Any]], Awaitable[None]],
        *,
        policy: str = "preferred",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.socket_id = socket_id
        self.policy = policy
        self._send = send
        self._clock = clock
        self._private = ec.generate_private_key(ec.SECP256R1())
        self.public_raw = self._private.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        self.peers: dict[str, _Peer] = {}
        self.cipher = FrameCipher()
        self.key_id = int.from_bytes(os.urandom(1), "big")
        self.secret = b""
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._new_secret(delay=0.0)

    # -- membership ---------------------------------------------------------------------------

    async def set_peers(self, participants: list[dict[str, Any]]) -> None:
        for p in participants:
            self._add_peer(p)
        await self.announce()
        self._update()

    async def peer_joined(self, participant: dict[str, Any]) -> None:
        self._add_peer(participant)
        await self._rotate()  # a joiner never gets the frames sent before it came

    async def peer_left(self, socket_id: str) -> None:
        if self.peers.pop(socket_id, None) is None:
            return
        self.cipher.recv_keys.pop(socket_id, None)
        await self._rotate()  # who left keeps only keys nobody uses from now on

    def _add_peer(self, p: dict[str, Any]) -> None:
        socket_id = p.get("socketId")
        if not socket_id or socket_id == self.socket_id or socket_id in self.peers:
            return
        self.peers[socket_id] = _Peer(socket_id, p.get("userId"), self._clock())
        self._later(ANSWER_GRACE + 0.05, self._update)  # a silent peer changes the mode then

    # -- key exchange -------------------------------------------------------------------------

    async def handle(self, data: dict[str, Any]) -> None:
        """An `e2ee-key` from another participant (stamped by the server with its socket id)."""
        async with self._lock:
            resend = self._take(data)
        if resend:
            await self.announce()
        self._update()

    def _take(self, data: dict[str, Any]) -> bool:
        socket_id = data.get("socketId")
        if not isinstance(socket_id, str):
            return False
        self._add_peer({"socketId": socket_id, "userId": data.get("userId")})
        peer = self.peers[socket_id]
        peer.capable = bool(data.get("capable"))
        if not peer.capable:
            return False
        resend = False
        raw = base64.b64decode(data["publicKey"])
        if raw != peer.public_raw:
            public = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
            shared = self._private.exchange(ec.ECDH(), public)
            salt = b"".join(sorted((self.public_raw, raw)))
            wrap = HKDF(hashes.SHA256(), 32, salt=salt, info=INFO + b" key wrap").derive(shared)
            peer.public_raw, peer.wrap_key, peer.mismatch = raw, AESGCM(wrap), False
            resend = True  # it could not read our secret before it had our key
        wrapped = (data.get("wrapped") or {}).get(self.socket_id)
        key_id = data.get("keyId")
        if wrapped and isinstance(key_id, int) and key_id not in peer.key_ids:
            sealed = base64.b64decode(wrapped)
            assert peer.wrap_key is not None
            try:
                secret = peer.wrap_key.decrypt(
                    sealed[:12], sealed[12:], self._aad(socket_id, self.socket_id, key_id)
                )
            except InvalidTag:
                peer.mismatch = True  # wrapped with a key we don't share: swapped on the way
            else:
                peer.key_ids.add(key_id)
                self.cipher.add_recv_key(socket_id, key_id, secret)
        return resend

    @staticmethod
    def _aad(sender: str, receiver: str, key_id: int) -> bytes:
        return INFO + f"|{sender}|{receiver}|{key_id}".encode()

    async def announce(self) -> None:
        """Our public key and current secret, wrapped for everyone whose key we have."""
        wrapped = {}
        for peer in self.peers.values():
            if peer.wrap_key is None:
                continue
            iv = os.urandom(12)
            sealed = peer.wrap_key.encrypt(
                iv, self.secret, self._aad(self.socket_id, peer.socket_id, self.key_id)
            )
            wrapped[peer.socket_id] = base64.b64encode(iv + sealed).decode()
        await self._send(
            {
                "capable": True,
                "publicKey": base64.b64encode(self.public_raw).decode(),
                "keyId": self.key_id,
                "wrapped": wrapped,
            }
        )

    def _new_secret(self, delay: float) -> None:
        self.key_id = (self.key_id + 1) % 256
        self.secret = os.urandom(32)
        key_id, secret = self.key_id, self.secret

        def activate() -> None:
            if self.key_id == key_id:
                self.cipher.set_send_key(key_id, secret)

        if delay <= 0:
            activate()
        else:
            self._later(delay, activate)

    def _later(self, delay: float, job: Callable[[], None]) -> None:
        async def run() -> None:
            await asyncio.sleep(delay)
            job()

        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _rotate(self) -> None:
        self._new_secret(KEY_SWITCH_DELAY)
        await self.announce()
        self._update()

    # -- mode and code ------------------------------------------------------------------------

    @property
    def mode(self) -> str:
        now, pending = self._clock(), False
        for peer in self.peers.values():
            silent = peer.capable is None and now - peer.since >= ANSWER_GRACE
            if peer.capable is False or silent:
                if self.policy == "preferred":
                    return "relay"
            elif peer.capable is None or not peer.key_ids:
                pending = True
        return "pending" if pending else "e2ee"

    @property
    def code(self) -> str | None:
        keys = [p.public_raw for p in self.peers.values()]
        if not keys or any(k is None for k in keys):
            return None
        return security_code([self.public_raw, *(k for k in keys if k is not None)])

    def _update(self) -> None:
        self.cipher.mode = self.mode

    def close(self) -> None:
        for task in self._tasks:
            task.cancel()
