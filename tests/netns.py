"""Run the test process inside a network namespace of its own.

On the bare host aioice skips only 127.0.0.1 and Chromium ignores loopback-only networks, so both
would gather candidates on the machine's real interface. The tests instead move their process (its
main thread, and so every socket and child process it creates) into a fresh namespace with one
veth pair, and delete it afterwards. Needs root and `ip`; where either is missing, callers skip
with the reason from `unavailable_reason()`.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

CLONE_NEWNET = 0x40000000
ADDR_A = "10.77.0.1"
ADDR_B = "10.77.0.2"


@dataclass(frozen=True)
class Netns:
    name: str
    addresses: tuple[str, str]  # two addresses on the veth pair: relay side, client side


_current: Netns | None = None


def unavailable_reason() -> str | None:
    """Why namespaces cannot be used here, or None when they can."""
    if os.geteuid() != 0:
        return "network-namespace tests need root (run ./scripts/test as root)"
    if shutil.which("ip") is None:
        return "network-namespace tests need iproute2's `ip` (./scripts/test installs it)"
    probe = f"probe{uuid.uuid4().hex[:8]}"
    created = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if created.returncode != 0:
        return f"this machine forbids network namespaces: {created.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _setns(path: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({path}) failed: {os.strerror(err)}")
    finally:
        os.close(fd)


def quiet_ipv6(name: str) -> None:
    """No IPv6 in a test namespace: its address setup right after creation makes Chromium abort
    requests with ERR_NETWORK_CHANGED, and every test here speaks IPv4."""
    for scope in ("all", "default"):
        subprocess.run(
            ["ip", "netns", "exec", name, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1"],
            capture_output=True,
        )


def create(name: str, extra_addresses: Sequence[str] = ()) -> None:
    """A namespace with `lo` up and a veth pair v0/v1 carrying ADDR_A/ADDR_B (and extras on v0)."""
    ip("netns", "add", name)
    quiet_ipv6(name)
    ip("-n", name, "link", "set", "lo", "up")
    ip("-n", name, "link", "add", "v0", "type", "veth", "peer", "name", "v1")
    ip("-n", name, "addr", "add", f"{ADDR_A}/24", "dev", "v0")
    ip("-n", name, "addr", "add", f"{ADDR_B}/24", "dev", "v1")
    for extra in extra_addresses:
        ip("-n", name, "addr", "add", extra, "dev", "v0")
    ip("-n", name, "link", "set", "v0", "up")
    ip("-n", name, "link", "set", "v1", "up")


def enter_process_netns() -> Netns:
    """Move this process's main thread into a fresh namespace, once; deleted at interpreter exit."""
    global _current
    if _current is not None:
        return _current
    name = f"srt{uuid.uuid4().hex[:10]}"
    create(name)
    original = os.open(f"/proc/{os.getpid()}/ns/net", os.O_RDONLY)
    _setns(f"/run/netns/{name}")
    _current = Netns(name=name, addresses=(ADDR_A, ADDR_B))

    def _leave() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns(original, CLONE_NEWNET)
        os.close(original)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)

    atexit.register(_leave)
    return _current


@contextmanager
def temporary_netns(prefix: str = "srt") -> Iterator[str]:
    """A scratch namespace (same layout as `create`) for a subprocess: `ip netns exec NAME …`."""
    name = f"{prefix}{uuid.uuid4().hex[:8]}"
    create(name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
