"""The encoded-frame layer of aiortc's senders and receivers, for the QA tool's end-to-end
encryption (synth/e2ee.py): each frame is transformed whole, as a browser's
RTCRtpScriptTransform sees it, before packetization and after depacketization.

- A sender's `_next_encoded_frame` returns the frame already packetized (VP8: payload
  descriptor + part of the frame per packet; Opus: one packet): the frame is put together
  again, transformed, and packetized anew (aiortc's own VP8 packetizer, same picture id).
- A receiver hands each frame (VP8 depayloaded and reassembled by the jitter buffer) to its
  decoder thread through a queue: the queue is replaced, before the thread starts, by one that
  transforms each frame on `put` (a frame the transform drops is not decoded).
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from typing import Any

from aiortc.codecs.vpx import Vp8Encoder, VpxPayloadDescriptor

from relay._aiortc.selftest import AiortcInternalsChanged

# (kind, frame) → the frame to send / decode, or None to drop it.
FrameTransform = Callable[[str, bytes], bytes | None]

_QUEUE = "_RTCRtpReceiver__decoder_queue"
_THREAD = "_RTCRtpReceiver__decoder_thread"


def transform_sent_frames(sender: Any, kind: str, transform: FrameTransform) -> None:
    """Every frame `sender` sends goes through `transform` first (VP8 or Opus)."""
    original = getattr(sender, "_next_encoded_frame", None)
    if original is None:
        raise AiortcInternalsChanged("RTCRtpSender._next_encoded_frame is gone")

    async def next_frame(codec: Any) -> Any:
        encoded = await original(codec)
        if encoded is None:
            return None
        if kind == "audio":
            payloads = [out for f in encoded.payloads if (out := transform("audio", f))]
        else:
            payloads = _vp8_transformed(encoded.payloads, transform)
        if not payloads:
            return None
        encoded.payloads = payloads
        return encoded

    sender._next_encoded_frame = next_frame


def _vp8_transformed(payloads: list[bytes], transform: FrameTransform) -> list[bytes]:
    descriptor, first = VpxPayloadDescriptor.parse(payloads[0])
    frame = first + b"".join(VpxPayloadDescriptor.parse(p)[1] for p in payloads[1:])
    out = transform("video", frame)
    if out is None:
        return []
    return list(Vp8Encoder._packetize(out, descriptor.picture_id or 0))


def transform_received_frames(receiver: Any, kind: str, transform: FrameTransform) -> None:
    """Every frame `receiver` decodes goes through `transform` first. Call it before the
    receiver starts (its decoder thread takes the queue when it starts)."""
    if not isinstance(getattr(receiver, _QUEUE, None), queue.Queue):
        raise AiortcInternalsChanged("RTCRtpReceiver's decoder queue is gone")
    if getattr(receiver, _THREAD, None) is not None:
        raise RuntimeError("the receiver's decoder already runs: transform it before it starts")
    setattr(receiver, _QUEUE, _TransformingQueue(kind, transform))


class _TransformingQueue(queue.Queue[Any]):
    def __init__(self, kind: str, transform: FrameTransform) -> None:
        super().__init__()
        self._kind = kind
        self._transform = transform

    def put(self, item: Any, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:  # None stops the decoder thread
            _codec, frame = item
            data = self._transform(self._kind, frame.data)
            if data is None:
                return
            frame.data = data
        super().put(item, block, timeout)
