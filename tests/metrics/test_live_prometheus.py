"""A real Prometheus scrapes the relay during a live call between two real aiortc peers.

* every PromQL expression of the Grafana dashboard is evaluated through Prometheus' HTTP API
  and returns data (per-call ones: finite values for this call);
* the per-participant bitrate panels agree with what the peers' own `getStats()` say they sent
  and received (within 20 %);
* when the call ends its series leave `/metrics` and Prometheus' instant queries, and the
  end-of-call summary is stored.

Needs `/usr/bin/prometheus` (Debian package `prometheus`) and root for a network namespace
(synth/netns.py); skipped with the reason otherwise.
"""

from __future__ import annotations

import asyncio
import math
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from storage.base import Storage
from synth import netns
from synth.client import CallClient
from tests.conftest import AppFactory
from tests.helpers import BookingFactory
from tests.metrics import dashboard
from tests.relay.helpers import join_and_publish, open_room, sees

PROMETHEUS = "/usr/bin/prometheus"
SCRAPE_INTERVAL_S = 1
RATE_INTERVAL = "5s"  # what Grafana's $__rate_interval becomes for the panel checks
MEASURE_WINDOW_S = 10  # bitrate comparison window
BITRATE_TOLERANCE = 0.20
# The scrape target's `node` label, as deploy/prometheus/prometheus.yml sets one per worker.
NODE = "host-w0"
RTP_FIXED_HEADER = 12  # getStats bytes are payload only; the relay counts header + payload

pytestmark = [pytest.mark.media, pytest.mark.netns, pytest.mark.timeout(300)]


# -- environment -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def live_netns() -> netns.Netns:
    if not os.access(PROMETHEUS, os.X_OK):
        pytest.skip(f"{PROMETHEUS} is missing: apt-get install prometheus (Debian package)")
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return netns.enter_process_netns()


async def until(
    condition: Callable[[], Awaitable[Any]], what: str, limit: float = 20.0, every: float = 0.2
) -> Any:
    """Poll `condition` until it returns something truthy; fail after `limit` seconds."""
    deadline = time.monotonic() + limit
    last: Any = None
    while True:
        last = await condition()
        if last:
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {limit} s waiting for {what} (last: {last!r})")
        await asyncio.sleep(every)


# Prometheus is started on port 0: it binds a free port itself and logs it, so no port is
# probed for and then raced for.
PROMETHEUS_PORT_ARGS = ("--web.listen-address=127.0.0.1:0", "--log.level=info")


async def listening_port(process: asyncio.subprocess.Process, log_path: Path) -> int:
    """The port a Prometheus started with PROMETHEUS_PORT_ARGS says it listens on."""

    async def listening() -> int | None:
        text = await asyncio.to_thread(log_path.read_text)
        assert process.returncode is None, text
        found = re.search(r'msg="Listening on" address=127\.0\.0\.1:(\d+)', text)
        return int(found[1]) if found else None

    port: int = await until(listening, "Prometheus to say where it listens", limit=30)
    return port


@dataclass
class Prometheus:
    url: str
    session: aiohttp.ClientSession

    async def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        params = {"query": expr}
        if at is not None:
            params["time"] = f"{at:.3f}"
        async with self.session.get(f"{self.url}/api/v1/query", params=params) as resp:
            body = await resp.json()
        assert resp.status == 200 and body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body)
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    async def values(self, expr: str, at: float | None = None) -> dict[str, float]:
        """{label set as text: value} of an instant query."""
        return {
            ",".join(f"{k}={v}" for k, v in sorted(r["metric"].items())): float(r["value"][1])
            for r in await self.query(expr, at)
        }


@pytest.fixture
async def server(
    live_netns: netns.Netns,
    make_app: AppFactory,
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]],
) -> TestServer:
    # `make_app` (and so `storage`) before `aiohttp_server`: the server is torn down first,
    # so the app's shutdown can still write summaries to the storage.
    return await aiohttp_server(make_app())


