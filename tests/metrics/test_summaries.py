"""Crash-safe call summaries (metrics/summaries.py): checkpoints while a call runs, the final
summary over them, and the recovery of a dead node's calls as cut short, counted once, with
two `Metrics` on one store (real SQLite file, MongoDB through mongomock-motor)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from api.keys import SERVICE_KEY
from metrics.keys import METRICS_KEY
from metrics.setup import Metrics
from storage.base import Storage
from storage.sqlite import SQLiteStorage
from tests.conftest import MakeClient
from tests.helpers import BookingFactory
from tests.metrics.conftest import FakeRelay
from tests.metrics.test_app import ClientFactory, admin_headers, make_app, metric, wait_for
from tests.relay.helpers import open_room
from tests.signaling.helpers import join, logged_problems

INTERVAL = 30.0  # the checkpoint interval of the Metrics driven by hand below


async def test_checkpoints_while_the_call_runs_then_the_final_summary_over_them(
    aiohttp_client: ClientFactory, fake_relay: FakeRelay, tmp_path: Path
) -> None:
    app = make_app(
        fake_relay,
        tmp_path / "db.sqlite3",
        node="host-w0",
        checkpoint_interval=0.2,
        recovery_interval=0.2,
    )
    client = await aiohttp_client(app)
    storage = client.app[SERVICE_KEY].storage
    metrics = client.app[METRICS_KEY]
    opened = time.time() - 1
    fake_relay.opened["room-ck"] = opened
    now = time.monotonic()
    streams = [
        fake_relay.add("room-ck", "sA", "audio", "in", started_at=now, codec="opus"),
        fake_relay.add("room-ck", "sB", "audio", "out", source="sA", started_at=now),
    ]

    async def flowing_and_checkpointed() -> list[dict[str, Any]]:
        for s in streams:
            s.bytes += 400
            s.packets += 5
        return await storage.find_call_metrics({"period": "call", "roomId": "room-ck"})

    (first,) = await wait_for(flowing_and_checkpointed, what="a checkpoint of the open call")
    assert first["status"] == "in-progress"
    assert first["node"] == "host-w0"
    assert first["endReason"] is None
    assert first["checkpointAt"] == first["endedAt"]

    async def refreshed() -> dict[str, Any] | None:
        (doc,) = await flowing_and_checkpointed()
        return doc if doc["checkpointAt"] > first["checkpointAt"] else None

    second = await wait_for(refreshed, what="a later checkpoint over the first")
    assert second["durationSeconds"] > first["durationSeconds"]
    # The recovery pass runs every 0.2 s too: this process's own open call is never stale.
    assert second["status"] == "in-progress"
    # Checkpoints are not counted.
    assert await storage.find_call_metrics({"period": "hourly"}) == []
    resp = await client.get("/api/admin/metrics/calls/room-ck", headers=admin_headers())
    assert resp.status == 200
    (shown,) = (await resp.json())["data"]["calls"]
    assert shown["status"] == "in-progress"

    fake_relay.close("room-ck", opened_at_wall=opened, setup_times=(0.2, 0.3))

    async def final() -> dict[str, Any] | None:
        docs = await storage.find_call_metrics({"period": "call", "roomId": "room-ck"})
        assert len(docs) == 1, docs  # the same document: the checkpoint's key is the final's
        return docs[0] if docs[0]["status"] == "complete" else None

    done = await wait_for(final, what="the final summary over the checkpoint")
    assert done["endReason"] == "closed"
    assert done["completed"] is True
    (hour,) = await storage.find_call_metrics({"period": "hourly"})
    assert hour["totalCalls"] == 1
    text = await (await client.get("/metrics")).text()
    assert metric(text, "smiling_relay_summary_checkpoints_total", result="stored")
    assert metric(text, "smiling_relay_call_summaries_total", result="stored") == 1
    assert metric(text, "smiling_relay_node_info", node="host-w0") == 1
    # No checkpoint comes back over the final one.
    assert await metrics.checkpoint() == 0
    (after,) = await storage.find_call_metrics({"period": "call", "roomId": "room-ck"})
    assert after["status"] == "complete"


# -- recovery, two nodes on one store ---------------------------------------------------------


@dataclass
class Stores:
    """Separate storage objects over the same data, as two processes have."""

    open: Callable[[], Awaitable[Storage]]


@pytest.fixture(params=["sqlite", "mongomock"])
async def stores(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Stores]:
    opened: list[Storage] = []
    if request.param == "sqlite":

        def make() -> Storage:
            return SQLiteStorage(tmp_path / "shared.sqlite3")
    else:
        from mongomock_motor import AsyncMongoMockClient

        from storage.mongo import MongoStorage

        database: Any = AsyncMongoMockClient()["shared"]

        def make() -> Storage:
            return MongoStorage(database)

    async def open_one() -> Storage:
        store = make()
        await store.initialize()
        opened.append(store)
        return store

    yield Stores(open_one)
    for store in opened:
        await store.close()


@dataclass
class Wall:
    """A wall clock `later` seconds ahead of the real one (adjustable while a test runs)."""

    later: float = 0.0

    def __call__(self) -> float:
        return time.time() + self.later


def node(
    store: Storage,
    name: str,
    *,
    relay: FakeRelay | None = None,
    live: set[str] | None = None,
    later: float | Wall = 0.0,
    live_nodes: Callable[[], Awaitable[set[str]]] | None = None,
) -> Metrics:
    """A node's Metrics; `later` shifts its wall clock (others' checkpoints look `later` s
    old to it)."""

    async def live_set() -> set[str]:
        assert live is not None
        return set(live)

    return Metrics(
        relay=lambda: relay,
        store=lambda: store,
        node=name,
        live_nodes=live_nodes or (live_set if live is not None else None),
        checkpoint_interval=INTERVAL,
        wall=later if isinstance(later, Wall) else Wall(later),
    )


async def run_call(metrics: Metrics, relay: FakeRelay, room: str) -> None:
    """Two sampling passes with media on `room`, then one checkpoint of it."""
    relay.opened[room] = time.time() - 5
    now = time.monotonic()
    s = relay.add(room, f"{room}-a", "audio", "in", started_at=now - 2, codec="opus")
    p = relay.add(room, f"{room}-b", "audio", "in", role="psychologist", started_at=now - 2)
    metrics.sample_once()
    s.bytes, s.packets, p.bytes, p.packets = 4000, 50, 4000, 50
    metrics.sample_once()
    assert await metrics.checkpoint() >= 1


async def call_doc(store: Storage, room: str) -> dict[str, Any]:
    (doc,) = await store.find_call_metrics({"period": "call", "roomId": room})
    return doc


async def hourly_calls(store: Storage) -> int:
    return sum(d.get("totalCalls", 0) for d in await store.find_call_metrics({"period": "hourly"}))


async def test_a_dead_nodes_call_is_cut_short_exactly_once(stores: Stores) -> None:
    relay = FakeRelay()
    dead = node(await stores.open(), "host-w9", relay=relay)
    await run_call(dead, relay, "room-dead")
    live_relay = FakeRelay()
    alive = node(await stores.open(), "host-w2", relay=live_relay, live={"host-w2"})
    await run_call(alive, live_relay, "room-live")
    checkpoint = (await call_doc(await stores.open(), "room-dead"))["checkpointAt"]

    # Two live nodes, each with its own store object, run the pass at once, 100 s later.
    fleet = {"host-w0", "host-w1", "host-w2"}
    one = node(await stores.open(), "host-w0", live=fleet, later=100)
    two = node(await stores.open(), "host-w1", live=fleet, later=100)
    closed = await asyncio.gather(one.recover(), two.recover())
    assert sorted(closed) == [0, 1]

    store = await stores.open()
    doc = await call_doc(store, "room-dead")
    assert doc["status"] == "cut-short"
    assert doc["endReason"] == "cut-short"
    assert doc["endedAt"] == checkpoint  # the last checkpoint is where it ends
    assert doc["completed"] is True  # two participants had media
    assert doc["recoveredBy"] in fleet
    # A live node's checkpoint stays, however old.
    assert (await call_doc(store, "room-live"))["status"] == "in-progress"
    assert await hourly_calls(store) == 1
    (hour,) = await store.find_call_metrics({"period": "hourly"})
    assert hour["participants" if False else "totalAttempts"] == 2
    assert hour["successfulConnections"] == 2

    # Later passes find nothing more to do; the count stays one.
    assert list(await asyncio.gather(one.recover(), two.recover())) == [0, 0]
    assert await hourly_calls(store) == 1
    # A late checkpoint from the "dead" node cannot reopen it.
    assert await dead.checkpoint() == 0
    assert (await call_doc(store, "room-dead"))["status"] == "cut-short"
    # Its final summary (it lived after all) keeps the better figures, counted no more.
    dead.on_call_closed(
        relay.close("room-dead", opened_at_wall=relay.opened["room-dead"], setup_times=(0.1, 0.2))
    )
    await wait_for(
        lambda: _status_is(store, "room-dead", "complete"), what="the final over the cut-short"
    )
    assert await hourly_calls(store) == 1
    assert (await call_doc(store, "room-dead"))["recoveredBy"] in fleet


async def _status_is(store: Storage, room: str, status: str) -> bool:
    return bool((await call_doc(store, room))["status"] == status)


async def test_a_fresh_checkpoint_or_an_unknown_fleet_cuts_nothing(stores: Stores) -> None:
    relay = FakeRelay()
    dead = node(await stores.open(), "host-w9", relay=relay)
    await run_call(dead, relay, "room-x")

    # Younger than two checkpoint intervals: its node may just be late.
    young = node(await stores.open(), "host-w0", live={"host-w0"}, later=INTERVAL)
    assert await young.recover() == 0

    # The shared state is unreachable: nobody knows who is dead, nothing is cut short.
    async def outage() -> set[str]:
        raise ConnectionError("redis down")

    blind = node(await stores.open(), "host-w0", later=100, live_nodes=outage)
    assert await blind.recover() == 0
    store = await stores.open()
    assert (await call_doc(store, "room-x"))["status"] == "in-progress"
    assert await hourly_calls(store) == 0


async def test_one_process_recovers_what_it_does_not_hold(stores: Stores) -> None:
    """Without a fleet (live_nodes None): a previous process's checkpoint is stale once older
    than two intervals; this process's own open call never is."""
    relay = FakeRelay()
    earlier = node(await stores.open(), "single", relay=relay)
    await run_call(earlier, relay, "room-before-crash")

    now_relay = FakeRelay()
    wall = Wall()
    current = node(await stores.open(), "single", relay=now_relay, later=wall)
    await run_call(current, now_relay, "room-mine")
    wall.later = 100  # both checkpoints are old now; only one is of a call held here
    assert await current.recover() == 1
    store = await stores.open()
    assert (await call_doc(store, "room-before-crash"))["status"] == "cut-short"
    assert (await call_doc(store, "room-mine"))["status"] == "in-progress"
    assert await hourly_calls(store) == 1


