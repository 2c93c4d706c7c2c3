"""`smiling-relay serve --workers N`: the supervisor and its worker processes (one machine).

Real processes throughout: `serve --workers 2` as a subprocess on free loopback ports, its
workers found as the supervisor's children in /proc (their environment says which worker each
is), and for the restart rules a `Supervisor` run in this process over tiny child scripts.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from smiling_relay import supervisor
from smiling_relay.supervisor import Supervisor, WorkerPlan
from tests.processes import (
    alive,
    children,
    environ_of,
    free_ports,
    free_udp_range,
    gone,
    healthz,
    listening_inodes,
    serve_env,
    socket_inodes,
    wait_for,
)

REPO = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0  # two workers importing aiortc on a shared 2-core machine


@dataclass
class Workers:
    """The running `serve --workers 2`: its process and its workers by index."""

    proc: subprocess.Popen[str]
    port: int
    internal_base: int

    def workers(self) -> dict[int, int]:
        """worker index → pid, for the workers alive now."""
        found = {}
        for pid in children(self.proc.pid):
            try:
                index = environ_of(pid).get("RELAY_WORKER_INDEX")
            except (FileNotFoundError, ProcessLookupError):
                continue
            if index is not None:
                found[int(index)] = pid
        return found

    def serving(self, count: int) -> dict[int, int] | None:
        """The workers, once `count` of them answer on their internal ports."""
        found = self.workers()
        if len(found) != count:
            return None
        if not all(healthz(self.internal_base + i) for i in found):
            return None
        return found


@pytest.fixture
def two_workers(tmp_path: Path) -> Iterator[Workers]:
    """`serve --workers 2` on free ports, without JWT_SECRET (the supervisor generates one),
    both workers answering; stopped (SIGKILL as a last resort) after the test."""
    port = free_ports(1)
    internal = free_ports(2)
    udp = free_udp_range(10)
    env = serve_env(
        tmp_path,
        PORT=str(port),
        HOST="127.0.0.1",
        RELAY_INTERNAL_PORT=str(internal),
        RELAY_UDP_PORTS=f"{udp}-{udp + 9}",
        RELAY_NODE_ID="test-node",
    )
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "smiling_relay", "serve", "--workers", "2"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
    )
    running = Workers(proc, port, internal)
    seen: set[int] = set()
    try:
        try:
            seen.update(wait_for(lambda: running.serving(2), "two workers", START_TIMEOUT).values())
        except AssertionError:
            raise AssertionError((tmp_path / "serve.log").read_text()) from None
        yield running
    finally:
        seen.update(running.workers().values())
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        for pid in seen:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
        log.close()


def test_two_workers_share_the_port_restart_and_stop(two_workers: Workers, tmp_path: Path) -> None:
    workers = two_workers.workers()
    assert sorted(workers) == [0, 1]
    assert len(set(workers.values())) == 2
    assert healthz(two_workers.port)  # the public port answers

    envs = {i: environ_of(pid) for i, pid in workers.items()}
    # Each worker's own share: node id, internal port, a slice of the UDP range.
    assert {e["RELAY_NODE_ID"] for e in envs.values()} == {"test-node-w0", "test-node-w1"}
    assert [int(envs[i]["RELAY_INTERNAL_PORT"]) for i in (0, 1)] == [
        two_workers.internal_base,
        two_workers.internal_base + 1,
    ]
    slices = [tuple(map(int, envs[i]["RELAY_UDP_PORTS"].split("-"))) for i in (0, 1)]
    low = slices[0][0]
    assert slices == [(low, low + 4), (low + 5, low + 9)]  # equal, contiguous, disjoint
    # One generated development secret for every worker, and one shared-state file.
    assert envs[0]["JWT_SECRET"] == envs[1]["JWT_SECRET"]
    state_file = Path(envs[0]["RELAY_CLUSTER_STATE_FILE"])
    assert envs[1]["RELAY_CLUSTER_STATE_FILE"] == str(state_file)
    assert state_file.parent.stat().st_mode & 0o777 == 0o700
    # Both workers listen on the public port (SO_REUSEPORT), not only one of them.
    public = listening_inodes(two_workers.port)
    assert len(public) == 2
    for pid in workers.values():
        assert socket_inodes(pid) & public, f"worker {pid} does not listen on the public port"

    # A worker killed with SIGKILL is started again; the other one is left alone.
    os.kill(workers[0], signal.SIGKILL)

    def replaced() -> dict[int, int] | None:
        now = two_workers.serving(2)
        return now if now is not None and now[0] != workers[0] else None

    restarted = wait_for(replaced, "worker 0 restarted and answering", START_TIMEOUT)
    assert restarted[1] == workers[1]
    assert not alive(workers[0])

    # SIGTERM: every worker stops, the supervisor exits 0 and removes its runtime directory.
    two_workers.proc.send_signal(signal.SIGTERM)
    assert two_workers.proc.wait(30) == 0, (tmp_path / "serve.log").read_text()
    for pid in {*workers.values(), *restarted.values()}:
        wait_for(gone(pid), f"worker {pid} gone")
    assert not state_file.parent.exists()
    log = (tmp_path / "serve.log").read_text()
    assert f"worker 0 (pid {workers[0]}) was killed by SIGKILL; restarting in 0.5 s" in log
    assert "stopped; every worker exited 0" in log


def test_a_killed_supervisor_leaves_no_orphans(two_workers: Workers) -> None:
    workers = two_workers.workers()
    state_dir = Path(environ_of(workers[0])["RELAY_CLUSTER_STATE_FILE"]).parent
    two_workers.proc.send_signal(signal.SIGKILL)
    two_workers.proc.wait(10)
    try:
        for pid in workers.values():  # PR_SET_PDEATHSIG: each worker gets SIGTERM and stops
            wait_for(gone(pid), f"orphaned worker {pid} gone", 20)
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)  # no supervisor left to do it


@pytest.mark.parametrize(
    ("env", "args", "message"),
    [
        ({"RELAY_WORKERS": "many"}, [], "RELAY_WORKERS must be an integer"),
        ({"RELAY_WORKERS": "65"}, [], "RELAY_WORKERS must be between 1 and 64"),
        ({}, ["--workers", "0"], "--workers must be within 1-64"),
        (
            {"RELAY_WORKERS": "2", "RELAY_UDP_PORTS": "40000-40002"},
            [],
            "RELAY_UDP_PORTS 40000-40002 has 3 ports; 2 workers need at least 2 each (4)",
        ),
        ({"RELAY_UDP_PORTS": "40000-40004"}, ["--workers", "3"], "3 workers need at least 2"),
        ({"RELAY_WORKERS": "2", "PORT": "0"}, [], "PORT must be a fixed port"),
        ({"RELAY_WORKERS": "2", "PORT": "65500", "RELAY_INTERNAL_PORT": "65535"}, [], "within"),
        (
            {"RELAY_WORKERS": "2", "PORT": "8080", "RELAY_INTERNAL_PORT": "8079"},
            [],
            "include the public port 8080",
        ),
        (
            {"RELAY_WORKERS": "2", "RELAY_INTERNAL_URL": "http://10.0.0.5:9000"},
            [],
            "RELAY_INTERNAL_URL must contain {port}",
        ),
        ({"RELAY_WORKERS": "2", "RELAY_NODE_ID": "n" * 62}, [], "RELAY_NODE_ID (with the -wN"),
    ],
)
def test_configuration_errors_exit_2(
    tmp_path: Path, env: dict[str, str], args: list[str], message: str
) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "smiling_relay", "serve", *args],
        cwd=tmp_path,
        env=serve_env(tmp_path, JWT_SECRET="s" * 40, **env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert "configuration error" in result.stderr or "--workers" in result.stderr
    assert message in result.stderr
    assert "started" not in result.stderr  # refused before any worker ran
    assert not (tmp_path / "relay.sqlite3").exists()  # and before storage was touched


def test_the_supervisor_imports_no_web_or_media_stack() -> None:
    code = (
        "import sys, smiling_relay.cli, smiling_relay.supervisor; "
        "print(sorted(m for m in ('aiohttp', 'aiortc', 'aioice', 'av') if m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.strip() == "[]"


# -- the restart rules, with a Supervisor in this process over tiny child scripts ----------------

CHILD = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path

    runs = Path(os.environ["RUNS"])
    n = len(runs.read_text()) + 1 if runs.exists() else 1
    runs.write_text("x" * n)
    plan = os.environ["PLAN"].split(",")  # what run n does: an exit code, or "stop"
    step = plan[min(n, len(plan)) - 1]
    if step != "stop":
        sys.exit(int(step))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(int(os.environ["ON_TERM"])))
    os.kill(os.getppid(), signal.SIGTERM)  # ask the supervisor to stop
    for _ in range(200):  # until the supervisor's SIGTERM arrives (bounded)
        time.sleep(0.05)
    sys.exit(9)
    """
)