@pytest.fixture
async def prometheus(server: TestServer, tmp_path: Path) -> AsyncIterator[Prometheus]:
    config = tmp_path / "prometheus.yml"
    config.write_text(
        f"""
global:
  scrape_interval: {SCRAPE_INTERVAL_S}s
  scrape_timeout: {SCRAPE_INTERVAL_S}s
scrape_configs:
  - job_name: relay
    static_configs:
      - targets: ["127.0.0.1:{server.port}"]
        labels:
          node: {NODE}
"""
    )
    log_path = tmp_path / "prometheus.log"
    log = log_path.open("w")
    process = await asyncio.create_subprocess_exec(
        PROMETHEUS,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        *PROMETHEUS_PORT_ARGS,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
    try:
        port = await listening_port(process, log_path)
        prom = Prometheus(f"http://127.0.0.1:{port}", session)

        async def ready() -> bool:
            assert process.returncode is None, log_path.read_text()
            try:
                async with session.get(f"{prom.url}/-/ready") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False

        await until(ready, "Prometheus to be ready", limit=30)
        yield prom
    finally:
        await session.close()
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.close()


# -- peer-side truth ---------------------------------------------------------------------------


async def sent_rtp_bytes(client: CallClient) -> tuple[float, int]:
    """(time, RTP bytes incl. fixed headers) the client's publisher connection has sent."""
    assert client.publisher is not None
    report = await client.publisher.getStats()
    total = sum(
        s.bytesSent + RTP_FIXED_HEADER * s.packetsSent
        for s in report.values()
        if s.type == "outbound-rtp"
    )
    return time.time(), total


def within(measured: float, expected: float, tolerance: float = BITRATE_TOLERANCE) -> bool:
    return expected > 0 and abs(measured - expected) <= tolerance * expected


def find(queries: list[dashboard.Query], title_start: str) -> dashboard.Query:
    return next(q for q in queries if q.panel.startswith(title_start))


# -- the test ----------------------------------------------------------------------------------


async def test_dashboard_queries_against_a_live_call(
    server: TestServer,
    prometheus: Prometheus,
    storage: Storage,
    booking_factory: BookingFactory,
) -> None:
    await until(lambda: prometheus.values('up{job="relay"} == 1'), "Prometheus to scrape the relay")
    # The target's node label wins; the id the process reports stays beside it for joins.
    (info,) = await prometheus.query("smiling_relay_node_info")
    assert info["metric"]["node"] == NODE and info["metric"]["exported_node"], info

    booking = await booking_factory()
    room = await open_room(storage, booking)
    base = str(server.make_url(""))
    alice = CallClient(base, booking.client_token)
    bob = CallClient(base, booking.psychologist_token)
    clients = [alice, bob]
    try:
        for client in clients:
            await client.connect()
        await join_and_publish(alice, room, 1)
        await join_and_publish(bob, room, 2)
        await sees(bob, alice, 1)
        await sees(alice, bob, 2)
        # A REST error, so the error panels have a non-zero series too.
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"{base}/api/video-calls/can-join/not-an-id") as resp,
        ):
            assert resp.status in (400, 401)

        # Wait until the rate() windows are populated: several scrapes with media for the call.
        bytes_in = f'smiling_relay_stream_bytes_total{{call="{room}", direction="in"}}'
        await until(
            lambda: prometheus.values(f"count_over_time({bytes_in}[{RATE_INTERVAL}]) >= 4"),
            "several scrapes of the call",
            limit=30,
        )

        await check_every_dashboard_query(prometheus, room, {alice, bob})
        await check_bitrates(prometheus, room, alice, bob)

        # End the call: both leave; the relay tears the room down.
        for client in clients:
            await client.leave()
    finally:
        for client in clients:
            await client.close()

    await check_series_gone(prometheus, server, room)
    await check_summary(storage, prometheus, room)


async def check_every_dashboard_query(
    prometheus: Prometheus, room: str, clients: set[CallClient]
) -> None:
    sockets = {c.socket_id for c in clients}
    queries = dashboard.queries()
    assert queries
    for query in queries:
        expr = query.render(room, RATE_INTERVAL)

        async def answered(query: dashboard.Query = query, expr: str = expr) -> Any:
            result = await prometheus.query(expr)
            if "by (node)" in expr:  # the fleet row: one series per node, named by its target
                assert all(r["metric"].get("node") == NODE for r in result), (query, result)
            if not query.per_call:
                return result
            finite = [r for r in result if math.isfinite(float(r["value"][1]))]
            for r in finite:
                labels = r["metric"]
                for key in ("participant", "source"):
                    assert labels.get(key, next(iter(sockets))) in sockets, (query, labels)
            return finite

        # Counter-derived series need two scrapes of the stream; gauges from RTCP (RTT, REMB)
        # need the first reports: poll, bounded.
        await until(answered, f"data for panel {query.panel!r} ({query.ref_id}): {expr}")


