"""Placement over the in-memory state with an injected clock: which node takes a call."""

from __future__ import annotations

import pytest

from cluster.memory_state import MemoryState
from cluster.node import NodeAgent
from cluster.placement import NoNodeAvailable, PlacementSettings, lease_key
from cluster.state import NodeStatus, StateUnavailable


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A node agent whose rooms and streams the test sets."""

    def __init__(self, state: MemoryState, clock: Clock, node_id: str, capacity: int = 10):
        self.rooms: list[str] = []
        self.streams = 0
        self.agent = NodeAgent(
            state,
            node_id=node_id,
            internal_url=f"http://{node_id}.internal",
            capacity=capacity,
            rooms=lambda: self.rooms,
            streams=lambda: self.streams,
            settings=PlacementSettings(ramp_calls=3, ramp_window=10.0),
            clock=clock,
        )

    async def where(self, room_id: str) -> str:
        node = await self.agent.locate(room_id)
        return self.agent.node_id if node is None else node.node_id


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def state(clock: Clock) -> MemoryState:
    return MemoryState(clock=clock)


async def test_a_new_call_goes_to_the_least_loaded_node_and_stays_there(
    state: MemoryState, clock: Clock
) -> None:
    a, b = Node(state, clock, "a"), Node(state, clock, "b")
    a.rooms = ["r1", "r2"]
    await a.agent.beat()
    await b.agent.beat()
    assert await a.where("new") == "b"  # b holds nothing
    assert await state.holder(lease_key("new")) == "b"
    # asked again, from either side, the answer is the holder
    assert await a.where("new") == "b"
    assert await b.where("new") == "b"


async def test_draining_full_and_stale_nodes_are_skipped(state: MemoryState, clock: Clock) -> None:
    a, b, c = Node(state, clock, "a", capacity=2), Node(state, clock, "b"), Node(state, clock, "c")
    a.rooms = ["x", "y"]  # at its cap
    for node in (a, b, c):
        await node.agent.beat()
    await b.agent.drain()
    assert await a.where("r") == "c"
    clock.now += 5.0  # c's heartbeat is now stale (node_ttl 4 s); a beats again
    await a.agent.beat()
    with pytest.raises(NoNodeAvailable):
        await a.where("r2")  # a is full, b draining, c stale
    assert await state.holder(lease_key("r2")) is None  # a refusal places nothing


async def test_a_dead_holders_call_is_placed_again_at_once(
    state: MemoryState, clock: Clock
) -> None:
    a, b = Node(state, clock, "a"), Node(state, clock, "b")
    b.rooms = ["call"]
    await a.agent.beat()
    await b.agent.beat()
    assert await a.where("call") == "b"
    clock.now += 4.5  # b died: no heartbeat; its lease (5 s) has not expired yet
    await a.agent.beat()
    assert await a.where("call") == "a"
    assert await state.holder(lease_key("call")) == "a"


async def test_a_fresh_node_is_ramped_up_not_handed_a_burst(
    state: MemoryState, clock: Clock
) -> None:
    busy, fresh = (
        Node(state, clock, "busy", capacity=100),
        Node(state, clock, "fresh", capacity=100),
    )
    busy.rooms = [f"old{i}" for i in range(20)]
    await busy.agent.beat()
    await fresh.agent.beat()
    placed = [await busy.where(f"new{i}") for i in range(5)]
    assert placed == ["fresh"] * 3 + ["busy"] * 2  # ramp: 3 per 10 s on one node
    clock.now += 10.5
    await busy.agent.beat()
    await fresh.agent.beat()
    assert await busy.where("later") == "fresh"


async def test_a_burst_within_one_heartbeat_spreads_over_the_nodes(
    state: MemoryState, clock: Clock
) -> None:
    a, b = Node(state, clock, "a", capacity=100), Node(state, clock, "b", capacity=100)
    await a.agent.beat()
    await b.agent.beat()
    # no heartbeat in between: both still look empty
    assert sorted([await a.where(f"burst{i}") for i in range(4)]) == ["a", "a", "b", "b"]


async def test_the_ramp_spreads_a_burst_and_refuses_nothing(
    state: MemoryState, clock: Clock
) -> None:
    alone = Node(state, clock, "alone", capacity=100)
    await alone.agent.beat()
    assert [await alone.where(f"burst{i}") for i in range(6)] == ["alone"] * 6


async def test_a_call_held_here_is_found_without_the_state(
    state: MemoryState, clock: Clock
) -> None:
    a = Node(state, clock, "a")
    a.rooms = ["live"]
    await a.agent.beat()

    async def down(*args: object, **kwargs: object) -> list[NodeStatus]:
        raise StateUnavailable("down")

    state.nodes = down  # type: ignore[method-assign]
    assert await a.agent.locate("live") is None  # reconnecting to a live call works
    with pytest.raises(StateUnavailable):
        await a.agent.locate("new")
    await a.agent.beat()  # logged, not raised
    clock.now += 5
    assert not a.agent.reachable


async def test_a_draining_node_lets_go_of_an_empty_call(state: MemoryState, clock: Clock) -> None:
    a, b = Node(state, clock, "a"), Node(state, clock, "b")
    await a.agent.beat()
    await b.agent.beat()
    await state.acquire(lease_key("emptied"), "a", 5.0)  # a held it; everyone left
    await a.agent.drain()
    assert await b.where("emptied") == "b"
