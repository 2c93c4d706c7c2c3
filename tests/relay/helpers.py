"""Setting up calls for the media tests."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from storage.base import Storage
from synth.client import CallClient
from synth.tracks import PatternVideoTrack, ToneAudioTrack
from tests.helpers import Booking


async def open_room(storage: Storage, booking: Booking) -> str:
    room_id = f"room-{uuid.uuid4()}"
    await storage.set_meeting_link(booking.session.id, room_id)
    return room_id


async def join_and_publish(
    client: CallClient, room_id: str, source_id: int, voice_bitrate: int | None = None
) -> None:
    await client.join(room_id)
    await client.publish(
        PatternVideoTrack(source_id=source_id),
        ToneAudioTrack(source_id=source_id),
        voice_bitrate=voice_bitrate,
    )


async def sees(viewer: CallClient, publisher: CallClient, source_id: int, frames: int = 10) -> None:
    """`viewer` decodes `frames` more intact pictures painted by `publisher` (`source_id`)."""
    assert publisher.socket_id is not None
    await viewer.wait_until(
        lambda: viewer.video_from(publisher.socket_id or "") is not None,
        f"a video track from {publisher.socket_id}",
    )
    probe = viewer.video_from(publisher.socket_id)
    assert probe is not None
    await probe.wait_for_source(source_id, 15)
    await probe.wait_for_more_frames(frames, 15)
    assert probe.last_info is not None and probe.last_info.source_id == source_id


async def hears(
    listener: CallClient, speaker: CallClient, source_id: int, marks: int = 3
) -> list[float]:
    """`listener` hears `speaker` (`source_id`): its tone, and `marks` timing marks in it.

    Every source emits its marks at the same wall-clock instants, so marks alone say nothing
    about who spoke: the continuous tone is per source (`synth.tone.tone_hz_for_source`), and
    every 100 ms window of the track must have carried `source_id`'s tone and nobody else's
    (not the listener's own voice looped back, not a third party's). Returns the latencies (ms).
    """
    socket_id = speaker.socket_id or ""
    await listener.wait_until(lambda: listener.audio_from(socket_id) is not None, "an audio track")
    probe = listener.audio_from(socket_id)
    assert probe is not None
    slot = source_id % 40
    await probe.wait_for(
        lambda p: len(p.marks) >= marks and p.heard_slots[slot] >= 5,
        10,
        f"{marks} timing marks and source {source_id}'s tone",
    )
    assert set(probe.heard_slots) == {slot}, (
        f"heard source slots {dict(probe.heard_slots)} on {socket_id}'s track, expected only {slot}"
    )
    return list(probe.mark_latencies_ms)


async def connected_pair(
    make_client: Callable[..., Awaitable[CallClient]], room_id: str, first: str, second: str
) -> tuple[CallClient, CallClient]:
    """Two participants (tokens `first`, `second`) in a call, each decoding the other's video.

    The first paints source id 1, the second source id 2.
    """
    a = await make_client(first)
    b = await make_client(second)
    await join_and_publish(a, room_id, source_id=1)
    await join_and_publish(b, room_id, source_id=2)
    await sees(a, b, source_id=2, frames=3)
    await sees(b, a, source_id=1, frames=3)
    return a, b
