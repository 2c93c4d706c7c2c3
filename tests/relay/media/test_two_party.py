"""Two aiortc participants see and hear each other through the relay, without transcoding."""

from __future__ import annotations

from relay.sfu import Relay
from synth.tracks import PatternVideoTrack, ToneAudioTrack
from tests.helpers import Booking
from tests.relay.helpers import hears, sees
from tests.relay.media.conftest import ClientMaker


async def test_two_participants_exchange_audio_and_video(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    booking, room_id = booked_room
    alice = await make_client(booking.client_token)
    bob = await make_client(booking.psychologist_token)

    joined = await alice.join(room_id)
    assert joined["participants"] == []
    await alice.publish(PatternVideoTrack(source_id=1), ToneAudioTrack(source_id=1))
    joined = await bob.join(room_id)
    assert [p["socketId"] for p in joined["participants"]] == [alice.socket_id]
    await bob.publish(PatternVideoTrack(source_id=2), ToneAudioTrack(source_id=2))

    await sees(bob, alice, source_id=1, frames=20)
    await sees(alice, bob, source_id=2, frames=20)
    for listener, speaker, source_id in ((bob, alice, 1), (alice, bob, 2)):
        latencies = await hears(listener, speaker, source_id)
        # marks fold into [-50, 450) ms of their instant: a loopback path takes tens of ms, so
        # a bound well inside that range is one that a stalled or wrong path breaks
        assert all(0 < latency < 250 for latency in latencies), latencies

    for participant in relay.rooms[room_id].participants.values():
        assert participant.codec_work() == (0, 0), "the relay must not decode or encode"


async def test_h264_is_forwarded_as_h264(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    booking, room_id = booked_room
    sender = await make_client(booking.client_token)
    viewer = await make_client(booking.psychologist_token)
    await sender.join(room_id)
    await sender.publish(PatternVideoTrack(source_id=7), video_codec="H264")
    await viewer.join(room_id)
    await sees(viewer, sender, source_id=7, frames=15)
    room = relay.rooms[room_id]
    codecs = {s.stats.codec for s in room.stream_samples() if s.stats.kind == "video"}
    assert codecs == {"H264"}
    for participant in room.participants.values():
        assert participant.codec_work() == (0, 0)
