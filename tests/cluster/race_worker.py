"""One process of the SQLite race (test_sqlite_state.py): acquire the same keys as its rivals,
round after round, each round started by a shared barrier."""

from __future__ import annotations

import asyncio
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier

from cluster.sqlite_state import SqliteState


def race(path: str, owner: str, rounds: int, barrier: Barrier, results: Connection) -> None:
    asyncio.run(_race(path, owner, rounds, barrier, results))


async def _race(path: str, owner: str, rounds: int, barrier: Barrier, results: Connection) -> None:
    # a fresh instance: its first use (creating the tables) is part of the race too
    state = SqliteState(path)
    holders: list[str] = []
    try:
        for i in range(rounds):
            barrier.wait(timeout=30)
            holders.append(await state.acquire(f"call:{i}", owner, 60))
    finally:
        await state.close()
    results.send(holders)
    results.close()


def first_use(paths: list[str], owner: str, barrier: Barrier, results: Connection) -> None:
    """Open each fresh file together with the rivals (the tables and WAL made at once)."""
    asyncio.run(_first_use(paths, owner, barrier, results))


async def _first_use(paths: list[str], owner: str, barrier: Barrier, results: Connection) -> None:
    answers: list[str] = []
    for path in paths:
        state = SqliteState(path)
        barrier.wait(timeout=30)
        try:
            answers.append(await state.acquire("call:1", owner, 60))
        except Exception as exc:  # reported to the test, which fails with it
            answers.append(repr(exc))
        finally:
            await state.close()
    results.send(answers)
    results.close()
