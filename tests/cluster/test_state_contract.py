"""Every `ClusterState` backend keeps the same contract (cluster/state.py): leases taken
set-if-absent with an expiry, renewed by their owner, released by compare-and-delete; node
heartbeats that expire; a shared sliding-window counter."""

from __future__ import annotations

from cluster.state import NodeStatus
from tests.cluster.conftest import Backend

LONG = 60.0


def status(node_id: str, **changes: object) -> NodeStatus:
    fields: dict[str, object] = {
        "internal_url": f"http://127.0.0.1:9000/{node_id}",
        "calls": 2,
        "streams": 8,
        "capacity": 40,
        "started_at": 1_700_000_000.5,
        "updated_at": 1_700_000_100.25,
        "rooms": ("room-a", "room-b"),
    }
    fields.update(changes)
    return NodeStatus(node_id, **fields)  # type: ignore[arg-type]


async def test_acquire_is_set_if_absent(backend: Backend) -> None:
    state = backend.state
    assert backend.state.backend == backend.name
    assert await state.holder("call:1") is None
    assert await state.acquire("call:1", "node-a", LONG) == "node-a"
    assert await state.acquire("call:1", "node-b", LONG) == "node-a"  # the first keeps it
    assert await state.holder("call:1") == "node-a"
    assert await state.acquire("call:1", "node-a", LONG) == "node-a"  # its own: renewed
    assert await state.acquire("call:2", "node-b", LONG) == "node-b"  # keys are independent


async def test_a_lease_expires_and_can_then_be_taken(backend: Backend) -> None:
    state = backend.state
    assert await state.acquire("call:1", "node-a", backend.short_ttl) == "node-a"
    assert await state.acquire("call:1", "node-b", LONG) == "node-a"

    async def gone() -> bool:
        return await state.holder("call:1") is None

    await backend.outlive(gone, "the lease to expire")
    assert await state.acquire("call:1", "node-b", LONG) == "node-b"
    assert await state.holder("call:1") == "node-b"


async def test_acquiring_again_renews_the_expiry(backend: Backend) -> None:
    state = backend.state
    await state.acquire("call:1", "node-a", backend.short_ttl)
    await state.acquire("reference", "node-a", backend.short_ttl)
    assert await state.acquire("call:1", "node-a", LONG) == "node-a"

    async def reference_gone() -> bool:
        return await state.holder("reference") is None

    await backend.outlive(reference_gone, "the unrenewed lease to expire")
    assert await state.holder("call:1") == "node-a"


async def test_refresh_renews_retakes_and_reports_lost_keys(backend: Backend) -> None:
    state = backend.state
    await state.acquire("a", "node-a", backend.short_ttl)
    await state.acquire("b", "node-a", backend.short_ttl)
    await state.acquire("stolen", "node-a", backend.short_ttl)
    await state.acquire("theirs", "node-b", LONG)
    assert await state.refresh([], "node-a", LONG) == set()
    # "a" renewed; "lost" (no holder: the state lost it) taken again; "theirs" is node-b's
    held = await state.refresh(["a", "lost", "theirs"], "node-a", LONG)
    assert held == {"a", "lost"}
    assert await state.holder("lost") == "node-a"
    assert await state.holder("theirs") == "node-b"

    async def unrenewed_gone() -> bool:
        return await state.holder("b") is None and await state.holder("stolen") is None

    await backend.outlive(unrenewed_gone, "the unrenewed leases to expire")
    assert await state.holder("a") == "node-a"  # the refresh outlived the short ttl
    assert await state.acquire("stolen", "node-b", LONG) == "node-b"
    # node-a lost "stolen" to node-b meanwhile: the refresh says so and changes nothing
    assert await state.refresh(["a", "b", "stolen"], "node-a", LONG) == {"a", "b"}
    assert await state.holder("stolen") == "node-b"


