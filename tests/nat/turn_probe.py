"""A raw TURN client (RFC 8656 over UDP, built on aioice's STUN codec) to ask coturn questions.

`TurnProbe.allocate()` does the long-term-credential handshake: an unauthenticated Allocate
draws 401 with REALM and NONCE, the second one carries USERNAME, REALM, NONCE and
MESSAGE-INTEGRITY. The outcome is returned, never raised, so tests can assert on refusals (401
for an expired or forged TURN REST credential, 403 for a denied peer address).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aioice import stun
from aioice.turn import UDP_TRANSPORT, make_integrity_key


@dataclass(frozen=True)
class Outcome:
    success: bool
    error_code: int | None = None
    reason: str = ""
    attributes: dict[str, Any] | None = None


class _Socket(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.queue.put_nowait(data)


class TurnProbe:
    def __init__(
        self, server: tuple[str, int], username: str, password: str, timeout: float = 3.0
    ) -> None:
        self.server = server
        self.timeout = timeout
        self.username = username
        self.password = password
        self.realm: str | None = None
        self.nonce: bytes | None = None
        self._transport: asyncio.DatagramTransport | None = None
        self._socket = _Socket()

    async def __aenter__(self) -> TurnProbe:
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self._socket, remote_addr=self.server
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._transport is not None:
            self._transport.close()

    async def _request(self, request: stun.Message) -> stun.Message:
        assert self._transport is not None
        timeout = self.timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for _ in range(3):  # UDP: retransmit a few times within the deadline
            self._transport.sendto(bytes(request))
            try:
                while True:
                    wait = min(1.0, deadline - loop.time())
                    if wait <= 0:
                        break
                    data = await asyncio.wait_for(self._socket.queue.get(), wait)
                    response = stun.parse_message(data)
                    if response.transaction_id == request.transaction_id:
                        return response
            except TimeoutError:
                continue
        raise TimeoutError(f"no answer from TURN server {self.server} within {timeout} s")

    def _signed(self, method: stun.Method, attributes: dict[str, Any]) -> stun.Message:
        request = stun.Message(message_method=method, message_class=stun.Class.REQUEST)
        request.attributes.update(attributes)
        assert self.realm is not None and self.nonce is not None
        request.attributes["USERNAME"] = self.username
        request.attributes["REALM"] = self.realm
        request.attributes["NONCE"] = self.nonce
        request.add_message_integrity(make_integrity_key(self.username, self.realm, self.password))
        return request

    async def allocate(self) -> Outcome:
        attributes = {"REQUESTED-TRANSPORT": UDP_TRANSPORT, "LIFETIME": 60}
        first = stun.Message(message_method=stun.Method.ALLOCATE, message_class=stun.Class.REQUEST)
        first.attributes.update(attributes)
        challenge = await self._request(first)
        if _error_code(challenge) != 401:
            return _outcome(challenge)
        self.realm = str(challenge.attributes["REALM"])
        self.nonce = bytes(challenge.attributes["NONCE"])
        return _outcome(await self._request(self._signed(stun.Method.ALLOCATE, attributes)))

    async def create_permission(self, peer_ip: str) -> Outcome:
        request = self._signed(stun.Method.CREATE_PERMISSION, {"XOR-PEER-ADDRESS": (peer_ip, 0)})
        return _outcome(await self._request(request))

    async def release(self) -> None:
        await self._request(self._signed(stun.Method.REFRESH, {"LIFETIME": 0}))


def _error_code(message: stun.Message) -> int | None:
    if message.message_class != stun.Class.ERROR:
        return None
    code, _ = message.attributes["ERROR-CODE"]
    return int(code)


def _outcome(message: stun.Message) -> Outcome:
    if message.message_class == stun.Class.RESPONSE:
        return Outcome(success=True, attributes=dict(message.attributes))
    code, reason = message.attributes.get("ERROR-CODE", (0, ""))
    return Outcome(success=False, error_code=int(code), reason=str(reason))
