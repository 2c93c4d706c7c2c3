"""SIGTERM during a call: the node turns unready at once and takes no new call, the call's
media goes on until its participants leave, then the process exits 0 and the call is ended
with a reason (no record left In Progress)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from storage.sqlite import SQLiteStorage
from synth.client import CallClient, SignalingError
from synth.load import LoadOptions, provision_relay
from synth.servers import RelayProcess
from tests.cluster.fleet.helpers import JWT, Call, MakeRelay, status


@pytest.fixture
def relay(make_relay: MakeRelay) -> RelayProcess:
    return make_relay("drain", {"RELAY_WORKERS": "1", "RELAY_ALLOWED_PEER_RANGES": "10.77.0.0/24"})


async def test_sigterm_drains_the_call_then_exits(relay: RelayProcess, tmp_path: Path) -> None:
    options = LoadOptions(url=relay.url, calls=2, participants=2, jwt_secret=JWT)
    (session_id, room, tokens), (_, later_room, later_tokens) = await provision_relay(options)
    call = Call(session_id, room, tokens, (1, 2))
    try:
        await call.start(relay.url)
        await call.join((relay.url, relay.url))
        await call.verify_media()
        assert await status(f"{relay.url}/readyz") == 200

        relay.process.send_signal(signal.SIGTERM)
        # unready at once (polled without pause: the first answers after the signal)
        for _ in range(100):
            if await status(f"{relay.url}/readyz") == 503:
                break
        else:
            raise AssertionError("/readyz did not turn 503 after SIGTERM")
        assert await status(f"{relay.url}/healthz") == 200  # alive: not to be restarted

        # a new call is refused with a clear error; the live one keeps its media
        newcomer = CallClient(relay.url, later_tokens[0])
        await newcomer.connect()
        with pytest.raises(SignalingError) as refused:
            await newcomer.join(later_room)
        assert refused.value.code == "SERVICE_UNAVAILABLE"
        await newcomer.close()
        await call.verify_media(frames=30)
        assert relay.process.poll() is None
    finally:
        await call.close()
    # everyone left: the drain is over
    code = await asyncio.to_thread(relay.process.wait, 15)
    assert code == 0
    store = SQLiteStorage(str(tmp_path / "relay-drain.sqlite3"))
    await store.initialize()
    try:
        session = await store.get_session(session_id)
        assert session is not None and session.video_call_ended is not None
        entries = await store.list_audit(session_id=session_id)
        ends = [e for e in entries if e.action == "call_end"]
        assert [e.reason for e in ends] == ["server-drain"]
    finally:
        await store.close()
