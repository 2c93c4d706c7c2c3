"""A `CallClient` on a thread and event loop of its own, optionally inside another network
namespace (a client behind an impaired link, synth/impair.py), driven from the caller's loop.

    remote = ThreadedClient(namespace="synth1234")
    remote.start()
    client = await remote.run(make_client())        # built and run on the remote loop
    await remote.run(client.join(room_id))
    remote.stop()

Coroutines handed to `run` execute on the remote loop; plain counters of the client (probes,
`StreamCounter`s) can be read from any thread.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from synth import netns

T = TypeVar("T")


class ThreadedClient:
    def __init__(self, namespace: str | None = None, name: str = "remote-client") -> None:
        self.namespace = namespace
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def start(self, timeout: float = 10.0) -> None:
        self._thread = threading.Thread(target=self._main, name=self._name, daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the client thread did not start")
        if self._error is not None:
            raise self._error

    def _main(self) -> None:
        try:
            if self.namespace is not None:
                netns.setns(f"/run/netns/{self.namespace}")
            self._loop = asyncio.new_event_loop()
        except BaseException as exc:  # reported to the starting thread
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.close()

    async def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:  # noqa: ASYNC109
        """Run `coro` on the client's loop; its result (or exception) here."""
        assert self._loop is not None, "start() first"
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return await asyncio.wait_for(asyncio.wrap_future(future), timeout)

    def stop(self, timeout: float = 10.0) -> None:
        if self._loop is not None and self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(timeout)
