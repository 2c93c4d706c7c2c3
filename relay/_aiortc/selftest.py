"""The start-up self-test: the pinned versions and every private attribute this package uses.

`self_test()` runs once per process (the first `Relay()`), and raises `AiortcInternalsChanged`
naming what moved, so an aiortc/aioice upgrade fails loudly at start-up, not as silent black video.
"""

from __future__ import annotations

import functools
import importlib.metadata

from aiortc import RTCPeerConnection, RTCRtpReceiver, RTCRtpSender
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcdtlstransport import RTCDtlsTransport
from aiortc.rtcicetransport import RTCIceTransport

from relay._aiortc import gathering, srtp

SUPPORTED_AIORTC = "1.16.0"
SUPPORTED_AIOICE = "0.13.0"


class AiortcInternalsChanged(RuntimeError):
    """The installed aiortc/aioice no longer look the way the relay's media path needs."""


@functools.cache
def self_test() -> None:
    """Check versions and every private attribute the relay relies on; raise if anything moved."""
    problems: list[str] = []
    for package, wanted in (("aiortc", SUPPORTED_AIORTC), ("aioice", SUPPORTED_AIOICE)):
        installed = importlib.metadata.version(package)
        if installed != wanted:
            problems.append(f"{package} {installed} is installed, the relay is built for {wanted}")
    for owner, names in (
        (RTCDtlsTransport, ("_send_rtp", "_get_stats")),
        (RTCRtpReceiver, ("receive", "_RTCRtpReceiver__stop_decoder", "_handle_rtp_packet")),
        (RTCRtpSender, ("send", "_run_rtp")),
        (RTCIceTransport, ("iceGatherer",)),
    ):
        problems += [f"{owner.__name__}.{n} is missing" for n in names if not hasattr(owner, n)]
    problems += _instance_problems()
    problems += gathering.internals_problems()
    problems += srtp.internals_problems()
    if problems:
        raise AiortcInternalsChanged(
            "the relay's aiortc adapter does not match the installed aiortc: " + "; ".join(problems)
        )


def _instance_problems() -> list[str]:
    """Attributes that exist only on instances; an unconnected connection opens no sockets."""
    problems: list[str] = []
    transceiver = RTCPeerConnection().addTransceiver("video", direction="sendonly")
    dtls = transceiver.sender.transport
    problems += [
        f"RTCDtlsTransport has no {n}" for n in ("_rx_srtp", "_tx_srtp") if not hasattr(dtls, n)
    ]
    connection = getattr(dtls.transport, "_connection", None)
    for name in ("_nominated", "data_received", "_query_consent_task"):
        if not hasattr(connection, name):
            problems.append(f"aioice Connection has no {name}")
    for name in ("_ssrc", "_rtx_ssrc"):
        if not isinstance(getattr(transceiver.sender, name, None), int):
            problems.append(f"RTCRtpSender has no integer {name}")
    if not hasattr(transceiver.receiver, "_RTCRtpReceiver__decoder_thread"):
        problems.append("RTCRtpReceiver has no __decoder_thread")
    for name in ("_RTCRtpSender__encoder", "_RTCRtpSender__force_keyframe"):
        if not hasattr(transceiver.sender, name):
            problems.append(f"RTCRtpSender has no {name.removeprefix('_RTCRtpSender')}")
    if not isinstance(getattr(transceiver.receiver, "_RTCRtpReceiver__codecs", None), dict):
        problems.append("RTCRtpReceiver has no __codecs dict")
    buffer = getattr(transceiver.receiver, "_RTCRtpReceiver__jitter_buffer", None)
    if not isinstance(buffer, JitterBuffer) or not all(
        hasattr(buffer, n) for n in ("_origin", "_packets", "_capacity", "_remove_frame", "remove")
    ):
        problems.append("RTCRtpReceiver has no __jitter_buffer of the expected shape")
    return problems
