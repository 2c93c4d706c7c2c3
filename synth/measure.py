"""Measurement helpers shared by `smiling-relay synth` and the benchmarks.

* :class:`StreamCounter` — per received RTP stream: packets, payload bytes, frames (new RTP
  timestamps), keyframes, sequence-number loss before and after retransmission (RTX), freezes,
  all bucketed per wall-clock second so any window can be cut out afterwards;
* :func:`tap_receiver` — installs a counter on an aiortc ``RTCRtpReceiver`` (in front of aiortc's
  own handling, so NACK, PLI, REMB and receiver reports keep working) and optionally keeps the
  decoder thread stopped (the cheap, counting-only subscriber);
* :class:`ProcessCpu`, :func:`machine_cpu`, :func:`proc_rss_mb` — CPU and memory from ``/proc``;
* :func:`summarize` — min/p50/p95/max of a list.

``scripts/bench_relay`` and ``scripts/bench_vs_janus`` import the /proc helpers from here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from relay._aiortc import keep_decoder_stopped, receiver_codecs, wrap_rtp_handler
from relay._aiortc.hooks import RtpPacketHandler
from relay.rtp import h264_keyframe, vp8_keyframe
from synth.probe import FREEZE_THRESHOLD_MS, percentile

AUDIO_GAP_MS = 60.0  # three 20 ms packets missing in a row: an audible drop-out

__all__ = [
    "CLK_TCK",
    "CORES",
    "FreezeSpan",
    "ProcessCpu",
    "StreamCounter",
    "loadavg",
    "machine_cpu",
    "proc_cpu_seconds",
    "proc_cpu_split",
    "proc_rss_mb",
    "proc_run_delay_seconds",
    "summarize",
    "tap_receiver",
]

CLK_TCK = os.sysconf("SC_CLK_TCK")
CORES = os.cpu_count() or 1


def summarize(values: Iterable[float]) -> dict[str, float | int | None]:
    """``{"n", "min", "p50", "p95", "max"}`` of ``values`` (None entries when empty)."""
    data = sorted(values)
    return {
        "n": len(data),
        "min": data[0] if data else None,
        "p50": percentile(data, 50),
        "p95": percentile(data, 95),
        "max": data[-1] if data else None,
    }


# -- /proc ---------------------------------------------------------------------------------------


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) in seconds; NaN once it has gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def proc_cpu_split(pid: int) -> tuple[float, float]:
    """(utime, stime) of a process in seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / CLK_TCK, int(fields[12]) / CLK_TCK


