"""The running app prunes expired records periodically, not only at start-up (issue 14)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from smiling_relay import app as app_module
from storage.base import AuditEntry, Storage
from tests.helpers import FakeClock


async def test_the_app_prunes_audit_entries_past_retention(
    make_client: Any, storage: Storage, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app_module, "RETENTION_INTERVAL", 0.05)
    await make_client()
    await storage.add_audit(AuditEntry(action="old", result="allowed", timestamp=clock()))
    clock.advance(days=100)
    await storage.add_audit(AuditEntry(action="recent", result="allowed", timestamp=clock()))
    clock.advance(days=100)  # the first entry is now past six months

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while [e.action for e in await storage.list_audit()] != ["recent"]:
        assert loop.time() < deadline, "the retention job never pruned the expired entry"
        await asyncio.sleep(0.05)
