"""The QA tool's participants in an end-to-end encrypted call (synth/e2ee.py, the browser
client's key exchange and frame format): they see and hear each other, agree on the security
code, and the relay forwards frames it cannot decode."""

from __future__ import annotations

from relay.sfu import Relay
from synth.tracks import PatternVideoTrack, ToneAudioTrack
from tests.browser.e2ee_helpers import decode_vp8, decrypt_frame, tap_frames
from tests.helpers import Booking
from tests.relay.helpers import hears, sees
from tests.relay.media.conftest import ClientMaker


async def test_two_e2ee_participants_see_and_hear_what_the_relay_cannot(
    booked_room: tuple[Booking, str], make_client: ClientMaker, relay: Relay
) -> None:
    booking, room_id = booked_room
    alice = await make_client(booking.client_token, e2ee=True)
    bob = await make_client(booking.psychologist_token, e2ee=True)
    await alice.join(room_id)
    await alice.publish(PatternVideoTrack(source_id=1), ToneAudioTrack(source_id=1))
    await bob.join(room_id)
    await bob.publish(PatternVideoTrack(source_id=2), ToneAudioTrack(source_id=2))

    await sees(bob, alice, source_id=1, frames=20)
    await sees(alice, bob, source_id=2, frames=20)
    await hears(bob, alice, 1)
    await hears(alice, bob, 2)
    assert alice.e2ee is not None and bob.e2ee is not None
    assert alice.e2ee.mode == bob.e2ee.mode == "e2ee"
    assert alice.e2ee.code is not None and alice.e2ee.code == bob.e2ee.code
    assert len(alice.e2ee.code.split()) == 4
    assert bob.e2ee.cipher.stats.decrypted > 0 and bob.e2ee.cipher.stats.passed_clear == 0

    # the relay's own copy of alice's video: opaque to libvpx, clear with alice's secret
    room = relay.rooms[room_id]
    participant = next(p for p in room.participants.values() if p.socket_id == alice.socket_id)
    producer = next(p for p in participant.producers.values() if p.kind == "video")
    tap = await tap_frames(producer, 10)
    errors, pictures = decode_vp8(tap.frames)
    assert tap.keyframes >= 1  # the clear prefix: the relay still recognises keyframes
    assert errors > 0 or not pictures, "the relay decoded an end-to-end encrypted picture"
    clear = [decrypt_frame(f, alice.e2ee.secret) for f in tap.frames]
    assert all(c is not None for c in clear)
    errors, pictures = decode_vp8([c for c in clear if c is not None])
    assert errors == 0 and pictures


async def test_a_joiner_gets_a_new_key_and_the_old_one_is_left_behind(
    booked_room: tuple[Booking, str], make_client: ClientMaker
) -> None:
    booking, room_id = booked_room
    alice = await make_client(booking.client_token, e2ee=True)
    bob = await make_client(booking.psychologist_token, e2ee=True)
    await alice.join(room_id)
    await alice.publish(PatternVideoTrack(source_id=1), ToneAudioTrack(source_id=1))
    assert alice.e2ee is not None
    before = alice.e2ee.key_id
    await bob.join(room_id)
    await sees(bob, alice, source_id=1, frames=20)
    assert alice.e2ee.key_id != before  # re-keyed on the join: bob never had `before`
    assert bob.e2ee is not None and before not in bob.e2ee.peers[alice.socket_id or ""].key_ids
