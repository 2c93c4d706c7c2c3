"""`SqliteState` beyond the shared contract: one file shared by processes, atomically."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from cluster.sqlite_state import SWEEP_EVERY, SqliteState
from cluster.state import NodeStatus, StateUnavailable
from tests.cluster.conftest import FakeClock
from tests.cluster.race_worker import first_use, race

ROUNDS = 50
STARTING = 4
FRESH_FILES = 100


def run_together(
    target: Callable[..., None],
    owners: Sequence[str],
    args_of: Callable[[str], tuple[Any, ...]],
    what: str,
) -> list[Any]:
    """Run `target(*args_of(owner), barrier, send)` in one spawned process per owner, released
    together by the barrier; what each sent, in the owners' order. All must exit 0."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(len(owners))
    pipes = [ctx.Pipe(duplex=False) for _ in owners]
    procs = [
        ctx.Process(target=target, args=(*args_of(owner), barrier, send))
        for owner, (_, send) in zip(owners, pipes, strict=True)
    ]
    for proc in procs:
        proc.start()
    try:
        results = []
        for receive, _ in pipes:
            assert receive.poll(60), f"a {what} process sent no result within 60 s"
            results.append(receive.recv())
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    assert [proc.exitcode for proc in procs] == [0] * len(owners)
    return results


def test_two_processes_racing_for_a_lease_get_exactly_one_winner(tmp_path: Path) -> None:
    path = str(tmp_path / "cluster.db")
    owners = ("worker-1", "worker-2")
    results = run_together(race, owners, lambda owner: (path, owner, ROUNDS), "racing")
    first, second = results
    assert len(first) == len(second) == ROUNDS
    # each round: both saw the same holder, one of them, and so exactly one won
    disputed = [(i, a, b) for i, (a, b) in enumerate(zip(first, second, strict=True)) if a != b]
    assert disputed == [], "rounds where each process was told a different holder"
    assert set(first) <= set(owners)
    wins = {owner: sum(holder == owner for holder in first) for owner in owners}
    assert sum(wins.values()) == ROUNDS
    # the file agrees with what the processes were told
    with sqlite3.connect(path) as conn:
        rows = dict(conn.execute("SELECT key, owner FROM leases").fetchall())
    assert rows == {f"call:{i}": first[i] for i in range(ROUNDS)}


def test_workers_starting_together_on_a_fresh_file_all_get_an_answer(tmp_path: Path) -> None:
    # the first use creates the tables and switches the file to WAL, in every process at once
    paths = [str(tmp_path / f"fresh-{i}.db") for i in range(FRESH_FILES)]
    owners = [f"worker-{i}" for i in range(STARTING)]
    answers = run_together(first_use, owners, lambda owner: (paths, owner), "starting")
    for i in range(FRESH_FILES):
        holders = {answer[i] for answer in answers}
        assert len(holders) == 1 and holders <= set(owners), (paths[i], holders)


async def test_two_instances_on_one_file_share_the_state(tmp_path: Path) -> None:
    a, b = SqliteState(tmp_path / "c.db"), SqliteState(tmp_path / "c.db")
    try:
        assert await a.acquire("call:1", "node-a", 60) == "node-a"
        assert await b.acquire("call:1", "node-b", 60) == "node-a"
        await b.heartbeat(NodeStatus("node-b", "http://b"), 60)
        assert [n.node_id for n in await a.nodes()] == ["node-b"]
        assert (await a.hit("k", 2, 60, 1000.0)).count == 1
        assert (await b.hit("k", 2, 60, 1000.5)).count == 2
        assert not (await a.hit("k", 2, 60, 1001.0)).allowed
    finally:
        await a.close()
        await b.close()


async def test_a_file_locked_too_long_is_unavailable_then_recovers(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    state = SqliteState(path, busy_timeout=0.2)
    assert await state.acquire("call:1", "node-a", 60) == "node-a"
    locker = sqlite3.connect(path, isolation_level=None)
    try:
        locker.execute("BEGIN EXCLUSIVE")  # a stuck process holding the write lock
        started = time.monotonic()
        with pytest.raises(StateUnavailable, match="locked"):
            await state.acquire("call:2", "node-a", 60)
        assert time.monotonic() - started < 2.0
        with pytest.raises(StateUnavailable):
            await state.hit("k", 3, 60, 1000.0)
        assert await state.ping() is False
        locker.execute("ROLLBACK")
        assert await state.ping() is True
        assert await state.acquire("call:2", "node-a", 60) == "node-a"
        assert await state.holder("call:1") == "node-a"  # nothing was lost
    finally:
        locker.close()
        await state.close()


async def test_a_file_that_cannot_be_opened_is_unavailable(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "missing-dir" / "c.db")
    try:
        with pytest.raises(StateUnavailable):
            await state.holder("call:1")
        (tmp_path / "missing-dir").mkdir()  # the next use opens it
        assert await state.acquire("call:1", "node-a", 60) == "node-a"
    finally:
        await state.close()


async def test_expired_rows_are_swept_by_later_writes(tmp_path: Path) -> None:
    clock = FakeClock()
    path = tmp_path / "c.db"
    state = SqliteState(path, clock=clock)
    try:
        await state.acquire("old", "node-a", 5)
        await state.heartbeat(NodeStatus("node-old", "http://old"), 5)
        await state.hit("k", 3, 5, clock.now)
        clock.advance(SWEEP_EVERY + 1)
        await state.acquire("new", "node-a", 60)
        await state.hit("k2", 3, 5, clock.now)
        with sqlite3.connect(path) as conn:
            assert conn.execute("SELECT key FROM leases").fetchall() == [("new",)]
            assert conn.execute("SELECT node_id FROM nodes").fetchall() == []
            assert conn.execute("SELECT key FROM hits").fetchall() == [("k2",)]
    finally:
        await state.close()


async def test_closed_state_is_unavailable(tmp_path: Path) -> None:
    state = SqliteState(tmp_path / "c.db")
    await state.acquire("call:1", "node-a", 60)
    await state.close()
    with pytest.raises(StateUnavailable):
        await state.holder("call:1")
    await state.close()  # twice is fine