def run_supervisor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, plan: str, on_term: int = 0
) -> tuple[int, int, list[str]]:
    """(exit code, runs of the child, the supervisor's log messages)."""
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_MIN", 0.05)
    monkeypatch.setattr(supervisor, "RESTART_BACKOFF_MAX", 0.2)
    runs = tmp_path / "runs"
    env = {**os.environ, "RUNS": str(runs), "PLAN": plan, "ON_TERM": str(on_term)}
    messages: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    supervisor.log.addHandler(handler)
    supervisor.log.setLevel(logging.INFO)
    try:
        code = Supervisor(
            [WorkerPlan(0, "t-w0", 1, None, None)], [sys.executable, "-c", CHILD], env
        ).run()
    finally:
        supervisor.log.removeHandler(handler)
        supervisor.log.setLevel(logging.NOTSET)
    return code, len(runs.read_text()), messages


def test_restarts_back_off_and_a_clean_stop_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Three crashes, a clean exit (an admin drain's restart), then a run that asks to stop.
    code, runs, messages = run_supervisor(tmp_path, monkeypatch, "3,3,3,0,stop")
    assert (code, runs) == (0, 5)
    delays = [m.rpartition("restarting in ")[2] for m in messages if "restarting in" in m]
    assert delays == ["0.05 s", "0.1 s", "0.2 s", "0.2 s"]  # doubling, capped
    assert sum("exited with code 3; restarting" in m for m in messages) == 3
    assert sum("exited with code 0; restarting" in m for m in messages) == 1


def test_a_worker_failing_its_stop_makes_the_exit_code_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, runs, _ = run_supervisor(tmp_path, monkeypatch, "stop", on_term=1)
    assert (code, runs) == (1, 1)


def test_a_refused_configuration_is_not_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, runs, messages = run_supervisor(tmp_path, monkeypatch, "2")
    assert (code, runs) == (2, 1)
    assert any("configuration refused" in m for m in messages)


def test_a_stop_before_the_start_starts_nothing(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    env = {**os.environ, "RUNS": str(runs), "PLAN": "stop", "ON_TERM": "0"}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    try:
        os.kill(os.getpid(), signal.SIGTERM)  # pending, as if sent while storage initialized
        code = Supervisor(
            [WorkerPlan(0, "t-w0", 1, None, None)], [sys.executable, "-c", CHILD], env
        ).run()
        assert signal.SIGTERM not in signal.sigpending()  # taken, not left to kill us later
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
    assert code == 0
    assert not runs.exists()


def test_a_later_exit_2_is_restarted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # After a first run that worked, a refused start (a TLS file being replaced) is retried.
    code, runs, _ = run_supervisor(tmp_path, monkeypatch, "3,2,stop")
    assert (code, runs) == (0, 3)
