"""Setting up calls for the media tests."""

from __future__ import annotations

import uuid

from storage.base import Storage
from synth.client import CallClient
from synth.tracks import PatternVideoTrack, ToneAudioTrack
from tests.helpers import Booking


async def open_room(storage: Storage, booking: Booking) -> str:
    room_id = f"room-{uuid.uuid4()}"
    await storage.set_meeting_link(booking.session.id, room_id)
    return room_id


async def join_and_publish(client: CallClient, room_id: str, source_id: int) -> None:
    await client.join(room_id)
    await client.publish(
        PatternVideoTrack(source_id=source_id), ToneAudioTrack(source_id=source_id)
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


async def hears(listener: CallClient, speaker: CallClient, marks: int = 3) -> list[float]:
    """`listener` detects `marks` timing marks in `speaker`'s audio; returns latencies (ms)."""
    socket_id = speaker.socket_id or ""
    await listener.wait_until(lambda: listener.audio_from(socket_id) is not None, "an audio track")
    probe = listener.audio_from(socket_id)
    assert probe is not None
    await probe.wait_for_marks(marks, 10)
    return list(probe.mark_latencies_ms)
