"""Two aiortc participants see and hear each other through the relay, without transcoding."""

from __future__ import annotations

import uuid

from relay.sfu import Relay
from storage.base import Storage
from synth.tracks import PatternVideoTrack, ToneAudioTrack
from tests.helpers import Booking, BookingFactory
from tests.relay.conftest import ClientMaker


async def open_room(storage: Storage, booking: Booking) -> str:
    room_id = f"room-{uuid.uuid4()}"
    await storage.set_meeting_link(booking.session.id, room_id)
    return room_id


async def test_two_participants_exchange_audio_and_video(
    booking_factory: BookingFactory, storage: Storage, make_client: ClientMaker, relay: Relay
) -> None:
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    alice = await make_client(booking.client_token)
    bob = await make_client(booking.psychologist_token)

    joined = await alice.join(room_id)
    assert joined["participants"] == []
    await alice.publish(PatternVideoTrack(source_id=1), ToneAudioTrack(source_id=1))
    joined = await bob.join(room_id)
    assert [p["socketId"] for p in joined["participants"]] == [alice.socket_id]
    await bob.publish(PatternVideoTrack(source_id=2), ToneAudioTrack(source_id=2))

    await alice.wait_until(lambda: alice.video_from(bob.socket_id) is not None, "bob's video track")
    await bob.wait_until(lambda: bob.video_from(alice.socket_id) is not None, "alice's video track")
    seen_by_bob = await bob.video_from(alice.socket_id).wait_for_frames(20, 15, intact=True)
    seen_by_alice = await alice.video_from(bob.socket_id).wait_for_frames(20, 15, intact=True)
    assert seen_by_bob.source_ids_seen == {1}
    assert seen_by_alice.source_ids_seen == {2}
    for listener, speaker in ((bob, alice), (alice, bob)):
        heard = await listener.audio_from(speaker.socket_id).wait_for_marks(3, 10)
        assert all(0 < latency < 1000 for latency in heard.mark_latencies_ms)

    for participant in relay.rooms[room_id].participants.values():
        assert participant.codec_work() == (0, 0), "the relay must not decode or encode"


async def test_h264_is_forwarded_as_h264(
    booking_factory: BookingFactory, storage: Storage, make_client: ClientMaker, relay: Relay
) -> None:
    booking = await booking_factory()
    room_id = await open_room(storage, booking)
    sender = await make_client(booking.client_token)
    viewer = await make_client(booking.psychologist_token)
    await sender.join(room_id)
    await sender.publish(PatternVideoTrack(source_id=7), video_codec="H264")
    await viewer.join(room_id)
    await viewer.wait_until(lambda: viewer.video_from(sender.socket_id or "") is not None, "video")
    probe = viewer.video_from(sender.socket_id or "")
    assert probe is not None
    await probe.wait_for_frames(15, 15, intact=True)
    assert probe.source_ids_seen == {7}
    room = relay.rooms[room_id]
    codecs = {s.stats.codec for s in room.stream_samples() if s.stats.kind == "video"}
    assert codecs == {"H264"}
    for participant in room.participants.values():
        assert participant.codec_work() == (0, 0)
