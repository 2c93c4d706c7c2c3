"""`smiling-relay serve` with `RELAY_WORKERS` > 1: one supervisor, N worker processes.

The supervisor serves nothing itself. It validates the plan (ports, UDP slices, node ids),
initializes storage once (so N workers do not race the migrations), makes a private runtime
directory for the one-machine shared state (unless `REDIS_URL` names Redis), and runs each
worker as `python -m smiling_relay serve` with its own environment:

| variable | value |
|---|---|
| `RELAY_WORKER_INDEX` | `i` (0 … N-1): the process serves as a worker |
| `RELAY_NODE_ID` | `{RELAY_NODE_ID}-w{i}` |
| `RELAY_INTERNAL_PORT` | base + i; base = `RELAY_INTERNAL_PORT`, else `PORT` + 100 |
| `RELAY_UDP_PORTS` | the i-th of N equal, contiguous slices of the range |
| `RELAY_CLUSTER_STATE_FILE` | a file in the runtime directory (not with `REDIS_URL`) |
| `HOST`, `PORT` | the supervisor's (so `--host`/`--port` reach the workers) |
| `JWT_SECRET` | the generated development secret, when none was set (one for all) |

Every worker binds the public port with SO_REUSEPORT (the kernel spreads connections over
them). A worker that exits while the supervisor is not stopping is started again after a
backoff (0.5 s, doubling to 10 s; a worker that ran 30 s starts over at 0.5 s), also one that
exits 0 after an admin drain: that is a worker restart. A worker that exits 2 (its configuration
is refused) on its first start stops everything: restarting cannot fix it.

SIGTERM or SIGINT: the supervisor forwards SIGTERM to every worker (each drains its calls, for
at most DRAIN_TIMEOUT: the supervisor sets no deadline of its own) and exits when all have: 0
when every worker exited 0, else 1. A second signal forwards a second SIGTERM, which a worker
takes as "stop now". Workers run in their own process group, so a terminal's Ctrl-C reaches the
supervisor only (and each worker gets one SIGTERM, not two). On Linux each worker asks the
kernel (`PR_SET_PDEATHSIG`) for a SIGTERM when the supervisor dies, so a SIGKILLed supervisor
leaves no orphans: they drain and exit as on a normal stop.

Deliberately light: the standard library, the configuration and storage, no aiohttp or aiortc
(signals are taken synchronously with `sigtimedwait`: no event loop, no threads).
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from smiling_relay.config import Config, ConfigError, check_node_id
from storage.factory import open_storage

log = logging.getLogger(__name__)

INTERNAL_PORT_OFFSET = 100  # the workers' internal ports start at PORT + 100 by default
MIN_UDP_PORTS_PER_WORKER = 2  # one call: two participants, one bundled socket each
RESTART_BACKOFF_MIN = 0.5
RESTART_BACKOFF_MAX = 10.0
STABLE_AFTER = 30.0  # seconds a worker must run for its next restart to wait the minimum again
EXIT_USAGE = 2  # what a worker whose configuration is refused exits with (smiling_relay.cli)
STATE_FILE_NAME = "cluster-state.sqlite3"
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_WATCHED = {signal.SIGCHLD, *_STOP_SIGNALS}
_IDLE_WAIT = 3600.0  # sigtimedwait's timeout when no restart is due
_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's share of the machine."""

    index: int
    node_id: str
    internal_port: int
    udp_ports: tuple[int, int] | None
    internal_url: str | None  # RELAY_INTERNAL_URL with this worker's port, when one was given

    def environ(self, shared: Mapping[str, str]) -> dict[str, str]:
        env = {
            **shared,
            "RELAY_WORKER_INDEX": str(self.index),
            "RELAY_NODE_ID": self.node_id,
            "RELAY_INTERNAL_PORT": str(self.internal_port),
        }
        if self.udp_ports is not None:
            env["RELAY_UDP_PORTS"] = f"{self.udp_ports[0]}-{self.udp_ports[1]}"
        if self.internal_url is not None:
            env["RELAY_INTERNAL_URL"] = self.internal_url
        return env


