"""Every touch of aiortc's and aioice's private internals, in one subpackage.

aiortc 1.16.0 and aioice 0.13.0 are pinned; `self_test()` (run once per process by the first
`Relay()`) checks that every private attribute used here is where this package expects it.
Nothing outside `relay/_aiortc/` names an aiortc or aioice private attribute: the relay's core
and the QA tool (`synth/`) use the functions exported here.

    transport.py  MediaTransport: SRTP in and out straight from the ICE socket callback;
                  SampledTransport: the QA tool's lean subscribers (decrypt a sample)
    reader.py     batched reads of the ICE sockets (one readiness event drains a socket)
    srtp.py       FastSrtp: pylibsrtp's libsrtp calls without their per-packet overhead
    gathering.py  host-candidate gathering: bind addresses, UDP port range, announced address
    hooks.py      SSRCs, decoder threads, idle senders, keyframe flags, receive taps
    jitter.py     a browser's patience for the QA tool's video receivers (a lost packet)
    frames.py     the encoded-frame layer (the QA tool's end-to-end encryption)
    selftest.py   the version pins and the start-up check
"""

from relay._aiortc.frames import (
    FrameTransform,
    transform_received_frames,
    transform_sent_frames,
)
from relay._aiortc.gathering import (
    GatheringPolicy,
    PortRangeExhausted,
    SelectedPair,
    bind_udp,
    ice_sockets,
    restrict_gathering,
    selected_pair,
)
from relay._aiortc.hooks import (
    IdleTrack,
    codec_work,
    consent_expired,
    dtls_transport_of,
    keep_decoder_stopped,
    receiver_codecs,
    sender_ssrcs,
    take_keyframe_request,
    wrap_rtp_handler,
)
from relay._aiortc.jitter import PatientJitterBuffer, patient_video
from relay._aiortc.selftest import (
    SUPPORTED_AIOICE,
    SUPPORTED_AIORTC,
    AiortcInternalsChanged,
    self_test,
)
from relay._aiortc.transport import MediaTransport, SampledTransport

__all__ = [
    "SUPPORTED_AIOICE",
    "SUPPORTED_AIORTC",
    "AiortcInternalsChanged",
    "FrameTransform",
    "GatheringPolicy",
    "IdleTrack",
    "MediaTransport",
    "PatientJitterBuffer",
    "PortRangeExhausted",
    "SampledTransport",
    "SelectedPair",
    "bind_udp",
    "codec_work",
    "consent_expired",
    "dtls_transport_of",
    "ice_sockets",
    "keep_decoder_stopped",
    "patient_video",
    "receiver_codecs",
    "restrict_gathering",
    "selected_pair",
    "self_test",
    "sender_ssrcs",
    "take_keyframe_request",
    "transform_received_frames",
    "transform_sent_frames",
    "wrap_rtp_handler",
]
