"""The embedded default backend: one SQLite file in WAL mode, personal fields encrypted at rest
when a `FieldCipher` is given (storage/crypto.py).

sqlite3 is blocking, so every statement runs on one dedicated worker thread that owns the
connection. That serialises this process's access, and every guarded transition is a single
conditional UPDATE, so it stays atomic even when another process (e.g. `smiling-relay demo`
while the server runs) writes to the same file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from storage.base import (
    AuditEntry,
    DuplicateError,
    HistoryPage,
    SessionRecord,
    StorageError,
    Transition,
    UserRecord,
    format_datetime,
    is_object_id,
    new_id,
    parse_datetime,
    to_utc_ms,
)
from storage.crypto import PREFIX, DecryptionError, FieldCipher

log = logging.getLogger(__name__)

T = TypeVar("T")

AUDIT_RETENTION = timedelta(seconds=15_552_000)  # the platform's TTL: six months

# Each migration is a list of statements applied in one transaction. Append, never edit.
MIGRATIONS: Sequence[tuple[int, Sequence[str]]] = (
    (
        1,
        (
            """CREATE TABLE users (
                id TEXT PRIMARY KEY,
                name TEXT NOT NULL,
                email TEXT,
                role TEXT NOT NULL,
                created_at TEXT NOT NULL
            )""",
            "CREATE UNIQUE INDEX users_email ON users(email) WHERE email IS NOT NULL",
            """CREATE TABLE sessions (
                id TEXT PRIMARY KEY,
                client_id TEXT NOT NULL,
                psychologist_id TEXT NOT NULL,
                session_type TEXT NOT NULL,
                session_date TEXT NOT NULL,
                status TEXT NOT NULL,
                payment_status TEXT NOT NULL,
                meeting_link TEXT UNIQUE,
                is_video_call INTEGER NOT NULL DEFAULT 1,
                video_call_started TEXT,
                video_call_ended TEXT,
                call_duration INTEGER,
                created_at TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
            "CREATE INDEX sessions_client_date ON sessions(client_id, session_date)",
            "CREATE INDEX sessions_psychologist_date ON sessions(psychologist_id, session_date)",
            "CREATE INDEX sessions_status_date ON sessions(status, session_date)",
            "CREATE INDEX sessions_call_started ON sessions(video_call_started)",
            """CREATE TABLE audit_log (
                id TEXT PRIMARY KEY,
                timestamp TEXT NOT NULL,
                session_id TEXT,
                user_id TEXT,
                role TEXT,
                action TEXT NOT NULL,
                result TEXT NOT NULL,
                reason TEXT,
                ip_address TEXT,
                user_agent TEXT,
                room_id TEXT,
                error_code TEXT,
                error_message TEXT,
                duration INTEGER,
                metadata TEXT NOT NULL DEFAULT '{}'
            )""",
            "CREATE INDEX audit_session_time ON audit_log(session_id, timestamp)",
            "CREATE INDEX audit_user_time ON audit_log(user_id, timestamp)",
            "CREATE INDEX audit_action_time ON audit_log(action, timestamp)",
            """CREATE TABLE call_metrics (
                key TEXT PRIMARY KEY,
                doc TEXT NOT NULL,
                updated_at TEXT NOT NULL
            )""",
        ),
    ),
    (
        2,
        (
            # with DATA_ENCRYPTION_KEY the email column holds ciphertext: lookups and uniqueness
            # go through this blind index instead (storage/crypto.py)
            "ALTER TABLE users ADD COLUMN email_index TEXT",
            "CREATE UNIQUE INDEX users_email_index ON users(email_index)"
            " WHERE email_index IS NOT NULL",
        ),
    ),
)
# Personal data encrypted at rest when a cipher is configured: (table, column).
ENCRYPTED_COLUMNS = (
    ("users", "name"),
    ("users", "email"),
    ("audit_log", "ip_address"),
    ("audit_log", "user_agent"),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

_SESSION_COLUMNS = (
    "id, client_id, psychologist_id, session_type, session_date, status, payment_status, "
    "meeting_link, is_video_call, video_call_started, video_call_ended, call_duration, "
    "created_at, updated_at"
)


class SQLiteStorage:
    """`Storage` over a SQLite file (or `:memory:`)."""

    backend = "sqlite"

    def __init__(
        self,
        path: str | Path,
        *,
        clock: Callable[[], datetime] | None = None,
        cipher: FieldCipher | None = None,
    ) -> None:
        self.path = str(path)
        self._clock = clock
        self._cipher = cipher
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        # (device, inode) of the file we opened: a deleted or replaced file keeps working through
        # our open descriptor, so every write would be acknowledged and then lost at restart.
        self._identity: tuple[int, int] | None = None
        self._lost_reported = False

    # -- plumbing ---------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._executor is None:
            raise StorageError("SQLite storage is not initialized (call initialize())")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StorageError("SQLite storage is closed")
        self._check_file()
        try:
            return fn(conn)
        except sqlite3.IntegrityError as exc:
            raise DuplicateError(str(exc)) from exc
        except sqlite3.Error as exc:
            raise StorageError(f"SQLite error: {exc}") from exc

    def _check_file(self) -> None:
        if self._identity is None:
            return
        try:
            stat = os.stat(self.path)
            same = (stat.st_dev, stat.st_ino) == self._identity
        except OSError:
            same = False
        if same:
            return
        if not self._lost_reported:
            self._lost_reported = True
            log.error(
                "the SQLite database %s was deleted or replaced while open: refusing every "
                "read and write until the service is restarted on a restored file",
                self.path,
            )
        raise StorageError(f"the SQLite database {self.path!r} was deleted or replaced")

    def _now(self) -> str:
        return format_datetime(self._clock() if self._clock else datetime.now(UTC))

    async def initialize(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite")
        loop = asyncio.get_running_loop()
        try:
            await loop.run_in_executor(self._executor, self._open)
        except Exception:
            self._executor.shutdown(wait=True)
            self._executor = None
            raise

    def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            # Autocommit mode: transactions are explicit (BEGIN IMMEDIATE) where needed.
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 10000")
            if self.path != ":memory:":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    log.warning("SQLite refused WAL mode (journal_mode=%s) for %s", mode, self.path)
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn)
            self._encrypt_at_rest(conn)
            if self.path != ":memory:":
                stat = os.stat(self.path)
                self._identity = (stat.st_dev, stat.st_ino)
            self._conn = conn
            self._prune_audit(conn)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open SQLite database {self.path!r}: {exc}") from exc

    def _encrypt_at_rest(self, conn: sqlite3.Connection) -> None:
        """Bring every personal field under the current key (first start with a key, a key
        rotation); refuse to start on encrypted data without the key to read it."""
        cipher = self._cipher
        if cipher is None:
            for table, column in ENCRYPTED_COLUMNS:
                if conn.execute(
                    f"SELECT 1 FROM {table} WHERE {column} LIKE '{PREFIX}%' LIMIT 1"
                ).fetchone():
                    raise StorageError(
                        f"{self.path} holds encrypted fields ({table}.{column}): "
                        "set DATA_ENCRYPTION_KEY to the key(s) they were written with"
                    )
            return
        rewritten = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table, column in ENCRYPTED_COLUMNS:
                rows = conn.execute(f"SELECT rowid, {column} FROM {table}").fetchall()
                name = f"{table}.{column}"
                for rowid, stored in rows:
                    if not cipher.needs_rewrite(stored):
                        continue
                    try:
                        plain = cipher.decrypt(name, stored)
                    except DecryptionError as exc:
                        raise StorageError(
                            f"{self.path}: {exc}; DATA_ENCRYPTION_KEY must still list every key"
                            " the stored rows were written with"
                        ) from exc
                    conn.execute(
                        f"UPDATE {table} SET {column} = ? WHERE rowid = ?",
                        (cipher.encrypt(name, plain), rowid),
                    )
                    if name == "users.email" and plain is not None:
                        conn.execute(
                            "UPDATE users SET email_index = ? WHERE rowid = ?",
                            (cipher.blind_index(plain), rowid),
                        )
                    rewritten += 1
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if rewritten:
            log.info("encrypted %d stored personal fields under key %r", rewritten, cipher.current)

    def _seal(self, column: str, value: str | None) -> str | None:
        return self._cipher.encrypt(column, value) if self._cipher else value

    def _open_field(self, column: str, stored: str | None) -> str | None:
        if self._cipher is None:
            return stored
        try:
            return self._cipher.decrypt(column, stored)
        except DecryptionError as exc:
            raise StorageError(str(exc)) from exc

    def _user(self, row: sqlite3.Row) -> UserRecord:
        return UserRecord(
            id=row["id"],
            name=self._open_field("users.name", row["name"]) or "",
            email=self._open_field("users.email", row["email"]),
            role=row["role"],
            created_at=_opt_dt(row["created_at"]),
        )

    def _audit(self, row: sqlite3.Row) -> AuditEntry:
        return dataclasses.replace(
            _audit(row),
            ip_address=self._open_field("audit_log.ip_address", row["ip_address"]),
            user_agent=self._open_field("audit_log.user_agent", row["user_agent"]),
        )

    def _prune_audit(self, conn: sqlite3.Connection) -> int:
        # MongoDB expires audit entries through a TTL index; here at start-up and periodically.
        cutoff = parse_datetime(self._now()) - AUDIT_RETENTION
        deleted = conn.execute(
            "DELETE FROM audit_log WHERE timestamp < ?", (format_datetime(cutoff),)
        ).rowcount
        return int(deleted)

    async def prune_expired(self) -> int:
        return await self._run(self._prune_audit)

    async def close(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(executor, _close)
        executor.shutdown(wait=True)

    async def ping(self) -> bool:
        try:
            return await self._run(lambda c: c.execute("SELECT 1").fetchone()[0] == 1)
        except StorageError:
            return False

    async def schema_version(self) -> int:
        return await self._run(_current_version)

    # -- users ------------------------------------------------------------------------------

    async def create_user(self, *, name: str, email: str | None, role: str) -> UserRecord:
        user_id = new_id()
        now = self._now()
        norm_email = email.strip().lower() if email else None

        index = self._cipher.blind_index(norm_email) if self._cipher and norm_email else None
        row = (
            user_id,
            self._seal("users.name", name),
            self._seal("users.email", norm_email),
            index,
            role,
            now,
        )

        def _insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO users (id, name, email, email_index, role, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                row,
            )

        await self._run(_insert)
        return UserRecord(user_id, name, norm_email, role, parse_datetime(now))

    async def get_user(self, user_id: str) -> UserRecord | None:
        users = await self.get_users([user_id])
        return users.get(user_id)

    async def get_users(self, user_ids: Iterable[str]) -> dict[str, UserRecord]:
        ids = sorted({u for u in user_ids if is_object_id(u)})
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = await self._run(
            lambda c: c.execute(f"SELECT * FROM users WHERE id IN ({marks})", ids).fetchall()
        )
        return {row["id"]: self._user(row) for row in rows}

    async def find_user_by_email(self, email: str) -> UserRecord | None:
        norm = email.strip().lower()
        if self._cipher is None:
            query, value = "SELECT * FROM users WHERE email = ?", norm
        else:
            query, value = (
                "SELECT * FROM users WHERE email_index = ?",
                self._cipher.blind_index(norm),
            )
        row = await self._run(lambda c: c.execute(query, (value,)).fetchone())
        return self._user(row) if row else None

    # -- sessions ---------------------------------------------------------------------------

    async def create_session(
        self,
        *,
        client_id: str,
        psychologist_id: str,
        session_date: datetime,
        status: str,
        payment_status: str,
        session_type: str = "Individual",
        is_video_call: bool = True,
    ) -> SessionRecord:
        session_id = new_id()
        now = self._now()

        def _insert(conn: sqlite3.Connection) -> sqlite3.Row:
            conn.execute(
                "INSERT INTO sessions (id, client_id, psychologist_id, session_type, session_date,"
                " status, payment_status, is_video_call, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    session_id,
                    client_id,
                    psychologist_id,
                    session_type,
                    format_datetime(session_date),
                    status,
                    payment_status,
                    1 if is_video_call else 0,
                    now,
                    now,
                ),
            )
            return _select_session(conn, session_id)

        return _session(await self._run(_insert))

    async def get_session(self, session_id: str) -> SessionRecord | None:
        if not is_object_id(session_id):
            return None
        row = await self._run(lambda c: _select_session(c, session_id))
        return _session(row) if row else None

    async def find_session_by_room(self, room_id: str) -> SessionRecord | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE meeting_link = ?", (room_id,)
            ).fetchone()
        )
        return _session(row) if row else None

    async def _update_then_read(
        self, session_id: str, sql: str, params: Sequence[Any]
    ) -> Transition | None:
        """Run one conditional UPDATE, then return the row as stored (None if absent)."""
        if not is_object_id(session_id):
            return None

        def _do(conn: sqlite3.Connection) -> tuple[sqlite3.Row | None, bool]:
            applied = conn.execute(sql, params).rowcount > 0
            return _select_session(conn, session_id), applied

        row, applied = await self._run(_do)
        return Transition(_session(row), applied) if row else None

    async def _session_after(
        self, session_id: str, sql: str, params: Sequence[Any]
    ) -> SessionRecord | None:
        result = await self._update_then_read(session_id, sql, params)
        return result.session if result else None

    async def set_meeting_link(self, session_id: str, room_id: str) -> SessionRecord | None:
        return await self._session_after(
            session_id,
            "UPDATE sessions SET meeting_link = ?, updated_at = ? "
            "WHERE id = ? AND (meeting_link IS NULL OR meeting_link = '')",
            (room_id, self._now(), session_id),
        )

    async def mark_started(self, session_id: str, started_at: datetime) -> Transition | None:
        return await self._update_then_read(
            session_id,
            "UPDATE sessions SET video_call_started = ?, status = 'In Progress', updated_at = ? "
            "WHERE id = ? AND video_call_started IS NULL",
            (format_datetime(started_at), self._now(), session_id),
        )

    async def mark_ended(
        self, session_id: str, ended_at: datetime, duration_minutes: int
    ) -> Transition | None:
        return await self._update_then_read(
            session_id,
            "UPDATE sessions SET video_call_ended = ?, call_duration = ?, status = 'Completed',"
            " updated_at = ? WHERE id = ? AND video_call_started IS NOT NULL"
            " AND video_call_ended IS NULL",
            (format_datetime(ended_at), duration_minutes, self._now(), session_id),
        )

    async def list_open_calls(self, *, limit: int = 500) -> list[SessionRecord]:
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE video_call_started IS NOT NULL"
                " AND video_call_ended IS NULL ORDER BY video_call_started, id LIMIT ?",
                (limit,),
            ).fetchall()
        )
        return [_session(r) for r in rows]

    async def update_session(
        self,
        session_id: str,
        *,
        status: str | None = None,
        payment_status: str | None = None,
        session_date: datetime | None = None,
    ) -> SessionRecord | None:
        sets: list[str] = []
        params: list[Any] = []
        for column, value in (
            ("status", status),
            ("payment_status", payment_status),
            ("session_date", format_datetime(session_date) if session_date else None),
        ):
            if value is not None:
                sets.append(f"{column} = ?")
                params.append(value)
        sets.append("updated_at = ?")
        params.extend([self._now(), session_id])
        return await self._session_after(
            session_id, f"UPDATE sessions SET {', '.join(sets)} WHERE id = ?", params
        )

    async def list_history(
        self, user_id: str, role: str, *, page: int = 1, limit: int = 10
    ) -> HistoryPage:
        where = "video_call_started IS NOT NULL"
        params: list[Any] = []
        if role != "admin":
            where += " AND (client_id = ? OR psychologist_id = ?)"
            params = [user_id, user_id]
        offset = max(page - 1, 0) * limit

        def _query(conn: sqlite3.Connection) -> tuple[list[sqlite3.Row], int]:
            total = conn.execute(f"SELECT COUNT(*) FROM sessions WHERE {where}", params).fetchone()
            rows = conn.execute(
                f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE {where}"
                " ORDER BY video_call_started DESC, id DESC LIMIT ? OFFSET ?",
                [*params, limit, offset],
            ).fetchall()
            return rows, int(total[0])

        rows, total = await self._run(_query)
        return HistoryPage([_session(r) for r in rows], total)

    # -- audit ------------------------------------------------------------------------------

    async def add_audit(self, entry: AuditEntry) -> str:
        entry_id = entry.id or new_id()

        def _insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO audit_log (id, timestamp, session_id, user_id, role, action, result,"
                " reason, ip_address, user_agent, room_id, error_code, error_message, duration,"
                " metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    entry_id,
                    format_datetime(entry.timestamp),
                    entry.session_id,
                    entry.user_id,
                    entry.role,
                    entry.action,
                    entry.result,
                    entry.reason,
                    self._seal("audit_log.ip_address", entry.ip_address),
                    self._seal("audit_log.user_agent", entry.user_agent),
                    entry.room_id,
                    entry.error_code,
                    entry.error_message,
                    entry.duration,
                    _dumps(dict(entry.metadata)),
                ),
            )

        await self._run(_insert)
        return entry_id

    async def list_audit(
        self,
        *,
        session_id: str | None = None,
        user_id: str | None = None,
        limit: int = 100,
    ) -> list[AuditEntry]:
        clauses: list[str] = []
        params: list[Any] = []
        if session_id is not None:
            clauses.append("session_id = ?")
            params.append(session_id)
        if user_id is not None:
            clauses.append("user_id = ?")
            params.append(user_id)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT * FROM audit_log {where} ORDER BY timestamp DESC, rowid DESC LIMIT ?",
                [*params, limit],
            ).fetchall()
        )
        return [self._audit(r) for r in rows]

    # -- videocallmetrics -------------------------------------------------------------------

    async def upsert_call_metrics(
        self,
        key: Mapping[str, Any],
        values: Mapping[str, Any] | None = None,
        increments: Mapping[str, int | float] | None = None,
    ) -> dict[str, Any]:
        key_text = _key_text(key)
        now = self._now()

        def _upsert(conn: sqlite3.Connection) -> dict[str, Any]:
            # BEGIN IMMEDIATE takes the write lock first, so read-modify-write is atomic
            # across processes too.
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT doc FROM call_metrics WHERE key = ?", (key_text,)
                ).fetchone()
                doc = _loads(row["doc"]) if row else {}
                doc.update(_plain(values or {}))
                for name, delta in (increments or {}).items():
                    doc[name] = (doc.get(name) or 0) + delta
                doc.update(_plain(key))
                conn.execute(
                    "INSERT INTO call_metrics (key, doc, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET doc = excluded.doc,"
                    " updated_at = excluded.updated_at",
                    (key_text, _dumps(doc), now),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            return doc

        return await self._run(_upsert)

    async def set_call_metrics_if(
        self,
        key: Mapping[str, Any],
        values: Mapping[str, Any],
        *,
        where: Mapping[str, Sequence[Any]],
        insert: bool = False,
    ) -> dict[str, Any] | None:
        key_text = _key_text(key)
        now = self._now()
        allowed = {name: [_plain(v) for v in options] for name, options in where.items()}

        def _set(conn: sqlite3.Connection) -> dict[str, Any] | None:
            # The write lock first (BEGIN IMMEDIATE): the check and the write are one step for
            # every process on the file.
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT doc FROM call_metrics WHERE key = ?", (key_text,)
                ).fetchone()
                if row is None and not insert:
                    conn.execute("ROLLBACK")
                    return None
                doc = _loads(row["doc"]) if row else {}
                if row is not None and not all(
                    doc.get(name) in options for name, options in allowed.items()
                ):
                    conn.execute("ROLLBACK")
                    return None
                doc.update(_plain(values))
                doc.update(_plain(key))
                conn.execute(
                    "INSERT INTO call_metrics (key, doc, updated_at) VALUES (?, ?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET doc = excluded.doc,"
                    " updated_at = excluded.updated_at",
                    (key_text, _dumps(doc), now),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return doc

        return await self._run(_set)

    async def get_call_metrics(self, key: Mapping[str, Any]) -> dict[str, Any] | None:
        key_text = _key_text(key)
        row = await self._run(
            lambda c: c.execute(
                "SELECT doc FROM call_metrics WHERE key = ?", (key_text,)
            ).fetchone()
        )
        return _loads(row["doc"]) if row else None

    async def find_call_metrics(
        self, match: Mapping[str, Any], *, limit: int = 1000
    ) -> list[dict[str, Any]]:
        rows = await self._run(
            lambda c: c.execute("SELECT doc FROM call_metrics ORDER BY rowid").fetchall()
        )
        wanted = _plain(match)
        found: list[dict[str, Any]] = []
        for row in rows:
            doc = _loads(row["doc"])
            if all(doc.get(k) == v for k, v in wanted.items()):
                found.append(doc)
                if len(found) >= limit:
                    break
        return found


# -- helpers ----------------------------------------------------------------------------------


def _current_version(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
    return int(row[0] or 0)


def _migrate(conn: sqlite3.Connection) -> None:
    conn.execute(
        "CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, applied_at TEXT)"
    )
    current = _current_version(conn)
    if current > SCHEMA_VERSION:
        raise StorageError(
            f"database schema version {current} is newer than this code supports "
            f"({SCHEMA_VERSION}); upgrade smiling-relay"
        )
    for version, statements in MIGRATIONS:
        if version <= current:
            continue
        conn.execute("BEGIN IMMEDIATE")
        try:
            # Re-check under the write lock: another process may have migrated meanwhile.
            if _current_version(conn) >= version:
                conn.execute("COMMIT")
                continue
            for statement in statements:
                conn.execute(statement)
            conn.execute(
                "INSERT INTO schema_version (version, applied_at) VALUES (?, datetime('now'))",
                (version,),
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        log.info("SQLite schema migrated to version %d", version)


def _select_session(conn: sqlite3.Connection, session_id: str) -> sqlite3.Row:
    row: sqlite3.Row = conn.execute(
        f"SELECT {_SESSION_COLUMNS} FROM sessions WHERE id = ?", (session_id,)
    ).fetchone()
    return row


def _opt_dt(value: str | None) -> datetime | None:
    return parse_datetime(value) if value else None


def _session(row: sqlite3.Row) -> SessionRecord:
    return SessionRecord(
        id=row["id"],
        client_id=row["client_id"],
        psychologist_id=row["psychologist_id"],
        session_date=parse_datetime(row["session_date"]),
        status=row["status"],
        payment_status=row["payment_status"],
        session_type=row["session_type"],
        meeting_link=row["meeting_link"] or None,
        is_video_call=bool(row["is_video_call"]),
        video_call_started=_opt_dt(row["video_call_started"]),
        video_call_ended=_opt_dt(row["video_call_ended"]),
        call_duration=row["call_duration"],
        created_at=_opt_dt(row["created_at"]),
        updated_at=_opt_dt(row["updated_at"]),
    )


def _audit(row: sqlite3.Row) -> AuditEntry:
    return AuditEntry(
        id=row["id"],
        action=row["action"],
        result=row["result"],
        timestamp=parse_datetime(row["timestamp"]),
        session_id=row["session_id"],
        user_id=row["user_id"],
        role=row["role"],
        reason=row["reason"],
        ip_address=row["ip_address"],
        user_agent=row["user_agent"],
        room_id=row["room_id"],
        error_code=row["error_code"],
        error_message=row["error_message"],
        duration=row["duration"],
        metadata=_loads(row["metadata"]),
    )


# Datetimes inside metric documents round-trip through JSON as {"$date": "<iso>"}.


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return to_utc_ms(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _encode(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"$date": format_datetime(value)}
    if isinstance(value, Mapping):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_encode(v) for v in value]
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"$date"}:
            return parse_datetime(value["$date"])
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_decode(v) for v in value]
    return value


def _dumps(doc: Mapping[str, Any]) -> str:
    return json.dumps(_encode(doc), sort_keys=True, separators=(",", ":"))


def _loads(text: str) -> dict[str, Any]:
    value = _decode(json.loads(text))
    return value if isinstance(value, dict) else {}


def _key_text(key: Mapping[str, Any]) -> str:
    if not key:
        raise ValueError("a metrics key needs at least one field")
    return _dumps(_plain(key))
