"""`smiling-relay synth --lean`: lean publishers and counting subscribers, against the real relay
(and Janus), and the lean pieces packet by packet.

The live tests run the real command as the other synth tests do (test_synth_cli.py): through the
relay's REST and WebSocket signaling, ICE and DTLS, inside a network namespace of the test's own.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from relay.negotiation import ABS_SEND_TIME_URI, MID_URI, Codec, MediaSection
from relay.rtp import FIXED_HEADER, find_extension, payload_bounds
from synth.lean import HISTORY, TICK, LeanClip, LeanPublisher, Replayer, _OutStream
from synth.load import LoadError, LoadOptions, RunPlan, build_plan, split_plan
from synth.measure import StreamCounter
from tests.helpers import TEST_JWT_SECRET
from tests.synth.test_synth_cli import janus_server, media_netns, relay_url, run_synth
from tests.waiting import eventually

__all__ = ["janus_server", "media_netns", "relay_url"]  # fixtures, used by name

VP8 = Codec("VP8", 96, 90000, None, {}, 97, True, True)


class FakeTransport:
    """What a stream writes to: every RTP and RTCP packet, in the clear."""

    ready = True

    def __init__(self) -> None:
        self.rtp: list[bytes] = []
        self.rtcp: list[bytes] = []

    def send_rtp(self, packet: bytes) -> bool:
        self.rtp.append(packet)
        return True

    def send_rtcp(self, packet: bytes) -> bool:
        self.rtcp.append(packet)
        return True


def _frames() -> list[tuple[tuple[bytes, ...], bool]]:
    # frame 0 and 4 are keyframes; frame i has i+1 packets
    return [(tuple(bytes([i, j]) * 20 for j in range(i % 3 + 1)), i % 4 == 0) for i in range(8)]


def _stream(transport: FakeTransport, start: int = 1) -> _OutStream:
    section = MediaSection(
        mid="1", kind="video", direction="sendonly", codec=VP8,
        extensions={MID_URI: 4, ABS_SEND_TIME_URI: 2},
    )  # fmt: skip
    return _OutStream(transport, section, 0x1234, 0x5678, _frames(), start, 1 / 30)  # type: ignore[arg-type]


def test_a_stream_writes_the_negotiated_header_and_numbers_packets_in_order() -> None:
    transport = FakeTransport()
    stream = _stream(transport)
    first_seq = stream.seq
    for _ in range(3):
        stream.send_frame(0.0)
    headers = [FIXED_HEADER.unpack_from(p) for p in transport.rtp]
    assert len(headers) == 2 + 3 + 1  # frames 1, 2, 3
    assert [h[2] for h in headers] == [(first_seq + i) & 0xFFFF for i in range(6)]
    assert {h[4] for h in headers} == {0x1234} and {h[1] & 0x7F for h in headers} == {96}
    # the marker on each frame's last packet, one timestamp per frame, 3000 ticks apart
    assert [h[1] >> 7 for h in headers] == [0, 1, 0, 0, 1, 1]
    stamps = sorted({h[3] for h in headers})
    assert len(stamps) == 3 and stamps[1] - stamps[0] == 3000
    for packet in transport.rtp:
        bounds = payload_bounds(packet)
        assert bounds is not None
        assert find_extension(packet, bounds[2], bounds[3], 4) == b"1"
        assert len(find_extension(packet, bounds[2], bounds[3], 2) or b"") == 3
    assert transport.rtcp  # a sender report with the first frame


def test_a_keyframe_request_jumps_to_the_next_keyframe_and_a_nack_is_answered_with_rtx() -> None:
    transport = FakeTransport()
    stream = _stream(transport)
    stream.send_frame(0.0)  # frame 1
    stream.keyframe_wanted = True
    stream.send_frame(0.0)  # not frame 2: frame 4, the next keyframe
    assert stream.keyframes_forced == 1 and stream.pos == 5
    sent = transport.rtp[-1]
    seq = FIXED_HEADER.unpack_from(sent)[2]
    bounds = payload_bounds(sent)
    assert bounds is not None and sent[bounds[0] :] == bytes([4, 1]) * 20  # its last packet
    stream.resend([seq, (seq + 1000) & 0xFFFF])  # the second was never sent: nothing to resend
    assert stream.resent == 1
    rtx = transport.rtp[-1]
    _, marker_pt, _, _, ssrc = FIXED_HEADER.unpack_from(rtx)
    assert (marker_pt & 0x7F, ssrc) == (97, 0x5678)
    assert rtx[12:14] == seq.to_bytes(2, "big") and rtx[14:] == bytes([4, 1]) * 20
    # the history keeps HISTORY packets: an older one is not resent
    for _ in range(HISTORY):
        stream.send_frame(0.0)
    stream.resend([seq])
    assert stream.resent == 1


async def test_the_replayer_serves_many_streams_per_wakeup() -> None:
    transports = [FakeTransport() for _ in range(1000)]
    streams = [_stream(t) for t in transports]
    replay = Replayer()
    started = time.monotonic()
    for stream in streams:
        replay.add(stream)
    await eventually(lambda: replay.frames >= 15000, "15000 frames replayed", timeout=20)
    elapsed, wakeups = time.monotonic() - started, replay.wakeups
    for stream in streams:
        stream.closed = True
    assert all(t.rtp for t in transports)
    # 1000 streams at 30 fps (30,000 frames/s, each at its own phase), woken at most once per
    # TICK (1 ms): never more wake-ups than ticks (without the floor, ≈ 2,000/s here), several
    # frames per wake-up
    assert wakeups <= elapsed / TICK + 1, (wakeups, elapsed)
    assert replay.frames / wakeups > 1.5, (replay.frames, wakeups)


def test_a_lean_publisher_needs_a_negotiated_connection() -> None:
    class Unnegotiated:
        localDescription = remoteDescription = None

        def getTransceivers(self) -> list[Any]:
            return []

    clip = LeanClip("vp8", 30, (((b"x",), True),), (b"o",), frozenset())
    with pytest.raises(ValueError, match="negotiated"):
        LeanPublisher(Unnegotiated(), clip, 1)


def test_a_counter_counts_an_encrypted_packet_by_its_size() -> None:
    counter = StreamCounter("video")
    counter.on_packet(96, 1, 10, 1000, b"", 100.0, size=900)
    counter.on_packet(96, 1, 12, 4000, b"", 100.1, size=100)
    assert (counter.bytes, counter.media_packets, counter.lost, counter.frames) == (1000, 2, 1, 2)
    assert counter.keyframes == 0 and counter.highest_sequence == 12


def test_lean_plans_travel_and_the_full_calls_get_a_process_of_their_own() -> None:
    options = LoadOptions(url="http://x", calls=5, participants=2, jwt_secret="s", cheap=True,
                          lean=True, full_calls=1)  # fmt: skip
    plan = build_plan(options, [("s", f"r{i}", ["a", "b"]) for i in range(5)], 100.0)
    assert plan.lean and RunPlan.from_json(plan.to_json()) == plan
    shares = [[c.index for c in share.calls] for share in split_plan(plan, 3)]
    assert shares == [[0], [1, 3], [2, 4]]
    assert [[c.index for c in s.calls] for s in split_plan(plan, 1)] == [[0, 1, 2, 3, 4]]
    with pytest.raises(LoadError, match="--lean needs --cheap"):
        LoadOptions(url="http://x", jwt_secret="s", lean=True).validate()


# -- live ----------------------------------------------------------------------------------------


def _lean_totals(report: dict[str, Any]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for call in report["calls"]:
        for key, value in call["lean"].items():
            totals[key] = totals.get(key, 0) + value
    return totals


async def test_lean_calls_through_the_relay_count_and_check_their_media(
    relay_url: str, tmp_path: Path
) -> None:
    """Three lean calls and one full one in one process, behind 3 % loss each way."""
    report_path = tmp_path / "report.json"
    code, out, err = await run_synth(
        relay_url, "--jwt-secret", TEST_JWT_SECRET, "--calls", "4", "--lean", "--procs", "1",
        "--duration", "4", "--warmup", "6", "--resolution", "320x240", "--bitrate", "300",
        "--fps", "30", "--loss", "3", "--json", str(report_path), "--no-progress",
    )  # fmt: skip
    assert code == 0, (out, err)
    report = json.loads(report_path.read_text())
    s = report["summary"]
    assert (s["calls_ok"], s["streams_flowing"]) == (4, 8), (s, out, err)
    lean = _lean_totals(report)
    # every decrypted sample was a payload of the clip: the media arrived intact
    assert lean["decrypted"] > 50 and lean["matched"] == lean["decrypted"], lean
    assert lean["undecryptable"] == 0, lean
    # the relay asked each lean publisher for a keyframe for its new subscriber, and resent
    # lost packets were asked for in turn (3 % uplink loss)
    assert lean["keyframes_forced"] >= 3 and lean["resent"] > 0, lean
    lean_streams = [st for c in report["calls"][1:] for st in c["streams"]]
    for stream in lean_streams:
        assert not stream["decoded"]
        assert stream["video"]["packets"] > 0 and stream["audio"]["packets"] > 0, stream
        assert stream["video"]["fps"] > 10, stream  # the clip is 30 fps; loss and load aside
        assert stream["join_to_first_frame_ms"] is not None, stream
    recovered = sum(st["video"].get("recovered", 0) for st in lean_streams)
    assert recovered > 0, s  # the relay's RTX reached the lean subscribers, and was counted


async def test_lean_calls_through_janus(janus_server: Any, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    code, out, err = await run_synth(
        "--janus", janus_server.ws_url, "--calls", "2", "--lean", "--full-calls", "0",
        "--duration", "3", "--warmup", "3", "--resolution", "320x240", "--json",
        str(report_path), "--no-progress",
    )  # fmt: skip
    assert code == 0, (out, err, janus_server.log_path.read_text()[-2000:])
    report = json.loads(report_path.read_text())
    assert report["summary"]["streams_flowing"] == 4, report["summary"]
    lean = _lean_totals(report)
    assert lean["decrypted"] > 20 and lean["matched"] == lean["decrypted"], lean
