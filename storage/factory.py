"""Pick the backend from the configuration: MongoDB when `MONGODB_URI` is set, else SQLite."""

from __future__ import annotations

from typing import TYPE_CHECKING

from storage.base import Storage

if TYPE_CHECKING:
    from smiling_relay.config import Config


def open_storage(config: Config) -> Storage:
    """Build (but do not yet connect) the configured backend; call `initialize()` next."""
    if config.mongodb_uri:
        from storage.mongo import MongoStorage

        return MongoStorage.from_uri(config.mongodb_uri, clock=config.clock)
    from storage.sqlite import SQLiteStorage

    return SQLiteStorage(config.sqlite_path, clock=config.clock)
