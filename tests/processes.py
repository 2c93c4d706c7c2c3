"""Helpers for tests that run `smiling-relay serve` as real processes: free ports, bounded
polling, what /proc says about a process (children, environment, listening sockets)."""

from __future__ import annotations

import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T | None], what: str, timeout: float = 10.0) -> T:
    """Poll `condition` until it returns something truthy (returned); fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)  # polling the condition, not standing in for it


def healthz(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, urllib.error.URLError):
        return False


def free_ports(count: int) -> int:
    """The first of `count` consecutive TCP ports free on loopback right now."""
    return _free_run(count, socket.SOCK_STREAM, "127.0.0.1")


def free_udp_range(count: int) -> int:
    """The first of `count` consecutive UDP ports free on every address right now."""
    return _free_run(count, socket.SOCK_DGRAM, "0.0.0.0")


def _free_run(count: int, kind: socket.SocketKind, host: str) -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as probe:
            probe.bind(("127.0.0.1", 0))
            first = int(probe.getsockname()[1])
        if not 1024 <= first <= 65535 - count:
            continue
        sockets = []
        try:
            for port in range(first, first + count):
                s = socket.socket(socket.AF_INET, kind)
                sockets.append(s)
                s.bind((host, port))
            return first
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise AssertionError(f"no run of {count} free ports found")


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def gone(pid: int) -> Callable[[], bool]:
    return lambda: not alive(pid)


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(stat.rpartition(")")[2].split()[1]) == pid and alive(int(entry.name)):
            found.append(int(entry.name))
    return found


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (item.partition(b"=") for item in raw.split(b"\0") if item)
    return {k.decode(): v.decode() for k, _, v in pairs}


def listening_inodes(port: int) -> set[str]:
    """Inodes of the TCP sockets listening on `port` (any address)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(fields[9])
    return inodes


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:[") : -1])
    return inodes


def serve_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("RELAY_", "HTTP_REDIRECT", "TLS_"))
        and k not in {"NODE_ENV", "APP_ENV", "MONGODB_URI", "PUBLIC_URL", "HOST", "PORT"}
        and k not in {"JWT_SECRET", "REDIS_URL", "CLUSTER_SECRET", "LOG_FORMAT"}
    }
    env["SQLITE_PATH"] = str(tmp_path / "relay.sqlite3")
    env.update(extra)
    return env
