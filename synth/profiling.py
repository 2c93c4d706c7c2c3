"""Profiling a server during a benchmark window: py-spy and perf, and their summaries.

py-spy (``record --nonblocking --format raw``) samples wall time: a thread that is runnable but
preempted still counts, so its shares are of the non-idle samples, not CPU; perf (``-e
cpu-clock``) samples on-CPU time. Both are optional: missing tools are skipped.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

__all__ = [
    "IDLE_FRAMES",
    "perf_report",
    "py_spy_path",
    "start_perf",
    "start_py_spy",
    "summarize_profile",
]

IDLE_FRAMES = ("EpollSelector.select (selectors.py)",)


def py_spy_path() -> str | None:
    """py-spy on the PATH or next to this interpreter (``.venv/bin/pip install py-spy``)."""
    beside = Path(sys.executable).with_name("py-spy")
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def start_py_spy(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes]:
    """``py-spy record`` of ``pid`` for ``seconds`` at 100 Hz, collapsed stacks to ``out``."""
    spy = py_spy_path()
    if spy is None:
        raise FileNotFoundError("py-spy is not installed (.venv/bin/pip install py-spy)")
    return subprocess.Popen(
        [spy, "record", "--nonblocking", "--format", "raw", "--rate", "100",
         "-d", str(seconds), "-p", str(pid), "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def start_perf(pid: int, seconds: int, out: Path) -> subprocess.Popen[bytes] | None:
    """``perf record -e cpu-clock -g`` of ``pid`` for ``seconds`` (None without perf)."""
    if shutil.which("perf") is None:
        return None
    return subprocess.Popen(
        ["perf", "record", "-e", "cpu-clock", "-F", "499", "-g", "-p", str(pid),
         "-o", str(out), "--", "sleep", str(seconds)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def summarize_profile(path: Path, seconds: float, top: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares per function (line numbers merged) from py-spy's raw
    (collapsed) output, as shares of the non-idle samples (the event loop waiting in epoll is
    idle)."""
    self_counts: Counter[str] = Counter()
    incl_counts: Counter[str] = Counter()
    total = idle = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        frames = [f for f in frames if f and not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        if frames[-1] in IDLE_FRAMES:
            idle += count
            continue
        total += count
        self_counts[frames[-1]] += count
        for f in set(frames):
            incl_counts[f] += count
    rate = 100.0
    return {
        "samples": total,
        "idle_samples": idle,
        "busy_pct_of_core": total / (seconds * rate) * 100 if seconds else None,
        "self": [(f, c, 100 * c / total) for f, c in self_counts.most_common(top)] if total else [],
        "inclusive": [(f, c, 100 * c / total) for f, c in incl_counts.most_common(top)]
        if total
        else [],
    }


def perf_report(data: Path) -> str:
    """On-CPU shares by shared object and by symbol (perf cpu-clock samples, no call graph)."""
    parts = []
    for sort, limit in (("dso", 12), ("dso,sym", 30)):
        report = subprocess.run(
            ["perf", "report", "-i", str(data), "--stdio", "--no-children", "-g", "none",
             "--percent-limit", "0.7", "--sort", sort],
            capture_output=True,
            text=True,
            timeout=120,
        ).stdout  # fmt: skip
        lines = [ln for ln in report.splitlines() if ln.strip() and not ln.startswith("#")]
        parts.append(
            f"perf cpu-clock on-CPU samples by {sort}:\n"
            + "\n".join("  " + ln.strip() for ln in lines[:limit])
        )
    return "\n\n".join(parts)
