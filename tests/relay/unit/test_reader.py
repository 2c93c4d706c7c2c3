"""The batched ICE-socket reader: bursts, the per-event bound, would-block, bad packets, teardown.

Real UDP sockets on 127.0.0.1, a real aioice `StunProtocol` endpoint on the running loop, a real
pylibsrtp session pair; the aiortc DTLS transport and aioice connection around them are
stand-ins (nothing is negotiated).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest
from aioice import stun
from aioice.ice import StunProtocol
from pylibsrtp import Policy, Session

from relay._aiortc import MediaTransport, reader
from tests.relay.unit.conftest import rtp

KEY = os.urandom(30)


class Endpoint:
    """One ICE socket as aioice has it after gathering, and a peer sending to it."""

    def __init__(self) -> None:
        self.tx = Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_OUTBOUND))
        self.to_aiortc: list[bytes] = []  # what aioice hands its connection (DTLS)
        self.stun_requests: list[stun.Message] = []
        self.connection = SimpleNamespace(
            data_received=lambda data, component: self.to_aiortc.append(data),
            request_received=lambda message, addr, protocol: self.stun_requests.append(message),
            protocol_lost=lambda protocol: None,
            _protocols=[],
            _nominated={},
        )
        self.dtls: Any = SimpleNamespace(
            transport=SimpleNamespace(_connection=self.connection),
            _rx_srtp=Session(Policy(key=KEY, ssrc_type=Policy.SSRC_ANY_INBOUND)),
            _tx_srtp=None,
            _send_rtp=None,
        )
        self.peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # blocking: sends at once
        self.transport: Any = None
        self.protocol: Any = None
        self.address: tuple[str, int] = ("", 0)

    async def open(self) -> Endpoint:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.bind(("127.0.0.1", 0))
        sock.setblocking(False)
        self.address = sock.getsockname()
        loop = asyncio.get_running_loop()
        self.transport, self.protocol = await loop.create_datagram_endpoint(
            lambda: StunProtocol(self.connection),  # type: ignore[arg-type]
            sock=sock,
        )
        self.protocol.local_candidate = SimpleNamespace(component=1)
        self.connection._protocols.append(self.protocol)
        return self

    def send(self, *datagrams: bytes) -> None:
        for datagram in datagrams:
            self.peer.sendto(datagram, self.address)

    def media(self, first: int, count: int) -> list[bytes]:
        return [self.tx.protect(rtp(seq, seq * 960)) for seq in range(first, first + count)]

    async def close(self) -> None:
        self.transport.close()
        self.peer.close()
        await asyncio.sleep(0)  # the transport's connection_lost closes the socket


class Handlers:
    def __init__(self) -> None:
        self.seqs: list[int] = []
        self.arrivals: list[float] = []
        self.errors = 0
        self.raise_on: set[int] = set()

    def on_rtp(self, data: bytes, arrival: float) -> None:
        seq = data[2] << 8 | data[3]
        if seq in self.raise_on:
            raise TypeError("a bug in the forwarding chain")
        self.seqs.append(seq)
        self.arrivals.append(arrival)

    def on_error(self) -> None:
        self.errors += 1


def media_transport(endpoint: Endpoint, handlers: Handlers, *, batched: bool) -> MediaTransport:
    transport = MediaTransport(endpoint.dtls, handlers.on_error, batched=batched)
    transport.on_rtp = handlers.on_rtp
    return transport


async def until(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Let the loop run until `condition()` holds; fail after `within` seconds."""
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.001)


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "asyncio-transport"])
async def test_a_burst_queued_before_the_reader_runs_is_delivered_in_order(
    batched: bool,
) -> None:
    endpoint = await Endpoint().open()
    handlers = Handlers()
    transport = media_transport(endpoint, handlers, batched=batched)
    assert transport.batched_sockets == int(batched)
    burst = 300
    endpoint.send(*endpoint.media(1, burst))  # all in the kernel's queue: the loop has not run
    await until(lambda: len(handlers.seqs) == burst)
    assert handlers.seqs == list(range(1, burst + 1))
    assert handlers.errors == 0
    if batched:  # one arrival time per readiness event: at most a handful for 300 datagrams
        assert len(set(handlers.arrivals)) <= burst // reader.MAX_BATCH + 1
    await endpoint.close()


async def test_one_readiness_event_reads_at_most_max_batch_then_the_loop_runs() -> None:
    endpoint = await Endpoint().open()
    handlers = Handlers()
    transport = media_transport(endpoint, handlers, batched=True)
    loop = asyncio.get_running_loop()
    delivered_when_the_loop_ran: list[int] = []

    def on_rtp(data: bytes, arrival: float) -> None:
        if not handlers.seqs:  # the first datagram: ask for the loop's next turn
            loop.call_soon(lambda: delivered_when_the_loop_ran.append(len(handlers.seqs)))
        handlers.on_rtp(data, arrival)

    transport.on_rtp = on_rtp
    count = 3 * reader.MAX_BATCH + 10
    endpoint.send(*endpoint.media(1, count))
    await until(lambda: len(handlers.seqs) == count)
    assert delivered_when_the_loop_ran == [reader.MAX_BATCH]  # asyncio's transport: [1]
    assert handlers.seqs == list(range(1, count + 1))
    await endpoint.close()


