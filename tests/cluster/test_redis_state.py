"""`RedisState` beyond the shared contract: a real redis-server killed, hung and restarted."""

from __future__ import annotations

import os
import signal
import time

import pytest

from cluster.redis_state import DEFAULT_PREFIX, RedisState
from cluster.state import NodeStatus, StateUnavailable
from tests.cluster.redis_server import RedisServer

# An outage must be reported well within the join path's patience.
PROMPT = 2.0


async def test_an_outage_is_reported_promptly_and_recovers_by_itself(
    redis_server: RedisServer,
) -> None:
    state = RedisState(redis_server.url)
    try:
        assert await state.acquire("call:1", "node-a", 60) == "node-a"
        redis_server.kill()
        for operation in (
            lambda: state.acquire("call:2", "node-a", 60),
            lambda: state.refresh(["call:1"], "node-a", 60),
            lambda: state.release("call:1", "node-a"),
            lambda: state.holder("call:1"),
            lambda: state.heartbeat(NodeStatus("node-a", "http://a"), 60),
            state.nodes,
            lambda: state.forget("node-a"),
            lambda: state.hit("k", 3, 60, 1000.0),
            lambda: state.count("k", 60, 1000.0),
        ):
            started = time.monotonic()
            with pytest.raises(StateUnavailable):
                await operation()
            assert time.monotonic() - started < PROMPT
        started = time.monotonic()
        assert await state.ping() is False
        assert time.monotonic() - started < PROMPT

        redis_server.start()  # the same port; its data is gone (no persistence)
        assert await state.ping() is True
        assert await state.holder("call:1") is None
        # the lost lease is taken again by its owner's refresh; the scripts are loaded again
        assert await state.refresh(["call:1"], "node-a", 60) == {"call:1"}
        assert await state.acquire("call:1", "node-b", 60) == "node-a"
        assert await state.release("call:1", "node-a") is True
        assert (await state.hit("k", 3, 60, 1000.0)).count == 1
    finally:
        await state.close()


async def test_the_first_command_after_a_restart_succeeds(redis_server: RedisServer) -> None:
    # the pooled connection died with the old server: it is retried once, on a new one
    state = RedisState(redis_server.url)
    try:
        assert await state.acquire("call:1", "node-a", 60) == "node-a"
        redis_server.kill()
        redis_server.start()
        assert await state.acquire("call:1", "node-b", 60) == "node-b"
    finally:
        await state.close()


async def test_a_hung_server_times_out(redis_server: RedisServer) -> None:
    state = RedisState(redis_server.url, socket_timeout=0.5)
    assert redis_server.process is not None
    pid = redis_server.process.pid
    try:
        assert await state.acquire("call:1", "node-a", 60) == "node-a"
        os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(StateUnavailable):
                await state.holder("call:1")
            assert time.monotonic() - started < PROMPT
        finally:
            os.kill(pid, signal.SIGCONT)
        assert await state.holder("call:1") == "node-a"
    finally:
        await state.close()


async def test_an_unreachable_url_is_unavailable_not_an_error() -> None:
    from tests.cluster.redis_server import free_port

    state = RedisState(f"redis://127.0.0.1:{free_port()}/0")
    try:
        started = time.monotonic()
        with pytest.raises(StateUnavailable):
            await state.acquire("call:1", "node-a", 60)
        assert time.monotonic() - started < PROMPT
        assert await state.ping() is False
    finally:
        await state.close()


async def test_the_prefix_keeps_fleets_apart(redis_server: RedisServer) -> None:
    one = RedisState(redis_server.url)
    other = RedisState(redis_server.url, prefix="staging:")
    try:
        assert one.prefix == DEFAULT_PREFIX == "smiling-relay:"
        await one.acquire("call:1", "node-a", 60)
        await one.heartbeat(NodeStatus("node-a", "http://a"), 60)
        await one.hit("k", 1, 60, 1000.0)
        assert await other.acquire("call:1", "node-z", 60) == "node-z"
        assert await other.nodes() == []
        assert (await other.hit("k", 1, 60, 1000.0)).allowed
        assert await one.holder("call:1") == "node-a"
    finally:
        await one.close()
        await other.close()


async def test_keys_carry_their_expiry(redis_server: RedisServer) -> None:
    # nothing is left behind forever: every key the state writes expires (the id set is
    # trimmed by nodes())
    state = RedisState(redis_server.url)
    try:
        await state.acquire("call:1", "node-a", 5)
        await state.heartbeat(NodeStatus("node-a", "http://a"), 5)
        await state.hit("k", 3, 60, time.time())
        raw = state._redis
        keys = sorted(await raw.keys("smiling-relay:*"))
        assert keys == [
            "smiling-relay:hits:k",
            "smiling-relay:lease:call:1",
            "smiling-relay:node:node-a",
            "smiling-relay:nodes",
        ]
        for key in keys[:3]:
            assert 0 < await raw.pttl(key) <= 60_000, key
        await state.forget("node-a")
        assert await raw.exists("smiling-relay:nodes") == 0
    finally:
        await state.close()
