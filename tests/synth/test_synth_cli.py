"""`smiling-relay synth`: short synthetic calls against a relay (and Janus) started by the test.

The live tests run the real command in a subprocess (`python -m smiling_relay synth …`) against
the real app served by the test, all inside a network namespace of the test's own
(synth/netns.py). They check that the report is complete and the figures plausible, not exact.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestServer

from synth import netns
from synth.cli import EXIT_THRESHOLD, EXIT_USAGE, build_parser, main
from synth.impair import Impairment, ImpairmentError
from synth.load import LoadOptions, RunPlan, build_plan, schedule, split_plan
from synth.measure import StreamCounter
from synth.report import Threshold, evaluate, format_table, summarize_calls
from tests.conftest import AppFactory
from tests.helpers import TEST_JWT_SECRET

ROOT = Path(__file__).resolve().parents[2]
SERVER = Callable[..., Awaitable[TestServer]]
MAX_PLAUSIBLE_MS = 3000.0


# -- units -----------------------------------------------------------------------------------


def test_counter_counts_frames_loss_reordering_and_retransmissions() -> None:
    counter = StreamCounter("video", codec_of=lambda pt: "rtx" if pt == 97 else "VP8")
    t = 1000.0
    keyframe = bytes([0x10, 0x00])  # S=1, PID=0; P bit 0: keyframe
    delta = bytes([0x10, 0x01])
    seq = 65530  # wraps
    for frame in range(30):
        for part in range(2):
            if frame == 10 and part == 1:
                seq += 1  # lost, repaired below
                continue
            if frame == 20 and part == 0:
                seq += 1  # lost for good
                continue
            payload = keyframe if frame == 0 and part == 0 else delta
            counter.on_packet(96, 1, seq & 0xFFFF, frame * 6000, payload, t + frame / 15)
            seq += 1
    counter.on_packet(97, 2, 1, 0, ((65530 + 21) & 0xFFFF).to_bytes(2, "big") + b"x", t + 1.0)
    assert counter.frames == 30
    assert counter.keyframes == 1 and counter.first_keyframe_at == t
    assert counter.lost == 2 and counter.recovered == 1
    stats = counter.window(t, t + 2)
    assert stats["packets"] == 58 and stats["lost"] == 2
    assert stats["loss_pct"] == pytest.approx(100 * 2 / 60)
    assert stats["residual_loss_pct"] == pytest.approx(100 * 1 / 60)
    assert stats["fps"] == 15 and stats["freezes"] == 0
    # a packet that arrives late is reordering, not loss
    late = StreamCounter("audio")
    for s in (1, 2, 4, 3, 5):
        late.on_packet(111, 9, s, s * 960, b"a", t)
    assert late.lost == 0 and late.window(t, t + 1)["loss_pct"] == 0


def test_counter_reports_freezes() -> None:
    counter = StreamCounter("video")
    for i, at in enumerate([0.0, 0.066, 0.133, 0.6, 0.666]):
        counter.on_packet(96, 1, i, i * 6000, b"\x00\x00", 50.0 + at)
    assert [round(f.duration_ms) for f in counter.freezes] == [467]
    assert counter.window(50, 51)["freezes"] == 1


def test_plan_ramps_calls_interleaved_and_splits_whole_calls() -> None:
    options = LoadOptions(url="http://x", calls=3, participants=2, ramp=2.0, warmup=1.0,
                          jwt_secret="s", cheap=True, full_calls=1)  # fmt: skip
    flags, ramp_s = schedule(options, 0.0)
    assert ramp_s == 2.5
    assert [f[0] for f in flags] == [0.0, 1.5, 0.5, 2.0, 1.0, 2.5]  # first participants first
    assert [f[1] for f in flags] == [True, True, False, False, False, False]
    plan = build_plan(options, [("s", f"r{i}", ["a", "b"]) for i in range(3)], 100.0)
    assert plan.t0 == pytest.approx(101.0 + 2.5 + 1.0)
    assert plan.t1 == pytest.approx(plan.t0 + options.duration)
    again = RunPlan.from_json(plan.to_json())
    assert again == plan
    shares = split_plan(plan, 2)  # the full call in a process of its own
    assert [[c.index for c in share.calls] for share in shares] == [[0], [1, 2]]
    shares = split_plan(dataclasses.replace(plan, calls=plan.calls[1:]), 2)  # all cheap
    assert [[c.index for c in share.calls] for share in shares] == [[1], [2]]


def _call(latency: float, fps: float, lost: int) -> dict[str, Any]:
    video = {"packets": 100 - lost, "lost": lost, "recovered": 0, "kbps": 300.0, "fps": fps,
             "freezes": 0, "freeze_ms": 0, "frames_decoded": 50, "intact_pct": 100.0,
             "latency_ms": {"n": 1, "min": latency, "p50": latency, "p95": latency,
                            "max": latency}}  # fmt: skip
    audio = {"packets": 50, "lost": 0, "kbps": 40.0}
    return {
        "index": 0,
        "room": "r",
        "participants": [{"index": 0, "join_ms": 300.0, "error": None}],
        "streams": [
            {"from": 1, "to": 0, "join_to_first_frame_ms": 800.0, "video": video, "audio": audio}
        ],
        "bitrate_kbps": [[1, 340.0]],
        "samples": {"video": [latency], "audio": []},
    }


def test_thresholds_pass_fail_and_fail_when_nothing_was_measured() -> None:
    summary = summarize_calls([_call(80.0, 15.0, 2)])
    assert summary["video_loss_pct"] == pytest.approx(2.0)
    limits = {"max_video_latency_ms": 100, "min_fps": 20, "max_audio_latency_ms": 200}
    checks = evaluate(summary, {**limits, "max_loss_pct": None})
    verdicts = {c["name"]: c["ok"] for c in checks}
    assert verdicts == {
        "max_video_latency_ms": True,
        "min_fps": False,
        "max_audio_latency_ms": False,
    }  # fmt: skip  (no audio marks measured)
    assert Threshold("x", "video_latency_ms.p95", "<=", 79).check(summary)["ok"] is False
    report = {
        "calls": [_call(80.0, 15.0, 2)], "summary": summary, "thresholds": checks, "passed": False,
        "window": {"t_start": 0, "t0": 1, "t1": 2, "seconds": 1},
        "machine": {"cores": 2, "loadavg_before": [0], "loadavg_after": [0], "client_cpu_pct": 1},
    }  # fmt: skip
    text = format_table(report)
    assert "FAIL  min_fps" in text and "PASS  max_video_latency_ms" in text


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    env_secret = os.environ.pop("JWT_SECRET", None)
    try:
        assert main(["http://127.0.0.1:9"]) == EXIT_USAGE  # no secret, no sessions
    finally:
        if env_secret is not None:
            os.environ["JWT_SECRET"] = env_secret
    assert "--jwt-secret" in capsys.readouterr().err
    assert main(["http://127.0.0.1:9", "--jwt-secret", "s", "--resolution", "641x480"]) == 2
    assert main(["http://127.0.0.1:9", "--jwt-secret", "s", "--jitter", "5"]) == 2
    with pytest.raises(ImpairmentError):
        Impairment(loss_pct=150).validate()
    assert "netem" in build_parser().format_help()


# -- live ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def media_netns() -> netns.Netns:
    reason = netns.unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    return netns.enter_process_netns()


async def run_synth(*args: str, timeout: float = 60.0) -> tuple[int, str, str]:  # noqa: ASYNC109
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.pop("JWT_SECRET", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "smiling_relay", "--log-level", "WARNING", "synth", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env, cwd=str(ROOT),
    )  # fmt: skip
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture
async def relay_url(media_netns: netns.Netns, aiohttp_server: SERVER, make_app: AppFactory) -> str:
    server: TestServer = await aiohttp_server(
        # the clients' namespace addresses (synth.netns, synth.impair) are private
        make_app(relay_allowed_peer_ranges=("10.0.0.0/8",)),
        host=media_netns.addresses[0],
    )
    return f"http://{media_netns.addresses[0]}:{server.port}"


def _plausible_ms(stats: dict[str, Any]) -> None:
    assert stats["n"] > 0
    assert 0 < stats["p50"] <= stats["p95"] <= stats["max"] < MAX_PLAUSIBLE_MS


async def test_short_call_report_is_complete_and_plausible(relay_url: str, tmp_path: Path) -> None:
    report_path, plots = tmp_path / "report.json", tmp_path / "plots"
    code, out, err = await run_synth(
        relay_url, "--jwt-secret", TEST_JWT_SECRET, "--duration", "3", "--warmup", "1",
        "--resolution", "320x240", "--json", str(report_path), "--plots", str(plots),
        "--no-progress", "--max-video-latency-ms", "2500", "--max-loss-pct", "50",
        "--min-fps", "1000",  # cannot hold: the exit status must say so
    )  # fmt: skip
    assert code == EXIT_THRESHOLD, (out, err)
    assert "FAIL  min_fps" in out and "PASS  max_video_latency_ms" in out
    report = json.loads(report_path.read_text())
    assert report["version"] == 1 and report["passed"] is False
    assert {c["name"]: c["ok"] for c in report["thresholds"]} == {
        "max_video_latency_ms": True, "max_loss_pct": True, "min_fps": False, "max_failures": True,
    }  # fmt: skip
    s = report["summary"]
    assert (s["calls"], s["calls_ok"], s["participants"], s["streams_flowing"]) == (1, 1, 2, 2)
    for key in ("join_to_first_frame_ms", "video_latency_ms", "audio_latency_ms"):
        _plausible_ms(s[key])
    # the publisher paints 15 fps: every stream shows new pictures, never more than painted
    # (how close to 15 it stays on a loaded machine is a benchmark figure, not a test)
    assert 0 < s["fps_min"] <= 16
    assert s["video_kbps"]["p50"] > 20 and s["audio_kbps"]["p50"] > 5
    assert s["video_loss_pct"] is not None and s["intact_pct"] > 50
    (call,) = report["calls"]
    assert call["bitrate_kbps"] and len(call["streams"]) == 2
    for stream in call["streams"]:
        assert stream["decoded"] and stream["video"]["frames_decoded"] > 0
        _plausible_ms(stream["video"]["latency_ms"])
    # matplotlib comes with the qa extra the test command installs: the plots must be there
    assert (plots / "latency.png").stat().st_size > 1000
    assert (plots / "bitrate.png").stat().st_size > 1000


async def test_an_e2ee_call_is_decoded_through_the_frame_cipher(
    relay_url: str, tmp_path: Path
) -> None:
    report_path = tmp_path / "report.json"
    code, out, err = await run_synth(
        relay_url, "--jwt-secret", TEST_JWT_SECRET, "--duration", "3", "--warmup", "1",
        "--resolution", "320x240", "--json", str(report_path), "--no-progress", "--e2ee",
    )  # fmt: skip
    assert code == 0, (out, err)
    (call,) = json.loads(report_path.read_text())["calls"]
    assert len(call["streams"]) == 2
    for stream in call["streams"]:
        assert stream["video"]["frames_decoded"] > 0 and stream["video"]["intact_pct"] > 50
        cipher = stream["e2ee"]
        assert cipher["mode"] == "e2ee" and cipher["decrypted"] > 0, cipher
        assert cipher["passed_clear"] == 0, cipher  # nothing played in the clear
        # only the first frames, sent before the key exchange reached the receiver, are lost
        assert cipher["undecryptable"] < cipher["decrypted"] / 4, cipher


async def test_cheap_calls_in_worker_processes_behind_lossy_link(
    relay_url: str, tmp_path: Path
) -> None:
    """Clip publishers, counting subscribers, two worker processes, 5 % UDP loss each way.

    The warm-up leaves time for DTLS to retransmit a lost handshake flight (1 s, 2 s, then 4 s).
    """
    report_path = tmp_path / "report.json"
    code, out, err = await run_synth(
        relay_url, "--jwt-secret", TEST_JWT_SECRET, "--calls", "2", "--cheap", "--full-calls",
        "0", "--procs", "2", "--duration", "3", "--warmup", "7", "--resolution", "320x240",
        "--bitrate", "200", "--loss", "5", "--json", str(report_path), "--no-progress",
    )  # fmt: skip
    assert code == 0, (out, err)
    report = json.loads(report_path.read_text())
    s = report["summary"]
    assert (s["calls_ok"], s["streams_flowing"]) == (2, 4), (s, out, err)
    assert s["frames_decoded"] == 0  # nobody decoded
    assert s["video_latency_ms"]["n"] == 0
    # 5 % each way. What a subscriber counts lost is mostly its downlink's 5 % (the relay
    # repairs most uplink losses before forwarding, and late packets are uncounted): ≈ 15 of
    # the ≈ 300 packets of this short run. Above 1 % (3 packets) is ≈ 3.5 σ below that.
    assert 1 < s["video_loss_pct"] < 30, s
    # NACK/RTX really recovered packets: on the uplink (the relay asks the publisher) and on the
    # downlink (the relay answers the subscriber from its history), so what stays lost after
    # RTX is well below the raw loss
    recovered = sum(st["video"].get("recovered", 0) for c in report["calls"] for st in c["streams"])
    assert recovered > 0, s
    assert s["video_residual_loss_pct"] < s["video_loss_pct"] / 2, s
    assert report["impairment"]["loss_pct"] == 5
    assert report["target"]["clients_use"] == relay_url  # a local address: reached directly


@pytest.fixture
async def janus_server(media_netns: netns.Netns) -> AsyncIterator[Any]:
    """A throw-away Janus (synth/janus.py) in the test's namespace; skipped without Janus."""
    from synth.janus import janus_available, start_janus

    reason = janus_available()
    if reason is not None:
        pytest.skip(reason)
    with socket.socket() as probe:
        probe.bind((media_netns.addresses[0], 0))
        port = probe.getsockname()[1]
    server = await asyncio.to_thread(start_janus, media_netns.addresses[0], port)
    try:
        yield server
    finally:
        await asyncio.to_thread(server.stop)


async def test_janus_smoke(janus_server: Any, tmp_path: Path) -> None:
    report_path = tmp_path / "report.json"
    code, out, err = await run_synth(
        "--janus", janus_server.ws_url, "--duration", "2", "--warmup", "1", "--resolution",
        "320x240", "--json", str(report_path), "--no-progress",
    )  # fmt: skip
    assert code == 0, (out, err, janus_server.log_path.read_text()[-2000:])
    s = json.loads(report_path.read_text())["summary"]
    assert s["streams_flowing"] == 2
    _plausible_ms(s["video_latency_ms"])