async def test_a_socket_that_would_block_ends_the_batch_quietly() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got: list[bytes] = []
    protocol = SimpleNamespace(datagram_received=lambda data, addr: got.append(data))
    read_ready = reader.make_reader(
        sock, protocol, lambda data, arrival: got.append(data), lambda: None, time.monotonic
    )
    read_ready()  # a spurious wake-up: nothing queued
    assert got == []
    datagrams = [bytes([0x80, n]) + b"media" for n in range(5)] + [b"\x00\x01stun"]
    for datagram in datagrams:
        peer.sendto(datagram, sock.getsockname())
    deadline = time.monotonic() + 5
    while len(got) < len(datagrams) and time.monotonic() < deadline:
        read_ready()  # reads what is queued, then stops at EAGAIN well before MAX_BATCH
    assert got == datagrams
    read_ready()
    assert got == datagrams
    sock.close()
    peer.close()


async def test_a_bad_packet_is_skipped_and_the_next_good_one_delivered() -> None:
    endpoint = await Endpoint().open()
    handlers = Handlers()
    handlers.raise_on = {3}
    media_transport(endpoint, handlers, batched=True)
    good = endpoint.media(1, 5)
    forged = bytearray(good[1])
    forged[-1] ^= 0xFF  # fails SRTP authentication: the network's doing, dropped silently
    endpoint.send(good[0], bytes(forged), b"\x80", good[2], good[3], good[4])
    await until(lambda: handlers.seqs[-1:] == [5])
    # seq 2's only copy was forged; seq 3 broke the handler: counted, and the socket lives on
    assert handlers.seqs == [1, 4, 5]
    assert handlers.errors == 1
    await endpoint.close()


async def test_a_datagram_that_breaks_its_handler_is_counted_and_the_batch_goes_on() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.setblocking(False)
    peer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    got: list[bytes] = []
    errors: list[BaseException | None] = []

    def datagram_received(data: bytes, addr: Any) -> None:
        if data == b"\x00boom":
            raise ValueError("aioice choked")
        got.append(data)

    read_ready = reader.make_reader(
        sock,
        SimpleNamespace(datagram_received=datagram_received),
        lambda data, arrival: got.append(data),
        lambda: errors.append(sys.exc_info()[1]),  # called inside the except block
        time.monotonic,
    )
    datagrams = [b"\x00one", b"\x00boom", bytes([0x80, 1]), b"\x00two"]
    for datagram in datagrams:
        peer.sendto(datagram, sock.getsockname())
    await until(lambda: (read_ready(), len(got) == 3)[1])
    assert got == [b"\x00one", bytes([0x80, 1]), b"\x00two"]
    assert len(errors) == 1 and isinstance(errors[0], ValueError)
    sock.close()
    peer.close()


async def test_stun_and_dtls_still_reach_aioice_and_aiortc() -> None:
    endpoint = await Endpoint().open()
    handlers = Handlers()
    media_transport(endpoint, handlers, batched=True)
    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    dtls_record = bytes([22, 0xFE, 0xFD]) + b"\x00" * 10  # a DTLS handshake record
    endpoint.send(endpoint.media(1, 1)[0], bytes(request), dtls_record, endpoint.media(2, 1)[0])
    await until(lambda: len(handlers.seqs) == 2 and endpoint.stun_requests != [])
    assert [m.transaction_id for m in endpoint.stun_requests] == [request.transaction_id]
    assert endpoint.to_aiortc == [dtls_record]
    assert handlers.seqs == [1, 2]
    await endpoint.close()


async def test_closing_the_transport_removes_the_reader_before_the_socket_closes() -> None:
    endpoint = await Endpoint().open()
    handlers = Handlers()
    media_transport(endpoint, handlers, batched=True)
    loop: Any = asyncio.get_running_loop()
    sock = endpoint.transport.get_extra_info("socket")
    fd = sock.fileno()
    key = loop._selector.get_key(fd)
    reader_handle = key.data[0]
    assert reader_handle._callback.__name__ == "read_ready"  # ours, not asyncio's _read_ready
    closed = endpoint.protocol._StunProtocol__closed
    endpoint.transport.close()
    assert fd not in loop._selector.get_map()  # removed at once, by the transport's close()
    await asyncio.wait_for(closed, 5)
    assert sock.fileno() == -1  # and the socket closed after, in connection_lost
    endpoint.peer.close()


async def test_a_transport_the_reader_cannot_take_over_keeps_aioice_reading() -> None:
    endpoint = await Endpoint().open()
    handlers = Handlers()
    endpoint.protocol.transport = SimpleNamespace(is_closing=lambda: False)  # not asyncio's own
    transport = media_transport(endpoint, handlers, batched=True)
    assert transport.batched_sockets == 0
    endpoint.protocol.datagram_received(endpoint.media(1, 1)[0], ("127.0.0.1", 9))
    assert handlers.seqs == [1]  # taken from aioice's protocol before its STUN parse
    endpoint.protocol.transport = endpoint.transport
    await endpoint.close()


def test_on_uvloop_the_reader_steps_aside_and_media_still_flows() -> None:
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> None:
        endpoint = await Endpoint().open()
        assert not reader.available(endpoint.transport)
        handlers = Handlers()
        transport = media_transport(endpoint, handlers, batched=True)
        assert transport.batched_sockets == 0
        endpoint.send(*endpoint.media(1, 20))
        await until(lambda: len(handlers.seqs) == 20)
        assert handlers.seqs == list(range(1, 21))
        await endpoint.close()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario())
