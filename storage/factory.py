"""Pick the backend from the configuration: MongoDB when `MONGODB_URI` is set, else SQLite."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Protocol

from storage.base import Storage

log = logging.getLogger(__name__)


class StorageSettings(Protocol):
    """What the factory reads (`smiling_relay.config.Config` has it)."""

    @property
    def mongodb_uri(self) -> str | None: ...
    @property
    def sqlite_path(self) -> str: ...
    @property
    def clock(self) -> Callable[[], datetime]: ...
    @property
    def data_encryption_key(self) -> str | None: ...
    @property
    def is_production(self) -> bool: ...


def open_storage(settings: StorageSettings) -> Storage:
    """Build (but do not yet connect) the configured backend; call `initialize()` next."""
    if settings.mongodb_uri:
        from storage.mongo import MongoStorage

        return MongoStorage.from_uri(settings.mongodb_uri, clock=settings.clock)
    from storage.crypto import FieldCipher
    from storage.sqlite import SQLiteStorage

    key = settings.data_encryption_key
    if key is None and settings.is_production:
        log.warning(
            "DATA_ENCRYPTION_KEY is not set: names, emails and audit IP addresses are stored "
            "in clear in %s (see docs/security.md)",
            settings.sqlite_path,
        )
    cipher = FieldCipher.from_text(key) if key else None
    return SQLiteStorage(settings.sqlite_path, clock=settings.clock, cipher=cipher)
