"""Reporting for `smiling-relay synth`: summary, thresholds, table, JSON report, plots, progress.

The JSON report (``--json FILE``, format version 1)::

    {"version": 1, "tool": "smiling-relay synth", "started_at", "target": {"kind", "url"},
     "options": {…}, "window": {"t_start", "t0", "t1", "seconds"},
     "machine": {"cores", "loadavg_before", "loadavg_after", "client_cpu_pct"},
     "summary": {…see summarize()…},
     "thresholds": [{"name", "metric", "op", "limit", "value", "ok"}], "passed": bool,
     "calls": [{"index", "room", "session_id", "error"?,
                "participants": [{"index", "label", "source_id", "key", "full", "decode",
                                  "join_ms", "error"}],
                "streams": [{"from", "to", "decoded", "publisher_full", "join_to_first_frame_ms",
                             "video": {window stats…}, "audio": {window stats…}}],
                "bitrate_kbps": [[second since start, kbps received by the call], …]}]}

Window stats (over the measurement window): ``packets, lost, recovered, loss_pct,
residual_loss_pct, kbps, fps, freezes, freeze_ms`` and, where measured, ``latency_ms`` ({n, min,
p50, p95, max}), ``frames_decoded``, ``intact_pct``.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

from synth.load import RunResult
from synth.measure import CORES, summarize

__all__ = [
    "THRESHOLDS",
    "ProgressBar",
    "Threshold",
    "build_report",
    "evaluate",
    "format_table",
    "summarize_calls",
    "write_plots",
]

REPORT_VERSION = 1


# -- summary -------------------------------------------------------------------------------------


def _pooled_pct(numerator: float, denominator: float) -> float | None:
    return 100.0 * numerator / denominator if denominator else None


def summarize_calls(calls: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Run-wide figures from the per-call results (see the module doc for their meaning)."""
    participants = [p for c in calls for p in c.get("participants", [])]
    streams = [s for c in calls for s in c.get("streams", [])]
    video = [s.get("video", {}) for s in streams]
    audio = [s.get("audio", {}) for s in streams]
    flowing = [s for s in streams if s.get("join_to_first_frame_ms") is not None]
    video_lat = [x for c in calls for x in c.get("samples", {}).get("video", [])]
    audio_lat = [x for c in calls for x in c.get("samples", {}).get("audio", [])]

    def loss(rows: Iterable[dict[str, Any]], key: str = "lost") -> float | None:
        rows = list(rows)
        lost = sum(r.get(key, 0) or 0 for r in rows)
        expected = sum((r.get("packets", 0) or 0) + (r.get("lost", 0) or 0) for r in rows)
        return _pooled_pct(lost, expected)

    residual_rows = [
        {"packets": v.get("packets", 0), "lost": v.get("lost", 0),
         "residual": max((v.get("lost", 0) or 0) - (v.get("recovered", 0) or 0), 0)}
        for v in video
    ]  # fmt: skip
    decoded = [v for v in video if v.get("frames_decoded")]
    intact = sum(v["frames_decoded"] * (v.get("intact_pct") or 0) / 100 for v in decoded)
    fps = [v["fps"] for v in video if v.get("fps") is not None]
    freezes = [int(v.get("freezes", 0) or 0) for v in video]
    failed_calls = [
        c for c in calls
        if c.get("error") or any(p.get("error") for p in c.get("participants", []))
        or any(s.get("join_to_first_frame_ms") is None for s in c.get("streams", []))
    ]  # fmt: skip
    first_frames = [s["join_to_first_frame_ms"] for s in flowing]
    return {
        "calls": len(calls),
        "calls_ok": len(calls) - len(failed_calls),
        "participants": len(participants),
        "participants_failed": sum(1 for p in participants if p.get("error")),
        "streams": len(streams),
        "streams_flowing": len(flowing),
        "streams_missing": len(streams) - len(flowing),
        "failures": sum(1 for p in participants if p.get("error")) + len(streams) - len(flowing),
        "setup_ms": summarize(p["join_ms"] for p in participants if p.get("join_ms") is not None),
        "join_to_first_frame_ms": summarize(first_frames),
        "video_latency_ms": summarize(video_lat),
        "audio_latency_ms": summarize(audio_lat),
        "fps_min": min(fps) if fps else None,
        "fps_median": statistics.median(fps) if fps else None,
        "freezes": sum(freezes),
        "freezes_max_per_stream": max(freezes) if freezes else None,
        "freeze_ms": sum(float(v.get("freeze_ms", 0) or 0) for v in video),
        "video_loss_pct": loss(video),
        "video_residual_loss_pct": loss(residual_rows, "residual"),
        "audio_loss_pct": loss(audio),
        "video_kbps": summarize(v["kbps"] for v in video if v.get("kbps") is not None),
        "audio_kbps": summarize(a["kbps"] for a in audio if a.get("kbps") is not None),
        "total_received_kbps": sum((v.get("kbps") or 0) for v in [*video, *audio]),
        "frames_decoded": sum(int(v["frames_decoded"]) for v in decoded),
        "intact_pct": _pooled_pct(intact, sum(v["frames_decoded"] for v in decoded)),
    }