def plan_workers(config: Config) -> list[WorkerPlan]:
    """Each worker's node id, internal port and UDP slice; `ConfigError` when they do not fit."""
    n = config.workers
    if config.port == 0:
        raise ConfigError(
            f"PORT must be a fixed port with RELAY_WORKERS={n} (every worker binds it)"
        )
    if config.http_redirect_port == 0:
        raise ConfigError(f"HTTP_REDIRECT_PORT must be a fixed port with RELAY_WORKERS={n}")
    base = config.internal_port
    if base is None:
        base = config.port + INTERNAL_PORT_OFFSET
    what = "RELAY_INTERNAL_PORT" if config.internal_port is not None else "PORT + 100"
    if base == 0 or base + n - 1 > 65535:
        raise ConfigError(
            f"RELAY_INTERNAL_PORT: {n} workers need internal ports {what}={base} … "
            f"{base + n - 1} within 1-65535"
        )
    public = (config.port, config.http_redirect_port)
    taken = [port for port in public if port is not None and base <= port < base + n]
    if taken:
        raise ConfigError(
            f"RELAY_INTERNAL_PORT: the workers' internal ports {base}-{base + n - 1} ({what}) "
            f"include the public port {min(taken)}"
        )
    override = config.internal_url_override
    if override is not None and n > 1 and "{port}" not in override:
        raise ConfigError(
            "RELAY_INTERNAL_URL must contain {port} with several workers (each worker has its "
            f"own internal port), got {override!r}"
        )
    slices = _udp_slices(config.relay_udp_ports, n)
    plans = []
    for i in range(n):
        node_id = check_node_id("RELAY_NODE_ID (with the -wN suffix)", f"{config.node_id}-w{i}")
        port = base + i
        url = None if override is None else override.replace("{port}", str(port))
        plans.append(WorkerPlan(i, node_id, port, slices[i], url))
    return plans


def _udp_slices(ports: tuple[int, int] | None, n: int) -> list[tuple[int, int] | None]:
    if ports is None:
        return [None] * n
    low, high = ports
    per = (high - low + 1) // n
    if per < MIN_UDP_PORTS_PER_WORKER:
        raise ConfigError(
            f"RELAY_UDP_PORTS {low}-{high} has {high - low + 1} ports; {n} workers need at least "
            f"{MIN_UDP_PORTS_PER_WORKER} each ({MIN_UDP_PORTS_PER_WORKER * n}): widen the range "
            "or lower RELAY_WORKERS"
        )
    return [(low + i * per, low + (i + 1) * per - 1) for i in range(n)]


def worker_command(log_level: str) -> list[str]:
    """The worker's command line: this interpreter, the same package (`-m smiling_relay`)."""
    return [sys.executable, "-m", "smiling_relay", "--log-level", log_level, "serve"]


def serve(config: Config, *, log_level: str = "INFO") -> int:
    """Run `config.workers` workers until SIGTERM/SIGINT; the process's exit code."""
    plans = plan_workers(config)
    # Blocked from here on, for every thread: one that storage starts (a driver's monitor) must
    # not take a SIGTERM meant for the supervisor's `sigtimedwait`.
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
    try:
        return _serve(config, plans, log_level)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _serve(config: Config, plans: list[WorkerPlan], log_level: str) -> int:
    asyncio.run(_initialize_storage(config))
    shared = {**os.environ, "HOST": config.host, "PORT": str(config.port)}
    shared.pop("RELAY_CLUSTER_STATE_FILE", None)  # the supervisor's own, below, or none
    if config.jwt_secret_generated:
        shared["JWT_SECRET"] = config.jwt_secret  # every worker must accept the same tokens
    runtime_dir = None
    if config.redis_url is None:
        runtime_dir = Path(tempfile.mkdtemp(prefix="smiling-relay-"))  # mode 0700
        shared["RELAY_CLUSTER_STATE_FILE"] = str(runtime_dir / STATE_FILE_NAME)
    log.info(
        "supervisor (pid %d): %d workers on %s:%d, internal ports %d-%d, shared state %s",
        os.getpid(),
        len(plans),
        config.host,
        config.port,
        plans[0].internal_port,
        plans[-1].internal_port,
        shared.get("RELAY_CLUSTER_STATE_FILE", "Redis"),
    )
    try:
        return Supervisor(plans, worker_command(log_level), shared).run()
    finally:
        if runtime_dir is not None:
            shutil.rmtree(runtime_dir, ignore_errors=True)


async def _initialize_storage(config: Config) -> None:
    storage = open_storage(config)
    try:
        await storage.initialize()
    finally:
        await storage.close()


