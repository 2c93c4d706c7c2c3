"""Backends for the contract suite: SQLite always, MongoDB through mongomock-motor always,
and a real MongoDB server when MONGODB_URI is set (each test gets its own database)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from storage.base import Storage
from storage.crypto import FieldCipher
from storage.mongo import MongoStorage
from storage.sqlite import SQLiteStorage
from tests.helpers import FakeClock

BACKENDS = ["sqlite", "sqlite-encrypted", "mongomock", "mongodb"]
# a fixed test key (storage/crypto.py format): the encrypted SQLite store passes the same contract
TEST_DATA_KEY = "test1:" + "A" * 43 + "="


@pytest.fixture(params=BACKENDS)
async def any_storage(
    request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock
) -> AsyncIterator[Storage]:
    """Each contract test runs once per backend."""
    backend = request.param
    if backend.startswith("sqlite"):
        cipher = FieldCipher.from_text(TEST_DATA_KEY) if backend == "sqlite-encrypted" else None
        store: Storage = SQLiteStorage(tmp_path / "contract.sqlite3", clock=clock, cipher=cipher)
        await store.initialize()
        yield store
        await store.close()
    elif backend == "mongomock":
        from mongomock_motor import AsyncMongoMockClient

        mongo = MongoStorage(AsyncMongoMockClient()["contract"], clock=clock)
        await mongo.initialize()
        yield mongo
        await mongo.close()
    else:
        uri = os.environ.get("MONGODB_URI")
        if not uri:
            pytest.skip("MONGODB_URI is not set: no real MongoDB to test against")
        from motor.motor_asyncio import AsyncIOMotorClient

        client: Any = AsyncIOMotorClient(uri, tz_aware=True, serverSelectionTimeoutMS=5000)
        name = f"smiling_relay_test_{uuid.uuid4().hex[:12]}"
        real = MongoStorage(client[name], clock=clock)
        try:
            await real.initialize()
            yield real
        finally:
            await client.drop_database(name)
            client.close()