async def test_a_restarted_node_recovers_its_earlier_process(stores: Stores) -> None:
    """A worker the supervisor restarted comes back under the same node id, which is live:
    the earlier process's checkpoint (another instance) is stale all the same."""
    store = await stores.open()
    relay2 = FakeRelay()
    crashed = node(await stores.open(), "host-w0", relay=relay2)
    await run_call(crashed, relay2, "room-w0")
    restarted = node(await stores.open(), "host-w0", live={"host-w0"}, later=100)
    assert await restarted.recover() == 1
    assert (await call_doc(store, "room-w0"))["status"] == "cut-short"


async def test_a_call_the_sampler_never_saw_is_stored_before_shutdown_returns(
    make_client: MakeClient,
    booking_factory: BookingFactory,
    storage: Storage,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The relay closes the calls still open after metrics has stopped sampling; their
    summaries are awaited before storage can close (once written after it, and lost)."""
    client = await make_client(metrics_sample_interval=3600.0)  # one pass, at start-up
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    ws = await join(client, booking.client_token, room_id)  # seated after that pass
    assert room_id not in client.app[METRICS_KEY].sampler.calls
    await ws.close()  # the seat is held for the grace period: the call is still open
    await client.close()  # the app's shutdown
    (summary,) = await storage.find_call_metrics({"period": "call", "roomId": room_id})
    assert summary["endReason"] == "closed", summary
    assert logged_problems(caplog) == []
