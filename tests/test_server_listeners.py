"""The listeners of `smiling_relay.server`: a worker's shared public port and its internal one;
SIGTERM in `server.run`: drain (the public port stays open), stop.

For the stop, the real app in a real `server.run` subprocess, with a stand-in drain
(`DRAIN_KEY`) that ends when the test says so through the internal listener: while it runs, the
public port still takes connections (readiness tells the load balancer), a connection opened
before still gets answers, the internal port still answers; a second SIGTERM ends the drain at
once. An admin's drain of one worker (tests/cluster) also stops accepting.
"""

from __future__ import annotations

import dataclasses
import http.client
import os
import signal
import ssl
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from smiling_relay import server
from smiling_relay.app import create_app
from smiling_relay.config import Config
from storage.base import Storage
from tests.helpers import TEST_JWT_SECRET
from tests.processes import free_ports, healthz, serve_env, wait_for
from tests.tls_cert import make_self_signed

Start = Callable[..., Awaitable[server.Running]]


@pytest.fixture
async def start(config: Config, storage: Storage) -> AsyncIterator[Start]:
    started: list[server.Running] = []

    async def factory(**overrides: object) -> server.Running:
        cfg = dataclasses.replace(config, host="127.0.0.1", **overrides)  # type: ignore[arg-type]
        running = await server.start(create_app(cfg, storage), cfg)
        started.append(running)
        return running

    yield factory
    for running in reversed(started):
        await running.stop()


async def status(url: str, **kwargs: object) -> int:
    async with aiohttp.ClientSession() as http, http.get(url, **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status


async def test_workers_share_the_public_port(start: Start) -> None:
    port = free_ports(1)
    a = await start(port=port, worker_index=0, internal_port=0)
    b = await start(port=port, worker_index=1, internal_port=0)
    assert a.port == b.port == port
    assert a.internal_port and b.internal_port and a.internal_port != b.internal_port
    for running in (a, b):
        assert await status(f"http://127.0.0.1:{running.internal_port}/healthz") == 200
    assert await status(f"http://127.0.0.1:{port}/healthz") == 200


async def test_workers_share_the_tls_and_redirect_ports(start: Start, tmp_path: Path) -> None:
    cert = make_self_signed(tmp_path)
    port, redirect = free_ports(1), free_ports(1)
    tls = {"tls_cert_file": str(cert.cert_file), "tls_key_file": str(cert.key_file)}
    for index in (0, 1):
        running = await start(port=port, http_redirect_port=redirect, worker_index=index, **tls)
        assert (running.port, running.redirect_port) == (port, redirect)
    context = ssl.create_default_context(cafile=str(cert.cert_file))
    assert await status(f"https://127.0.0.1:{port}/healthz", ssl=context) == 200
    assert await status(f"http://127.0.0.1:{redirect}/x", allow_redirects=False) == 308


async def test_a_single_process_does_not_share_its_port(start: Start) -> None:
    first = await start(port=0)
    assert first.internal_port is None  # no RELAY_INTERNAL_PORT: no internal listener
    with pytest.raises(OSError, match="address already in use"):
        await start(port=first.port)


async def test_the_internal_listener_is_plain_http_beside_tls(start: Start, tmp_path: Path) -> None:
    cert = make_self_signed(tmp_path)
    running = await start(
        port=0, tls_cert_file=str(cert.cert_file), tls_key_file=str(cert.key_file), internal_port=0
    )
    context = ssl.create_default_context(cafile=str(cert.cert_file))
    assert await status(f"https://127.0.0.1:{running.port}/healthz", ssl=context) == 200
    assert await status(f"http://127.0.0.1:{running.internal_port}/healthz") == 200


SERVER = textwrap.dedent(
    """
    import asyncio

    from aiohttp import web

    from smiling_relay import server
    from smiling_relay.app import DRAIN_KEY, create_app
    from smiling_relay.config import Config

    config = Config.from_env()
    app = create_app(config)
    drained = asyncio.Event()

    async def end_drain(request: web.Request) -> web.Response:
        drained.set()
        return web.json_response({"ok": True})

    async def drain() -> None:
        print("test: draining", flush=True)
        await drained.wait()
        print("test: drained", flush=True)

    app.router.add_post("/test/end-drain", end_drain)
    app[DRAIN_KEY] = drain
    server.run(app, config)
    """
)


@dataclass
class Server:
    proc: subprocess.Popen[str]
    port: int
    internal_port: int
    log: Path

    def output(self) -> str:
        return self.log.read_text()


@pytest.fixture
def draining_server(tmp_path: Path) -> Iterator[Server]:
    port, internal = free_ports(1), free_ports(1)
    env = serve_env(
        tmp_path,
        JWT_SECRET=TEST_JWT_SECRET,
        HOST="127.0.0.1",
        PORT=str(port),
        RELAY_INTERNAL_PORT=str(internal),
        RELAY_WORKERS="1",
    )
    log = tmp_path / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", SERVER],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    server = Server(proc, port, internal, log)
    try:
        wait_for(lambda: healthz(port) and healthz(internal), "the server", 60)
        yield server
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def get(conn: http.client.HTTPConnection, path: str = "/healthz") -> int:
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    return response.status


def refused(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    try:
        conn.connect()
    except ConnectionRefusedError:
        return True
    conn.close()
    return False


def test_sigterm_drains_then_exits_0(draining_server: Server) -> None:
    s = draining_server
    before = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    assert get(before) == 200
    assert before.sock is not None
    local = before.sock.getsockname()

    s.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "test: draining" in s.output(), "the drain to start")
    assert not refused(s.port)  # reconnects to calls held here, and /readyz, still answer
    assert get(before) == 200  # one already open is still served, on the same connection
    assert before.sock is not None and before.sock.getsockname() == local
    assert healthz(s.internal_port)  # the internal listener stays for the drain
    assert s.proc.poll() is None

    internal = http.client.HTTPConnection("127.0.0.1", s.internal_port, timeout=5)
    internal.request("POST", "/test/end-drain")
    assert internal.getresponse().status == 200
    assert s.proc.wait(30) == 0, s.output()
    assert "test: drained" in s.output()
    before.close()


def test_a_second_sigterm_stops_during_the_drain(draining_server: Server) -> None:
    s = draining_server
    s.proc.send_signal(signal.SIGTERM)
    wait_for(lambda: "test: draining" in s.output(), "the drain to start")
    assert s.proc.poll() is None  # the drain holds the process
    os.kill(s.proc.pid, signal.SIGTERM)
    assert s.proc.wait(30) == 0, s.output()
    assert "SIGTERM during the drain: stopping now" in s.output()
    assert "test: drained" not in s.output()