# -- thresholds ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    name: str  # the CLI option's dest, e.g. "max_video_latency_ms"
    metric: str  # dotted path into the summary
    op: str  # "<=" or ">="
    limit: float

    def value(self, summary: dict[str, Any]) -> float | None:
        node: Any = summary
        for part in self.metric.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return float(node) if isinstance(node, int | float) else None

    def check(self, summary: dict[str, Any]) -> dict[str, Any]:
        value = self.value(summary)
        if value is None:
            ok = False  # nothing measured: the threshold cannot be shown to hold
        elif self.op == "<=":
            ok = value <= self.limit
        else:
            ok = value >= self.limit
        return {**asdict(self), "value": value, "ok": ok}


# option dest → (summary metric, op, help)
THRESHOLDS: dict[str, tuple[str, str, str]] = {
    "max_join_ms": (
        "join_to_first_frame_ms.max", "<=",
        "every stream's join → first video frame within MS",
    ),
    "max_video_latency_ms": (
        "video_latency_ms.p95", "<=", "pooled p95 of glass-to-glass video latency within MS",
    ),
    "max_audio_latency_ms": (
        "audio_latency_ms.p95", "<=", "pooled p95 of audio (timing mark) latency within MS",
    ),
    "max_loss_pct": ("video_loss_pct", "<=", "video packet loss (before retransmission) ≤ PCT"),
    "max_audio_loss_pct": ("audio_loss_pct", "<=", "audio packet loss ≤ PCT"),
    "min_fps": ("fps_min", ">=", "every video stream at least FPS new frames per second"),
    "max_freezes": ("freezes_max_per_stream", "<=", "at most N freezes (> 200 ms) per stream"),
    "min_intact_pct": ("intact_pct", ">=", "at least PCT % of decoded pictures intact"),
    "max_failures": (
        "failures", "<=", "at most N failed participants + missing streams (default 0)",
    ),
}  # fmt: skip


def evaluate(summary: dict[str, Any], limits: dict[str, float | None]) -> list[dict[str, Any]]:
    """Check every threshold given (limits: option dest → limit or None)."""
    out = []
    for name, limit in limits.items():
        if limit is None or name not in THRESHOLDS:
            continue
        metric, op, _ = THRESHOLDS[name]
        out.append(Threshold(name, metric, op, float(limit)).check(summary))
    return out


def build_report(result: RunResult, limits: dict[str, float | None]) -> dict[str, Any]:
    options = result.options
    plan = result.plan
    summary = summarize_calls(result.calls)
    checks = evaluate(summary, limits)
    opts = asdict(options)
    for secret in ("jwt_secret", "admin_token"):
        if opts.get(secret):
            opts[secret] = "<set>"
    opts["tokens"] = f"<{len(options.tokens)} tokens>" if options.tokens else []
    calls = [{k: v for k, v in c.items() if k != "samples"} for c in result.calls]
    return {
        "version": REPORT_VERSION,
        "tool": "smiling-relay synth",
        "started_at": result.started_at,
        "target": {"kind": options.target, "url": options.url, "clients_use": plan.url},
        "options": opts,
        "window": {
            "t_start": plan.t_start,
            "t0": plan.t0,
            "t1": plan.t1,
            "seconds": plan.t1 - plan.t0,
        },
        "machine": {
            "cores": CORES,
            "loadavg_before": result.loadavg_before,
            "loadavg_after": result.loadavg_after,
            "client_cpu_pct": result.client_cpu_pct,
        },
        "summary": summary,
        "thresholds": checks,
        "passed": all(c["ok"] for c in checks),
        "calls": calls,
    }


