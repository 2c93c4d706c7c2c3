"""`ClusterState` for one machine's worker processes: one SQLite file they all open.

Every write is one short `BEGIN IMMEDIATE` transaction (the write lock is taken at its start, so
two processes racing for a lease are serialized by SQLite itself); WAL lets reads go on beside a
writer. A lock held longer than the busy timeout (a stuck process, a full disk) raises
`StateUnavailable` rather than stalling a join. The blocking calls run on one thread per instance,
which also owns the connection (sqlite3 connections stay on their thread).

The tables are created on first use, in a transaction, so several workers starting together
create them once. Expired rows read as absent and are swept now and then by the writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from cluster.codec import decode_status, encode_status
from cluster.state import Hits, NodeStatus, StateUnavailable

T = TypeVar("T")

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS leases"
    " (key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS nodes"
    " (node_id TEXT PRIMARY KEY, status TEXT NOT NULL, expires REAL NOT NULL) WITHOUT ROWID",
    # one row per counted hit; `until` (at + window) lets the sweep drop idle keys
    "CREATE TABLE IF NOT EXISTS hits (key TEXT NOT NULL, at REAL NOT NULL, until REAL NOT NULL)",
    "CREATE INDEX IF NOT EXISTS hits_by_key ON hits (key, at)",
)

# Seconds between two sweeps of expired rows by one instance.
SWEEP_EVERY = 30.0


class SqliteState:
    backend = "sqlite"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        busy_timeout: float = 2.0,
    ) -> None:
        self.path = os.fspath(path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cluster-sqlite")
        # Opened, and only ever used, on the executor's thread.
        self._conn: sqlite3.Connection | None = None
        self._next_sweep = 0.0
        # The counters run on their callers' time (`now`), so they are swept on it too.
        self._next_hits_sweep = 0.0

    # -- leases -----------------------------------------------------------------------------

    async def acquire(self, key: str, owner: str, ttl: float) -> str:
        now = self._clock()
        return await self._write(lambda conn: _take(conn, key, owner, now + ttl, now))

    async def refresh(self, keys: Iterable[str], owner: str, ttl: float) -> set[str]:
        keys = list(keys)
        if not keys:
            return set()
        now = self._clock()

        def renew(conn: sqlite3.Connection) -> set[str]:
            return {key for key in keys if _take(conn, key, owner, now + ttl, now) == owner}

        return await self._write(renew)

    async def release(self, key: str, owner: str) -> bool:
        now = self._clock()

        def drop(conn: sqlite3.Connection) -> bool:
            # the owner's expired row goes too; only a live one counts as released
            row = conn.execute(
                "DELETE FROM leases WHERE key = ? AND owner = ? RETURNING expires", (key, owner)
            ).fetchone()
            return row is not None and row[0] > now

        return await self._write(drop)

    async def holder(self, key: str) -> str | None:
        now = self._clock()

        def read(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                "SELECT owner FROM leases WHERE key = ? AND expires > ?", (key, now)
            ).fetchone()
            return None if row is None else str(row[0])

        return await self._read(read)

    # -- heartbeats -------------------------------------------------------------------------

    async def heartbeat(self, status: NodeStatus, ttl: float) -> None:
        text = encode_status(status)
        expires = self._clock() + ttl
        await self._write(
            lambda conn: conn.execute(
                "INSERT OR REPLACE INTO nodes (node_id, status, expires) VALUES (?, ?, ?)",
                (status.node_id, text, expires),
            )
        )

    async def nodes(self) -> list[NodeStatus]:
        now = self._clock()

        def read(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT status FROM nodes WHERE expires > ? ORDER BY node_id", (now,)
            ).fetchall()
            return [str(row[0]) for row in rows]

        return [decode_status(text) for text in await self._read(read)]

    async def forget(self, node_id: str) -> None:
        await self._write(
            lambda conn: conn.execute("DELETE FROM nodes WHERE node_id = ?", (node_id,))
        )

    # -- shared counters --------------------------------------------------------------------

    async def hit(self, key: str, limit: int, window: float, now: float) -> Hits:
        def count_one(conn: sqlite3.Connection) -> Hits:
            conn.execute("DELETE FROM hits WHERE key = ? AND at <= ?", (key, now - window))
            counted, first = conn.execute(
                "SELECT COUNT(*), MIN(at) FROM hits WHERE key = ?", (key,)
            ).fetchone()
            allowed = counted < limit
            if allowed:
                conn.execute("INSERT INTO hits VALUES (?, ?, ?)", (key, now, now + window))
                counted += 1
                first = now if first is None else min(first, now)
            if self._hits_sweep_due(now):
                conn.execute("DELETE FROM hits WHERE until <= ?", (now,))
            return Hits(allowed, counted, now if first is None else first + window)

        return await self._write(count_one)

    async def count(self, key: str, window: float, now: float) -> Hits:
        def read(conn: sqlite3.Connection) -> Hits:
            counted, first = conn.execute(
                "SELECT COUNT(*), MIN(at) FROM hits WHERE key = ? AND at > ?", (key, now - window)
            ).fetchone()
            return Hits(True, counted, now if first is None else first + window)

        return await self._read(read)

    # -- the rest ---------------------------------------------------------------------------

    async def ping(self) -> bool:
        try:
            # the write lock, not a read: WAL readers pass while a stuck writer blocks every join
            await self._write(lambda conn: None)
        except StateUnavailable:
            return False
        return True

    async def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # closed already
            await asyncio.get_running_loop().run_in_executor(self._executor, self._disconnect)
        self._executor.shutdown(wait=False)

    # -- on the executor's thread -----------------------------------------------------------

    async def _read(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(lambda: work(self._connection()))

    async def _write(self, work: Callable[[sqlite3.Connection], T]) -> T:
        return await self._submit(lambda: self._transaction(work))

    async def _submit(self, call: Callable[[], T]) -> T:
        try:
            future = asyncio.get_running_loop().run_in_executor(self._executor, _guarded, call)
        except RuntimeError as exc:  # the executor is shut down
            raise StateUnavailable("the cluster state is closed") from exc
        return await future

    def _transaction(self, work: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._connection()
        try:
            conn.execute("BEGIN IMMEDIATE")
            result = work(conn)
            self._maybe_sweep(conn)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        return result

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._open()
        return self._conn

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=self._busy_timeout, isolation_level=None)
        try:
            self._use_wal(conn)
            # the state is rebuilt by the heartbeats and leases after a power loss: no fsync
            # per commit
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.close()
            raise
        return conn

    def _use_wal(self, conn: sqlite3.Connection) -> None:
        # Switching a new file to WAL takes an exclusive lock, and a process that finds another
        # one switching gets "database is locked" at once, without the busy timeout: several
        # workers starting together would then fail their first use. Retry until the timeout.
        deadline = time.monotonic() + self._busy_timeout
        while True:
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.005)

    def _maybe_sweep(self, conn: sqlite3.Connection) -> None:
        now = self._clock()
        if now < self._next_sweep:
            return
        self._next_sweep = now + SWEEP_EVERY
        conn.execute("DELETE FROM leases WHERE expires <= ?", (now,))
        conn.execute("DELETE FROM nodes WHERE expires <= ?", (now,))

    def _hits_sweep_due(self, now: float) -> bool:
        last = self._next_hits_sweep - SWEEP_EVERY
        if last <= now < self._next_hits_sweep:
            return False
        self._next_hits_sweep = now + SWEEP_EVERY
        return True

    def _disconnect(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _take(conn: sqlite3.Connection, key: str, owner: str, expires: float, now: float) -> str:
    """Within a write transaction: take or renew `key` for `owner` unless another holds it."""
    row = conn.execute("SELECT owner, expires FROM leases WHERE key = ?", (key,)).fetchone()
    if row is not None and row[0] != owner and row[1] > now:
        return str(row[0])
    conn.execute(
        "INSERT OR REPLACE INTO leases (key, owner, expires) VALUES (?, ?, ?)",
        (key, owner, expires),
    )
    return owner


def _guarded(call: Callable[[], T]) -> T:
    try:
        return call()
    except (sqlite3.IntegrityError, sqlite3.ProgrammingError):
        raise  # a bug here, not an unreachable state
    except sqlite3.DatabaseError as exc:  # locked past the busy timeout, I/O error, bad file
        raise StateUnavailable(f"sqlite cluster state {exc}") from exc
