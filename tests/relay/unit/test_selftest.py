"""The aiortc start-up self-test (relay/_aiortc/selftest.py) passes on the pinned versions and
raises, naming what moved, when an internal it relies on is gone or a version differs."""

from __future__ import annotations

import importlib.metadata

import pytest
from aioice import Connection
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.rtcdtlstransport import RTCDtlsTransport

from relay._aiortc import selftest

# `self_test` is functools.cache'd (once per process): the undecorated function runs each time.
# The tests are async: the self-test builds an (unconnected) RTCPeerConnection, which needs a
# running event loop.
run_self_test = selftest.self_test.__wrapped__


async def test_the_installed_aiortc_passes() -> None:
    run_self_test()


@pytest.mark.parametrize(
    ("owner", "name", "named"),
    [
        (RTCDtlsTransport, "_send_rtp", "RTCDtlsTransport._send_rtp is missing"),
        (RTCRtpReceiver, "_handle_rtp_packet", "RTCRtpReceiver._handle_rtp_packet is missing"),
        (RTCRtpSender, "_run_rtp", "RTCRtpSender._run_rtp is missing"),
        (
            Connection,
            "get_component_candidates",
            "aioice Connection.get_component_candidates is missing",
        ),
    ],
)
async def test_a_missing_private_attribute_is_named(
    monkeypatch: pytest.MonkeyPatch, owner: type, name: str, named: str
) -> None:
    monkeypatch.delattr(owner, name)
    with pytest.raises(selftest.AiortcInternalsChanged) as raised:
        run_self_test()
    assert named in str(raised.value)


async def test_an_instance_attribute_that_moved_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_rx_srtp` exists only on instances: the test builds an unconnected connection to look."""
    original = RTCDtlsTransport.__init__

    def without_srtp(self: RTCDtlsTransport, *args: object, **kwargs: object) -> None:
        original(self, *args, **kwargs)  # type: ignore[arg-type]
        del self._rx_srtp

    monkeypatch.setattr(RTCDtlsTransport, "__init__", without_srtp)
    with pytest.raises(selftest.AiortcInternalsChanged, match="RTCDtlsTransport has no _rx_srtp"):
        run_self_test()


async def test_another_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.metadata.version
    monkeypatch.setattr(
        importlib.metadata,
        "version",
        lambda package: "9.9.9" if package == "aiortc" else real(package),
    )
    with pytest.raises(
        selftest.AiortcInternalsChanged,
        match=f"aiortc 9.9.9 is installed, the relay is built for {selftest.SUPPORTED_AIORTC}",
    ):
        run_self_test()