# -- table ---------------------------------------------------------------------------------------


def _f(value: Any, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _trio(stats: dict[str, Any] | None) -> str:
    if not stats or not stats.get("n"):
        return "-"
    return f"{_f(stats['p50'])}/{_f(stats['p95'])}/{_f(stats['max'])}"


def format_table(report: dict[str, Any], max_rows: int = 20) -> str:
    """The per-call table, the run summary and the threshold verdicts, as text."""
    header = (
        "call", "ok", "join→1st frame ms p50/p95/max", "video ms p50/p95/max",
        "audio ms p50/p95/max", "fps min", "freezes", "loss v/a %", "kbps/stream", "intact %",
    )  # fmt: skip
    rows = []
    for call in report["calls"][:max_rows]:
        streams = call.get("streams", [])
        video = [s.get("video", {}) for s in streams]
        call_summary = summarize_calls([call])
        lat_v = [s["video"]["latency_ms"] for s in streams if "latency_ms" in s.get("video", {})]
        lat_a = [s["audio"]["latency_ms"] for s in streams if "latency_ms" in s.get("audio", {})]
        ok = not call.get("error") and call_summary["failures"] == 0
        rows.append((
            str(call["index"]),
            "yes" if ok else "NO",
            _trio(call_summary["join_to_first_frame_ms"]),
            " ".join(_trio(x) for x in lat_v) or "-",
            " ".join(_trio(x) for x in lat_a) or "-",
            _f(call_summary["fps_min"], 1),
            str(sum(int(v.get("freezes", 0) or 0) for v in video)),
            f"{_f(call_summary['video_loss_pct'], 2)}/{_f(call_summary['audio_loss_pct'], 2)}",
            _f(call_summary["video_kbps"]["p50"]),
            _f(call_summary["intact_pct"], 1),
        ))  # fmt: skip
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(header)]  # fmt: skip
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    if len(report["calls"]) > max_rows:
        lines.append(f"… {len(report['calls']) - max_rows} more calls in the JSON report")
    s = report["summary"]
    first = s["join_to_first_frame_ms"]
    w = report["window"]
    m = report["machine"]
    lines += [
        "",
        f"calls {s['calls_ok']}/{s['calls']} ok · participants {s['participants']} "
        f"({s['participants_failed']} failed) · streams {s['streams_flowing']}/{s['streams']} "
        f"flowing · window {w['seconds']:.0f} s",
        f"join → first frame ms  p50 {_f(first['p50'])}  p95 {_f(first['p95'])}  "
        f"max {_f(first['max'])}",
        f"video latency ms       p50 {_f(s['video_latency_ms']['p50'], 1)}  "
        f"p95 {_f(s['video_latency_ms']['p95'], 1)}  max {_f(s['video_latency_ms']['max'], 1)}  "
        f"({s['video_latency_ms']['n']} frames)",
        f"audio latency ms       p50 {_f(s['audio_latency_ms']['p50'], 1)}  "
        f"p95 {_f(s['audio_latency_ms']['p95'], 1)}  max {_f(s['audio_latency_ms']['max'], 1)}  "
        f"({s['audio_latency_ms']['n']} marks)",
        f"fps min {_f(s['fps_min'], 1)} median {_f(s['fps_median'], 1)} · freezes {s['freezes']} "
        f"({_f(s['freeze_ms'])} ms) · loss video {_f(s['video_loss_pct'], 2)} % "
        f"(after RTX {_f(s['video_residual_loss_pct'], 2)} %) audio {_f(s['audio_loss_pct'], 2)} %",
        f"received kbps per video stream p50 {_f(s['video_kbps']['p50'])} · total "
        f"{_f(s['total_received_kbps'])} · intact pictures {_f(s['intact_pct'], 1)} % of "
        f"{s['frames_decoded']} decoded",
        f"machine: {m['cores']} cores, load {m['loadavg_before']} → {m['loadavg_after']}, "
        f"clients {_f(m['client_cpu_pct'])} % of a core",
    ]
    if report["thresholds"]:
        lines.append("")
        for check in report["thresholds"]:
            verdict = "PASS" if check["ok"] else "FAIL"
            lines.append(
                f"{verdict}  {check['name']}: {check['metric']} = {_f(check['value'], 2)} "
                f"(limit {check['op']} {check['limit']:g})"
            )
        lines.append("PASSED" if report["passed"] else "FAILED: a threshold was missed")
    return "\n".join(lines)


