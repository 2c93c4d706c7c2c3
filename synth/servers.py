"""The relay as a child process of a benchmark: `smiling-relay serve` with a throw-away set-up.

Benchmarks measure the server's CPU from ``/proc/PID/stat``, so the relay runs as a process of
its own (the clients are other processes): a temporary SQLite file, a fixed JWT secret (the
benchmark mints the admin token with it), rate limits high enough for the set-up burst, log
level WARNING. Janus, the other server the benchmarks drive: :func:`synth.janus.start_janus`.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["RelayProcess", "die_with_parent", "free_port"]


def die_with_parent() -> None:
    """``preexec_fn``: the child gets SIGTERM if the benchmark dies without cleaning up."""
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port(address: str = "0.0.0.0") -> int:
    """A TCP port free on ``address`` right now."""
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


def _relay_command() -> list[str]:
    script = Path(sys.executable).with_name("smiling-relay")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "smiling_relay.cli"]


class RelayProcess:
    """``smiling-relay serve`` in ``workdir``; healthy (``/healthz``) when the constructor returns.

    ``url_host`` is the address clients use (default ``host``); ``prefix`` wraps the command (for
    example ``ip netns exec NS``, which execs, so :attr:`pid` stays the relay's own); ``command``
    replaces ``smiling-relay`` (an experiment's wrapper); ``env`` adds settings.
    """

    def __init__(
        self,
        workdir: Path,
        tag: str,
        *,
        jwt_secret: str,
        host: str | None = None,
        url_host: str | None = None,
        env: Mapping[str, str] | None = None,
        prefix: Sequence[str] = (),
        command: Sequence[str] | None = None,
        timeout: float = 30.0,
    ) -> None:
        port = free_port(host or "0.0.0.0")
        settings = dict(os.environ)
        settings.update(
            PORT=str(port),
            JWT_SECRET=jwt_secret,
            SQLITE_PATH=str(workdir / f"relay-{tag}.sqlite3"),
            RATE_LIMIT_API_PER_MIN="1000000",
            RATE_LIMIT_WS_PER_MIN="1000000",
            # benchmark clients: many at once from one namespace address, on private ranges
            WS_MAX_PENDING_PER_IP="100000",
            RELAY_ALLOWED_PEER_RANGES="10.0.0.0/8",
            # one process, whose /proc/PID/stat is the relay's CPU (env may ask for workers)
            RELAY_WORKERS="1",
        )
        settings.update(env or {})
        self.log_path = workdir / f"relay-{tag}.log"
        argv = [
            *prefix,
            *(command or _relay_command()),
            "--log-level",
            os.environ.get("RELAY_LOG_LEVEL", "WARNING"),
            "serve",
        ]
        argv += [*(["--host", host] if host else []), "--port", str(port)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                argv,
                env=settings,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=str(workdir),
                preexec_fn=die_with_parent,
            )
        self.url = f"http://{url_host or host or '127.0.0.1'}:{port}"
        try:
            self._wait_healthy(timeout)
        except BaseException:
            self.stop()
            raise

    @property
    def pid(self) -> int:
        return self.process.pid

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"relay exited with {self.process.returncode}; see {self.log_path}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as resp,
            ):
                if resp.status == 200:
                    return
            if time.time() > deadline:
                raise TimeoutError(f"relay not healthy within {timeout:.0f} s; see {self.log_path}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
