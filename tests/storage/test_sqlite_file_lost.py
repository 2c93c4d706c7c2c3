"""A SQLite file deleted or replaced under a running service (issue 14 item 10).

Before, writes kept answering 201 through the open descriptor, `/healthz` said ok, nothing was
logged, and everything written after the deletion was gone at the next start.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from smiling_relay.config import Config
from storage.base import StorageError
from storage.sqlite import SQLiteStorage
from tests.helpers import FakeClock, auth_headers, error_of

Client = TestClient[web.Request, web.Application]


def _delete(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def test_a_deleted_file_fails_every_operation_and_is_logged(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "relay.sqlite3"
    store = SQLiteStorage(path, clock=clock)
    await store.initialize()
    try:
        await store.create_user(name="Before", email="before@example.test", role="client")
        assert await store.ping()
        _delete(path)
        with caplog.at_level(logging.ERROR, logger="storage.sqlite"):
            with pytest.raises(StorageError, match="deleted or replaced"):
                await store.create_user(name="After", email="after@example.test", role="client")
            assert not await store.ping()
        assert sum("deleted or replaced" in r.getMessage() for r in caplog.records) == 1
    finally:
        await store.close()


async def test_a_replaced_file_is_noticed(tmp_path: Path, clock: FakeClock) -> None:
    path = tmp_path / "relay.sqlite3"
    store = SQLiteStorage(path, clock=clock)
    await store.initialize()
    try:
        replacement = tmp_path / "other.sqlite3"
        replacement.write_bytes(path.read_bytes())
        os.replace(replacement, path)  # same name, another inode
        with pytest.raises(StorageError, match="deleted or replaced"):
            await store.get_user("0" * 24)
    finally:
        await store.close()


async def test_writes_answer_503_and_health_reports_it(
    client: Client, admin_token: str, config: Config
) -> None:
    _delete(Path(config.sqlite_path))
    resp = await client.post(
        "/api/admin/users",
        headers=auth_headers(admin_token),
        json={"name": "Lost", "email": "lost@example.test", "role": "client"},
    )
    assert (await error_of(resp, 503))["code"] == "SERVICE_UNAVAILABLE"
    assert (await error_of(await client.get("/healthz"), 503))["code"] == "SERVICE_UNAVAILABLE"