async def check_bitrates(
    prometheus: Prometheus, room: str, alice: CallClient, bob: CallClient
) -> None:
    """The per-participant bitrate panels against the peers' own counters.

    "in" of a participant must match what that peer's publisher connection sent; "out" of a
    participant (what the relay forwarded to it) must match what the *other* peer sent.
    """
    window = f"{MEASURE_WINDOW_S}s"
    queries = dashboard.queries()
    sent_q = find(queries, "Bitrate sent to the relay").render(room, window)
    fwd_q = find(queries, "Bitrate forwarded to each participant").render(room, window)
    assert alice.socket_id is not None and bob.socket_id is not None
    peers = {alice.socket_id: alice, bob.socket_id: bob}
    other = {alice.socket_id: bob.socket_id, bob.socket_id: alice.socket_id}
    start = {sid: await sent_rtp_bytes(c) for sid, c in peers.items()}
    await asyncio.sleep(MEASURE_WINDOW_S)  # the measurement window itself, not a wait for state
    end = {sid: await sent_rtp_bytes(c) for sid, c in peers.items()}
    at = max(t for t, _ in end.values())
    # Prometheus must hold a scrape at or after the end of the window before we ask about it.
    await until(
        lambda: prometheus.values(f"timestamp(smiling_relay_active_calls) >= {at:.3f}"),
        "a scrape after the measurement window",
    )
    relay_in = {
        r["metric"]["participant"]: float(r["value"][1]) for r in await prometheus.query(sent_q, at)
    }
    relay_out = {
        r["metric"]["participant"]: float(r["value"][1]) for r in await prometheus.query(fwd_q, at)
    }
    peer_sent = {
        sid: (end[sid][1] - start[sid][1]) * 8 / (end[sid][0] - start[sid][0]) for sid in peers
    }
    report = [
        f"{sid}: sent {peer_sent[sid]:.0f} bit/s (getStats); relay in {relay_in.get(sid)}, "
        f"relay out to the other {relay_out.get(other[sid])}"
        for sid in peers
    ]
    print("\n".join(report))  # shown with -s, and on failure
    for sid in peers:
        assert peer_sent[sid] > 50_000, report
        assert within(relay_in[sid], peer_sent[sid]), report
        assert within(relay_out[other[sid]], peer_sent[sid]), report


async def check_series_gone(prometheus: Prometheus, server: TestServer, room: str) -> None:
    async def gone_from_metrics() -> bool:
        async with (
            aiohttp.ClientSession() as http,
            http.get(server.make_url("/metrics")) as resp,
        ):
            text = await resp.text()
        return f'call="{room}"' not in text

    await until(gone_from_metrics, "the call's series to leave /metrics")
    per_call = [q for q in dashboard.queries() if q.per_call]

    async def gone_from_prometheus() -> bool:
        if await prometheus.query(f'{{call="{room}"}}'):
            return False
        for query in per_call:
            if await prometheus.query(query.render(room, RATE_INTERVAL)):
                return False
        return True

    # Prometheus marks series stale at the first scrape that lacks them.
    await until(gone_from_prometheus, "the call's series to go stale in Prometheus")


async def check_summary(storage: Storage, prometheus: Prometheus, room: str) -> None:
    (doc,) = await until(
        lambda: storage.find_call_metrics({"period": "call", "roomId": room}),
        "the end-of-call summary",
    )
    assert doc["completed"] is True
    assert doc["participants"] == 2
    assert doc["participantsWithMedia"] == 2
    assert doc["setupTimeSeconds"]["count"] == 2
    assert doc["bitrate"]["in"]["avgBps"] > 50_000
    assert doc["bitrate"]["out"]["avgBps"] > 50_000
    assert doc["audioMos"] is not None and 1.0 <= doc["audioMos"]["min"] <= 4.5
    assert doc["packetLossPercent"]["in"] is not None
    # The fleet histogram of call durations now has an observation.
    durations = await until(
        lambda: prometheus.values(
            "histogram_quantile(0.5, sum by (le) "
            "(increase(smiling_relay_call_duration_seconds_bucket[24h]))) > 0"
        ),
        "the call duration in Prometheus",
    )
    assert durations
