"""The fleet tests run real `smiling-relay serve` processes with aiortc participants: each in a
network namespace of its own (synth/netns.py), as the media tests do."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from synth import netns
from synth.servers import RelayProcess
from tests.cluster.fleet.helpers import JWT, MakeRelay


@pytest.fixture(scope="session", autouse=True)
def own_netns() -> netns.Netns:
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return netns.enter_process_netns()


@pytest.fixture
def make_relay(tmp_path: Path, own_netns: netns.Netns) -> Iterator[MakeRelay]:
    """`make_relay(name, env)`: a relay process in this process's namespace, signed with
    `JWT`; every one made is stopped at teardown."""
    made: list[RelayProcess] = []

    def make(name: str, env: dict[str, str]) -> RelayProcess:
        process = RelayProcess(
            tmp_path, name, jwt_secret=JWT, url_host=own_netns.addresses[0], env=env
        )
        made.append(process)
        return process

    yield make
    for process in made:
        process.stop()