async def test_release_is_compare_and_delete(backend: Backend) -> None:
    state = backend.state
    await state.acquire("call:1", "node-a", LONG)
    assert await state.release("call:1", "node-b") is False
    assert await state.holder("call:1") == "node-a"
    assert await state.release("call:1", "node-a") is True
    assert await state.holder("call:1") is None
    assert await state.release("call:1", "node-a") is False
    assert await state.release("never", "node-a") is False
    assert await state.acquire("call:1", "node-b", LONG) == "node-b"


async def test_heartbeats_are_live_until_they_expire(backend: Backend) -> None:
    state = backend.state
    assert await state.nodes() == []
    a, b = status("node-a"), status("node-b", draining=True, rooms=())
    await state.heartbeat(b, backend.short_ttl)
    await state.heartbeat(a, LONG)
    assert await state.nodes() == [a, b]
    newer = status("node-a", calls=3, rooms=("room-a", "room-b", "room-c"))
    await state.heartbeat(newer, LONG)
    assert await state.nodes() == [newer, b]  # replaced, not added

    async def only_a() -> bool:
        return [n.node_id for n in await state.nodes()] == ["node-a"]

    await backend.outlive(only_a, "node-b's heartbeat to expire")
    assert await state.nodes() == [newer]
    await state.heartbeat(b, LONG)  # a node that comes back is live again
    assert [n.node_id for n in await state.nodes()] == ["node-a", "node-b"]


async def test_forget_removes_a_heartbeat(backend: Backend) -> None:
    state = backend.state
    await state.heartbeat(status("node-a"), LONG)
    await state.heartbeat(status("node-b"), LONG)
    await state.forget("node-a")
    await state.forget("never-seen")
    assert [n.node_id for n in await state.nodes()] == ["node-b"]


async def test_hits_slide_over_the_window(backend: Backend) -> None:
    state = backend.state
    t = 1_000_000.0
    counted = [await state.hit("user:x", 3, 60, t + i) for i in range(3)]
    assert [(h.allowed, h.count, h.oldest) for h in counted] == [
        (True, 1, t + 60),
        (True, 2, t + 60),
        (True, 3, t + 60),
    ]
    refused = await state.hit("user:x", 3, 60, t + 10)
    assert (refused.allowed, refused.count, refused.oldest) == (False, 3, t + 60)
    peek = await state.count("user:x", 60, t + 10)
    assert (peek.allowed, peek.count, peek.oldest) == (True, 3, t + 60)
    assert (await state.hit("user:y", 3, 60, t + 10)).count == 1  # keys are independent
    # at t + 60 the first hit leaves the window (a hit exactly `window` old is out)
    assert (await state.count("user:x", 60, t + 60)).count == 2
    slid = await state.hit("user:x", 3, 60, t + 60)
    assert (slid.allowed, slid.count, slid.oldest) == (True, 3, t + 61)
    assert not (await state.hit("user:x", 3, 60, t + 60.5)).allowed
    # the refusals were not counted: once the window is past, the whole budget is back
    later = t + 60 + 60
    assert await state.count("user:x", 60, later) == await state.count("never", 60, later)
    assert (await state.count("never", 60, later)).count == 0
    assert (await state.count("never", 60, later)).oldest == later
    assert [(await state.hit("user:x", 3, 60, later)).allowed for _ in range(4)] == [
        True,
        True,
        True,
        False,
    ]


async def test_hits_keep_sub_second_precision(backend: Backend) -> None:
    state = backend.state
    t = 1_700_000_000.123456
    await state.hit("k", 5, 1.5, t)
    await state.hit("k", 5, 1.5, t + 0.000001)
    assert (await state.count("k", 1.5, t + 1.5)).count == 1  # the first just left
    assert (await state.count("k", 1.5, t + 1.5)).oldest == t + 0.000001 + 1.5


async def test_ping_answers(backend: Backend) -> None:
    assert await backend.state.ping() is True
