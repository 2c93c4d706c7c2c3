"""Pick the backend from the configuration: MongoDB when `MONGODB_URI` is set, else SQLite."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from storage.base import Storage


class StorageSettings(Protocol):
    """What the factory reads (`smiling_relay.config.Config` has it)."""

    @property
    def mongodb_uri(self) -> str | None: ...
    @property
    def sqlite_path(self) -> str: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...


def open_storage(settings: StorageSettings) -> Storage:
    """Build (but do not yet connect) the configured backend; call `initialize()` next."""
    if settings.mongodb_uri:
        from storage.mongo import MongoStorage

        return MongoStorage.from_uri(settings.mongodb_uri, clock=settings.clock)
    from storage.sqlite import SQLiteStorage

    return SQLiteStorage(settings.sqlite_path, clock=settings.clock)