# -- plots ---------------------------------------------------------------------------------------


def write_plots(
    report: dict[str, Any], samples: dict[str, list[float]], directory: Path
) -> tuple[list[Path], str | None]:
    """latency.png (distribution) and bitrate.png (per call over time); (files, why not)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return (
            [],
            "matplotlib is not installed: no plots (they need the qa extra: pip install .[qa])",
        )
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, kind in zip(axes, ("video", "audio"), strict=True):
        values = samples.get(kind, [])
        if values:
            ax.hist(values, bins=min(60, max(10, len(values) // 20)), color="#4477aa")
            for q, style in ((50, "-"), (95, "--")):
                v = sorted(values)[min(len(values) - 1, round(q / 100 * (len(values) - 1)))]
                ax.axvline(v, color="#cc3311", linestyle=style, label=f"p{q} {v:.0f} ms")
            ax.legend()
        else:
            ax.text(0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{kind} latency ({len(values)} {'frames' if kind == 'video' else 'marks'})")
        ax.set_xlabel("ms")
        ax.set_ylabel("count")
    fig.tight_layout()
    path = directory / "latency.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    files.append(path)

    fig, ax = plt.subplots(figsize=(11, 4.5))
    window = report["window"]
    base = int(window["t_start"])
    ax.axvspan(window["t0"] - base, window["t1"] - base, color="#dddddd", label="window")
    calls = report["calls"]
    for call in calls:
        series = call.get("bitrate_kbps", [])
        if series:
            xs, ys = zip(*series, strict=True)
            ax.plot(xs, ys, linewidth=1 if len(calls) > 8 else 1.5,
                    label=f"call {call['index']}" if len(calls) <= 8 else None)  # fmt: skip
    ax.set_xlabel("seconds since start")
    ax.set_ylabel("kbit/s received by the call")
    ax.set_title("received bitrate per call")
    ax.legend(loc="upper left", fontsize="small")
    fig.tight_layout()
    path = directory / "bitrate.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    files.append(path)
    return files, None


# -- progress ------------------------------------------------------------------------------------


class ProgressBar:
    """One line, redrawn in place on a terminal; a line every few seconds otherwise."""

    def __init__(self, stream: TextIO | None = None, *, width: int = 28, every: float = 5.0):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.width = width
        self.every = every
        self._last = 0.0
        self._drawn = False

    def __call__(self, state: dict[str, Any]) -> None:
        now = time.time()
        if not self.tty and now - self._last < self.every:
            return
        self._last = now
        t_start, t0, t1 = state["t_start"], state["t0"], state["t1"]
        done = min(max((now - t_start) / max(t1 - t_start, 1e-6), 0.0), 1.0)
        filled = round(done * self.width)
        if now < t0:
            phase = f"joining ({t0 - now:.0f} s to window)"
        else:
            phase = f"measuring {min(now - t0, t1 - t0):.0f}/{t1 - t0:.0f} s"
        line = (
            f"[{'#' * filled}{'.' * (self.width - filled)}] {phase} · joined "
            f"{state.get('joined', 0)}/{state['participants']} · flowing "
            f"{state.get('flowing', 0)}/{state['streams']} · failed {state.get('failed', 0)}"
        )
        if self.tty:
            self.stream.write("\r" + line.ljust(100)[:110])
            self._drawn = True
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\n")
            self.stream.flush()