class Supervisor:
    """Starts the planned workers, restarts those that exit, stops them all on a signal."""

    def __init__(
        self,
        plans: Sequence[WorkerPlan],
        command: Sequence[str],
        shared_env: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._plans = list(plans)
        self._command = list(command)
        self._shared_env = dict(shared_env)
        self._clock = clock
        self._running: dict[int, subprocess.Popen[bytes]] = {}  # worker index → process
        self._started_at: dict[int, float] = {}
        self._starts = {plan.index: 0 for plan in self._plans}
        self._backoff = {plan.index: RESTART_BACKOFF_MIN for plan in self._plans}
        self._restart_at: dict[int, float] = {}  # worker index → when to start it again
        self._last_code: dict[int, int] = {}
        self._stopping = False
        # A worker's first run exited 2: its configuration cannot work, restarting cannot help.
        # (Later, a 2 is restarted like any exit: the operator may be putting a file back.)
        self._refused = False
        self._pdeathsig = _pdeathsig_setter()

    def run(self) -> int:
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _WATCHED)
        try:
            if set(signal.sigpending()) & set(_STOP_SIGNALS):  # came while storage initialized
                stop = signal.sigtimedwait(_STOP_SIGNALS, 0)
                log.info("%s before the workers started: not starting them", _name(stop))
                return 0
            for plan in self._plans:
                self._start(plan)
            while self._running or (self._restart_at and not self._stopping):
                received = signal.sigtimedwait(_WATCHED, self._wait_time())
                if received is not None and received.si_signo != signal.SIGCHLD:
                    self._on_stop_signal(signal.Signals(received.si_signo))
                self._reap()
                self._restart_due()
        finally:
            for proc in self._running.values():  # only on an error of the supervisor itself
                proc.kill()
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        if self._refused:
            return EXIT_USAGE
        failed = {i: code for i, code in self._last_code.items() if code != 0}
        if failed:
            log.warning("stopped; workers that did not exit 0: %s", failed)
            return 1
        log.info("stopped; every worker exited 0")
        return 0

    def _start(self, plan: WorkerPlan) -> None:
        proc = subprocess.Popen(
            self._command,
            env=plan.environ(self._shared_env),
            stdin=subprocess.DEVNULL,
            process_group=0,  # a terminal's Ctrl-C goes to the supervisor, not to every worker
            preexec_fn=self._child_setup,
        )
        self._running[plan.index] = proc
        self._started_at[plan.index] = self._clock()
        self._starts[plan.index] += 1
        log.info("worker %d started (pid %d, node %s)", plan.index, proc.pid, plan.node_id)
        if self._stopping:  # a signal came while it was being started
            proc.send_signal(signal.SIGTERM)

    def _child_setup(self) -> None:
        # Runs in the child between fork and exec: the blocked signals are the supervisor's
        # business, and the worker should hear of the supervisor's death.
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        self._pdeathsig()

    def _on_stop_signal(self, sig: signal.Signals) -> None:
        if self._stopping:
            log.warning("%s again: workers stop now (second SIGTERM)", sig.name)
        else:
            log.info(
                "%s: stopping %d workers (they drain their calls)", sig.name, len(self._running)
            )
            self._stopping = True
            self._restart_at.clear()
        for proc in self._running.values():
            proc.send_signal(signal.SIGTERM)

    def _reap(self) -> None:
        for index, proc in list(self._running.items()):
            code = proc.poll()
            if code is None:
                continue
            del self._running[index]
            self._last_code[index] = code
            if self._stopping:
                log.info("worker %d (pid %d) %s", index, proc.pid, _describe(code))
            elif code == EXIT_USAGE and self._starts[index] == 1:
                log.error("worker %d %s (configuration refused): stopping", index, _describe(code))
                self._refused = True
                self._on_stop_signal(signal.SIGTERM)
            else:
                self._schedule_restart(index, proc.pid, code)

    def _schedule_restart(self, index: int, pid: int, code: int) -> None:
        now = self._clock()
        if now - self._started_at[index] >= STABLE_AFTER:
            self._backoff[index] = RESTART_BACKOFF_MIN
        delay = self._backoff[index]
        self._backoff[index] = min(delay * 2, RESTART_BACKOFF_MAX)
        self._restart_at[index] = now + delay
        level = logging.INFO if code == 0 else logging.WARNING
        log.log(
            level, "worker %d (pid %d) %s; restarting in %.2g s", index, pid, _describe(code), delay
        )

    def _restart_due(self) -> None:
        if self._stopping:
            return
        now = self._clock()
        for index, when in list(self._restart_at.items()):
            if when <= now:
                del self._restart_at[index]
                self._start(self._plans[index])

    def _wait_time(self) -> float:
        if not self._restart_at or self._stopping:
            return _IDLE_WAIT
        return max(0.0, min(self._restart_at.values()) - self._clock())


def _name(received: signal.struct_siginfo | None) -> str:
    return "a signal" if received is None else signal.Signals(received.si_signo).name


def _describe(code: int) -> str:
    if code < 0:
        return f"was killed by {signal.Signals(-code).name}"
    return f"exited with code {code}"


def _pdeathsig_setter() -> Callable[[], None]:
    """What the child calls so the kernel sends it SIGTERM when the supervisor dies (Linux
    `prctl(PR_SET_PDEATHSIG)`); a no-op where that does not exist. libc is loaded here, in the
    parent, so the child between fork and exec only calls a function."""
    if not sys.platform.startswith("linux"):
        return lambda: None
    libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
    prctl = libc.prctl
    parent = os.getpid()

    def set_pdeathsig() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the supervisor died before the request was in place
            os._exit(1)

    return set_pdeathsig
