"""relay/coalesce.py: the loop pauses before it blocks; what arrived meanwhile is one wake-up."""

from __future__ import annotations

import asyncio
import selectors
import socket
import threading

from relay.coalesce import CoalescingSelector, event_loop


def _pair() -> tuple[socket.socket, socket.socket]:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setblocking(False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender.connect(receiver.getsockname())
    return receiver, sender


def _drain(sock: socket.socket) -> int:
    count = 0
    while True:
        try:
            sock.recv(2048)
        except BlockingIOError:
            return count
        count += 1


def test_datagrams_that_arrive_during_the_pause_are_served_by_one_wakeup() -> None:
    receiver, sender = _pair()
    pausing = threading.Event()

    class Watched(CoalescingSelector):
        def _pause(self, seconds: float) -> None:
            pausing.set()
            super()._pause(seconds)

    def send_three() -> None:
        pausing.wait(5)
        for _ in range(3):
            sender.send(b"x" * 100)

    selector = Watched(delay=1.0)
    selector.register(receiver, selectors.EVENT_READ)
    try:
        # nothing is ready: the selector pauses; the datagrams sent meanwhile are all there
        writer = threading.Thread(target=send_three)
        writer.start()
        ready = selector.select(timeout=5.0)
        writer.join()
        assert [key.fileobj for key, _ in ready] == [receiver]
        assert selector.pauses == 1
        assert _drain(receiver) == 3
        # something is ready: no pause
        sender.send(b"y")
        assert selector.select(timeout=5.0) and selector.pauses == 1
        _drain(receiver)
        # a poll (the loop has work) never pauses, and an idle timeout still returns
        assert selector.select(timeout=0) == [] and selector.pauses == 1
        pausing.clear()
        assert selector.select(timeout=0.01) == [] and selector.pauses == 2
    finally:
        selector.close()
        receiver.close()
        sender.close()


def test_a_coalescing_loop_runs_timers_and_datagram_endpoints() -> None:
    loop = event_loop(0.001)
    assert isinstance(loop, asyncio.SelectorEventLoop)

    async def main() -> list[bytes]:
        got: list[bytes] = []
        arrived = asyncio.Event()

        class Protocol(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: object) -> None:
                got.append(data)
                arrived.set()

        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            Protocol, local_addr=("127.0.0.1", 0)
        )
        try:
            await asyncio.sleep(0.01)
            sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sender.sendto(b"hello", transport.get_extra_info("sockname"))
            sender.close()
            await asyncio.wait_for(arrived.wait(), 5)
        finally:
            transport.close()
        return got

    try:
        assert loop.run_until_complete(main()) == [b"hello"]
    finally:
        loop.close()
    plain = event_loop(0)
    try:
        assert not isinstance(getattr(plain, "_selector", None), CoalescingSelector)
    finally:
        plain.close()
