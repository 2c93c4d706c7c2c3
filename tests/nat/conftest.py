"""Fixtures for the NAT suite: the namespaced mini-internet, the relay on its public address,
coturn started from deploy/coturn/turnserver.conf. See tests/nat/topology.py for the layout.

Where namespaces, nftables or coturn are unavailable the tests skip and say why; they never pass
without having run.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from relay.sfu import Relay
from smiling_relay.app import RELAY_KEY, create_app
from smiling_relay.config import Config
from storage.base import Storage, to_utc_ms
from synth import netns
from tests.helpers import FakeClock
from tests.nat import topology
from tests.nat.turn_probe import TurnProbe

REPO = Path(__file__).resolve().parents[2]
COTURN_CONF = REPO / "deploy" / "coturn" / "turnserver.conf"
TURN_PORT = 3478
TURNS_PORT = 5349
TURN_REALM = "turn.test.smiling"


class RealClock(FakeClock):
    """Calls take real seconds, and coturn checks credential expiry against the real time."""

    def __call__(self) -> datetime:
        return to_utc_ms(datetime.now(UTC))


@pytest.fixture(scope="session")
def nat_topology() -> Iterator[topology.Topology]:
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(f"NAT tests cannot run: {reason}")
    if shutil.which("nft") is None:
        pytest.skip("NAT tests need nftables' `nft` (./scripts/test installs it)")
    netns.enter_process_netns()
    built = topology.build()
    try:
        yield built
    finally:
        built.teardown()


@pytest.fixture
def clock() -> FakeClock:
    return RealClock()


@dataclass
class RelayServer:
    base_url: str
    app: web.Application

    @property
    def relay(self) -> Relay:
        return self.app[RELAY_KEY]


ServeRelay = Callable[..., Awaitable[RelayServer]]


@pytest.fixture
async def serve_relay(
    nat_topology: topology.Topology, config: Config, storage: Storage
) -> AsyncIterator[ServeRelay]:
    """`await serve_relay(**config_overrides)`: the real app on the relay's public address.

    By default the relay gathers on that address only (RELAY_BIND_IPS), so every candidate it
    offers is one the clients can reach.
    """
    runners: list[web.AppRunner] = []

    async def factory(**overrides: Any) -> RelayServer:
        settings: dict[str, Any] = {
            "relay_bind_ips": (topology.RELAY_IP,),
            # the topology's addresses are documentation and private ranges, refused by default
            "relay_allowed_peer_ranges": topology.PEER_RANGES,
            **overrides,
        }
        app = create_app(dataclasses.replace(config, **settings), storage)
        runner = web.AppRunner(app, handle_signals=False)
        await runner.setup()
        runners.append(runner)
        site = web.TCPSite(runner, topology.RELAY_IP, 0)
        await site.start()
        port = runner.addresses[0][1]
        return RelayServer(base_url=f"http://{topology.RELAY_IP}:{port}", app=app)

    yield factory
    for runner in reversed(runners):
        await runner.cleanup()


@dataclass(frozen=True)
class Coturn:
    secret: str
    realm: str
    address: tuple[str, int]
    log: Path
    ca_file: Path | None = None  # with TLS: the certificate clients must trust

    @property
    def tcp_url(self) -> str:
        return f"turn:{self.address[0]}:{self.address[1]}?transport=tcp"

    @property
    def tls_url(self) -> str:
        return f"turns:{self.address[0]}:{TURNS_PORT}?transport=tcp"

    @property
    def url(self) -> str:
        return f"turn:{self.address[0]}:{self.address[1]}?transport=udp"

    @property
    def stun_url(self) -> str:
        return f"stun:{self.address[0]}:{self.address[1]}"


@pytest.fixture(scope="session")
def turnserver_binary() -> str:
    binary = shutil.which("turnserver")
    if binary is None:
        pytest.skip("coturn's `turnserver` is not installed (./scripts/test installs coturn)")
    return binary


@pytest.fixture
async def coturn(
    nat_topology: topology.Topology, turnserver_binary: str, tmp_path: Path
) -> AsyncIterator[Coturn]:
    """coturn on the public side, configured by deploy/coturn/turnserver.conf.

    The command line only replaces what a test machine lacks or must choose: the secret, the
    realm, addresses and ports, no TLS certificate, temp paths. The relay's public address is in
    a documentation range the production config denies, so it is allowed back explicitly, as a
    deployment does for a relay coturn reaches over a private network.
    """
    async with _run_coturn(turnserver_binary, tmp_path, tls=False) as server:
        yield server


@pytest.fixture
async def coturn_tls(
    nat_topology: topology.Topology, turnserver_binary: str, tmp_path: Path
) -> AsyncIterator[Coturn]:
    """The same coturn, also listening for TURN over TLS on 5349 with a self-signed certificate
    for its address (`ca_file`: what a client is told to trust)."""
    async with _run_coturn(turnserver_binary, tmp_path, tls=True) as server:
        yield server


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "turn-cert.pem", directory / "turn-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "1", "-subj", f"/CN={topology.TURN_IP}",
         "-addext", f"subjectAltName=IP:{topology.TURN_IP}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


@asynccontextmanager
async def _run_coturn(binary: str, tmp_path: Path, *, tls: bool) -> AsyncIterator[Coturn]:
    secret = secrets.token_hex(16)
    log = tmp_path / "coturn.log"
    ca_file: Path | None = None
    if tls:
        ca_file, key = _self_signed_certificate(tmp_path)
        tls_args = [f"--tls-listening-port={TURNS_PORT}", f"--cert={ca_file}", f"--pkey={key}"]
    else:
        tls_args = ["--tls-listening-port=0", "--no-tls"]
    command = [
        binary, "-c", str(COTURN_CONF),
        f"--static-auth-secret={secret}", f"--realm={TURN_REALM}",
        f"--listening-ip={topology.TURN_IP}", f"--relay-ip={topology.TURN_IP}",
        f"--listening-port={TURN_PORT}", *tls_args,
        "--min-port=49160", "--max-port=49260",
        f"--allowed-peer-ip={topology.RELAY_IP}",
        f"--pidfile={tmp_path / 'turnserver.pid'}", f"--userdb={tmp_path / 'turndb'}",
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)  # noqa: ASYNC220
    server = Coturn(secret, TURN_REALM, (topology.TURN_IP, TURN_PORT), log, ca_file)
    try:
        await _wait_for_turn(server, process)
        yield server
    finally:
        process.terminate()
        try:
            await asyncio.to_thread(process.wait, 5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


async def _wait_for_turn(server: Coturn, process: subprocess.Popen[bytes]) -> None:
    """Until coturn answers an Allocate (with its 401 challenge); bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"turnserver exited ({process.returncode}):\n{server.log.read_text()}"
            )
        with contextlib.suppress(TimeoutError, OSError):
            async with TurnProbe(server.address, "probe", "probe", timeout=0.5) as probe:
                outcome = await probe.allocate()
                if outcome.error_code == 401:
                    return
        if loop.time() > deadline:
            raise RuntimeError(f"turnserver did not answer within 10 s:\n{server.log.read_text()}")
        await asyncio.sleep(0.1)
