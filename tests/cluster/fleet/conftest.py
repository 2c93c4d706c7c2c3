"""The fleet tests run real `smiling-relay serve` processes with aiortc participants: each in a
network namespace of its own (synth/netns.py), as the media tests do."""

from __future__ import annotations

import pytest

from synth import netns


@pytest.fixture(scope="session", autouse=True)
def own_netns() -> netns.Netns:
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return netns.enter_process_netns()