def proc_run_delay_seconds(pid: int) -> float:
    """Time all threads of a process spent runnable but waiting for a CPU (/proc/…/schedstat).

    A server whose run delay grows as fast as its CPU time is starved by other work on the
    machine: its figures then say more about the machine than about the server. NaN when the
    kernel has no schedstats.
    """
    total = 0
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat") as fh:
                    total += int(fh.read().split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    except FileNotFoundError:
        return float("nan")
    return total / 1e9


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a supervisor and its workers), from /proc."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        try:
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as fh:
                    todo.extend(int(child) for child in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return pids


def proc_rss_mb(pid: int) -> float:
    """Resident set size of a process in MiB (NaN once it has gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return float("nan")


def machine_cpu() -> tuple[int, int]:
    """(busy, total) jiffies summed over all cores, from /proc/stat."""
    with open("/proc/stat") as fh:
        values = [int(v) for v in fh.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])  # guest time is already counted in user
    return total - idle, total


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    with open("/proc/loadavg") as fh:
        return [float(x) for x in fh.read().split()[:3]]


class ProcessCpu:
    """CPU use of some processes (and of the whole machine) between two calls of :meth:`mark`.

    ``percent`` values are of one core (100 = one core busy); the machine's busy figure is of
    all cores (up to ``100 * CORES``).
    """

    def __init__(self, pids: Iterable[int]) -> None:
        self.pids = list(pids)
        self._start: tuple[float, dict[int, float], tuple[int, int]] | None = None
        self._delay_start: dict[int, float] = {}

    def mark(self) -> None:
        self._start = (
            time.monotonic(),
            {pid: proc_cpu_seconds(pid) for pid in self.pids},
            machine_cpu(),
        )
        self._delay_start = {pid: proc_run_delay_seconds(pid) for pid in self.pids}

    def read(self) -> dict[str, Any]:
        """Per-pid CPU %, their total, the machine's busy % and the elapsed seconds."""
        if self._start is None:
            raise RuntimeError("ProcessCpu.read() before mark()")
        t0, cpu0, (busy0, total0) = self._start
        elapsed = max(time.monotonic() - t0, 1e-6)
        per_pid = {pid: (proc_cpu_seconds(pid) - cpu0[pid]) / elapsed * 100 for pid in self.pids}
        busy1, total1 = machine_cpu()
        machine = (busy1 - busy0) / max(total1 - total0, 1) * 100 * CORES
        waited = {
            pid: (proc_run_delay_seconds(pid) - self._delay_start[pid]) / elapsed * 100
            for pid in self.pids
        }
        return {
            "elapsed_s": elapsed,
            "per_pid": per_pid,
            "run_delay_pct": waited,  # % of the window the processes' threads waited for a CPU
            "run_delay_total_pct": sum(v for v in waited.values() if v == v),
            "total_pct": sum(v for v in per_pid.values() if v == v),  # NaN-safe
            "machine_busy_pct": machine,
            "machine_capacity_pct": 100 * CORES,
        }


# -- received RTP --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FreezeSpan:
    """A gap longer than the freeze threshold between two new video frames (wall clock, s)."""

    start: float
    duration_ms: float


class StreamCounter:
    """Counts one received media stream (one kind, one receiver) without decoding it.

    Fed with parsed RTP packets (``aiortc.rtp.RtpPacket``) before aiortc's receiver handles them.
    RTX packets (payload types in ``rtx_payload_types``) count as retransmissions: the original
    sequence number they carry repairs a gap. Loss is counted from sequence-number gaps of the
    media SSRC: ``lost`` = packets missing on arrival (network loss, before repair), minus those
    that later arrived out of order; ``recovered`` = missing packets an RTX packet brought back.
    Bytes are RTP payload bytes (media only, RTX excluded).
    """

    def __init__(
        self,
        kind: str,
        *,
        codec_of: Callable[[int], str | None] | None = None,
        freeze_threshold_ms: float = FREEZE_THRESHOLD_MS,
    ) -> None:
        self.kind = kind
        self.codec_of = codec_of or (lambda pt: None)
        self.freeze_threshold_ms = freeze_threshold_ms
        self.media_packets = 0
        self.rtx_packets = 0
        self.bytes = 0
        self.frames = 0
        self.keyframes = 0
        self.lost = 0
        self.recovered = 0
        self.first_packet_at: float | None = None
        self.first_keyframe_at: float | None = None
        self.last_frame_at: float | None = None
        self.freezes: list[FreezeSpan] = []
        # audio: silences longer than AUDIO_GAP_MS between two packets (audio first's figure)
        self.gaps: list[FreezeSpan] = []
        self.last_packet_at: float | None = None
        # second → [payload bytes, media packets, frames, lost, recovered]
        self.buckets: dict[int, list[int]] = {}
        self.codecs_seen: set[str] = set()
        self._media_ssrc: int | None = None
        self._ext_max: int | None = None
        self._missing: dict[int, int] = {}  # ext seq → second it went missing
        self._last_ts: int | None = None
        self._rtx_pts: set[int] = set()
        self._media_pts: set[int] = set()

    # -- feeding -----------------------------------------------------------
    def _bucket(self, second: int) -> list[int]:
        bucket = self.buckets.get(second)
        if bucket is None:
            bucket = self.buckets[second] = [0, 0, 0, 0, 0]
        return bucket

    def _is_rtx(self, payload_type: int) -> bool:
        if payload_type in self._rtx_pts:
            return True
        if payload_type in self._media_pts:
            return False
        codec = self.codec_of(payload_type)
        if codec is None:  # not negotiated (yet): treat as media, decide again next time
            return False
        if codec.lower() == "rtx":
            self._rtx_pts.add(payload_type)
            return True
        self._media_pts.add(payload_type)
        self.codecs_seen.add(codec)
        return False

    def _extend(self, seq: int) -> int:
        """Extended (unwrapped) sequence number near the highest seen so far."""
        if self._ext_max is None:
            return seq
        base = self._ext_max & ~0xFFFF
        ext = base | seq
        if ext - self._ext_max > 0x8000:
            ext -= 0x10000
        elif self._ext_max - ext > 0x8000:
            ext += 0x10000
        return ext

    def on_packet(
        self,
        payload_type: int,
        ssrc: int,
        sequence_number: int,
        timestamp: int,
        payload: bytes,
        arrival: float | None = None,
        size: int | None = None,
    ) -> None:
        """Record one packet (``arrival`` in wall-clock seconds, default now).

        ``size``: the payload's length when ``payload`` is not given (``b""``: a lean subscriber's
        packet left encrypted, synth/lean.py); such a packet is not looked into for a keyframe."""
        if arrival is None:
            arrival = time.time()
        second = int(arrival)
        if self._is_rtx(payload_type):
            self.rtx_packets += 1
            if len(payload) >= 2:
                original = self._extend(payload[0] << 8 | payload[1])
                if self._missing.pop(original, None) is not None:
                    self.recovered += 1
                    self._bucket(second)[4] += 1
            return
        if self._media_ssrc is None:
            self._media_ssrc = ssrc
        elif ssrc != self._media_ssrc:  # a new source on this receiver: start over
            self._media_ssrc, self._ext_max, self._last_ts = ssrc, None, None
            self._missing.clear()
        if self.first_packet_at is None:
            self.first_packet_at = arrival
        if self.kind == "audio":
            last = self.last_packet_at
            if last is not None and (arrival - last) * 1000 > AUDIO_GAP_MS:
                self.gaps.append(FreezeSpan(last, (arrival - last) * 1000))
            self.last_packet_at = arrival if last is None else max(last, arrival)
        bucket = self._bucket(second)
        self.media_packets += 1
        if size is None:
            size = len(payload)
        self.bytes += size
        bucket[0] += size
        bucket[1] += 1
        ext = self._extend(sequence_number)
        if self._ext_max is None:
            self._ext_max = ext
        elif ext > self._ext_max:
            gap = ext - self._ext_max - 1
            if 0 < gap <= 1000:  # larger jumps: a restarted sender, not loss
                for missing in range(self._ext_max + 1, ext):
                    self._missing[missing] = second
                self.lost += gap
                bucket[3] += gap
            self._ext_max = ext
            if len(self._missing) > 4096:  # forget very old holes
                for key in sorted(self._missing)[: len(self._missing) - 2048]:
                    del self._missing[key]
        else:
            went_missing = self._missing.pop(ext, None)
            if went_missing is not None:  # reordered, not lost
                self.lost -= 1
                self._bucket(went_missing)[3] -= 1
        # frames: a new (later) RTP timestamp on the media stream
        if timestamp != self._last_ts and (
            self._last_ts is None or (timestamp - self._last_ts) & 0xFFFFFFFF < 0x80000000
        ):
            self.frames += 1
            bucket[2] += 1
            if self.kind == "video":
                if self.last_frame_at is not None:
                    gap_ms = (arrival - self.last_frame_at) * 1000
                    if gap_ms > self.freeze_threshold_ms:
                        self.freezes.append(FreezeSpan(self.last_frame_at, gap_ms))
                self.last_frame_at = arrival
            self._last_ts = timestamp
        if self.kind == "video" and self._keyframe(payload_type, payload):
            self.keyframes += 1
            if self.first_keyframe_at is None:
                self.first_keyframe_at = arrival

    @property
    def highest_sequence(self) -> int | None:
        """The highest extended sequence number of the media stream so far (receiver reports)."""
        return self._ext_max

    def longest_gap_ms(self, start: float, end: float) -> float:
        """The longest audio silence (> AUDIO_GAP_MS) that began within [start, end), 0 if none;
        times in wall-clock seconds. A silence still going on at `end` counts up to `end`."""
        gaps = [g.duration_ms for g in self.gaps if start <= g.start < end]
        last = self.last_packet_at
        if last is not None and start <= last < end and (end - last) * 1000 > AUDIO_GAP_MS:
            gaps.append((end - last) * 1000)
        return max(gaps, default=0.0)

    def _keyframe(self, payload_type: int, payload: bytes) -> bool:
        codec = (self.codec_of(payload_type) or "vp8").lower()
        if codec == "h264":
            return h264_keyframe(payload)
        if codec == "vp8":
            return vp8_keyframe(payload)[0]
        return False

    # -- reading -----------------------------------------------------------
    def window(self, start: float, end: float) -> dict[str, Any]:
        """Totals over whole seconds ``[start, end)`` (wall clock): rates, loss, freezes."""
        lo, hi = int(start), int(end)
        seconds = max(hi - lo, 1)
        payload = packets = frames = lost = recovered = 0
        for second in range(lo, hi):
            bucket = self.buckets.get(second)
            if bucket is not None:
                payload += bucket[0]
                packets += bucket[1]
                frames += bucket[2]
                lost += bucket[3]
                recovered += bucket[4]
        lost = max(lost, 0)
        expected = packets + lost
        freezes = [f for f in self.freezes if lo <= f.start < hi]
        return {
            "seconds": seconds,
            "packets": packets,
            "lost": lost,
            "recovered": recovered,
            "loss_pct": 100.0 * lost / expected if expected else None,
            "residual_loss_pct": 100.0 * max(lost - recovered, 0) / expected if expected else None,
            "kbps": payload * 8 / seconds / 1000,
            "fps": frames / seconds if self.kind == "video" else None,
            "freezes": len(freezes),
            "freeze_ms": sum(f.duration_ms for f in freezes),
        }

    def bitrate_series(self) -> dict[int, int]:
        """Payload bytes per wall-clock second."""
        return {second: bucket[0] for second, bucket in self.buckets.items()}


def tap_receiver(receiver: Any, counter: StreamCounter, *, decode: bool = True) -> None:
    """Feed every RTP packet ``receiver`` gets to ``counter`` (before aiortc handles it).

    With ``decode=False`` aiortc's decoder thread is stopped as soon as it starts: packets still
    go through aiortc's receiver (jitter buffer, NACK, PLI, REMB, receiver reports) but nothing
    is decoded and the track delivers no frames.
    """
    codecs = receiver_codecs(receiver)

    def codec_of(payload_type: int) -> str | None:
        codec = codecs.get(payload_type)
        return str(codec.mimeType).split("/")[-1] if codec is not None else None

    counter.codec_of = codec_of

    def wrap(original: RtpPacketHandler) -> RtpPacketHandler:
        async def handle(packet: Any, arrival_time_ms: int) -> None:
            counter.on_packet(
                packet.payload_type,
                packet.ssrc,
                packet.sequence_number,
                packet.timestamp,
                packet.payload,
            )
            await original(packet, arrival_time_ms)

        return handle

    wrap_rtp_handler(receiver, wrap)
    if not decode:
        keep_decoder_stopped(receiver)
