"""Network namespaces: the one helper the tests, the QA tool and the benchmarks build them with.

On the bare host aioice skips only 127.0.0.1 and Chromium ignores loopback-only networks, so both
would gather candidates on the machine's real interface. Tests and benchmarks instead move their
process (its main thread, and so every socket and child process it creates) into a fresh
namespace with one veth pair (:func:`enter_process_netns`), and delete it afterwards. The
building blocks (:func:`add`, :func:`veth`, :func:`delete`) also make the impaired client
namespace of ``smiling-relay synth`` (:mod:`synth.impair`) and the NAT topology of the tests.

Needs root and ``ip``; where either is missing, callers skip (or refuse) with the reason from
:func:`unavailable_reason`. Standard library only: importing it loads nothing of the product.
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

__all__ = [
    "ADDR_A",
    "ADDR_B",
    "CLONE_NEWNET",
    "Netns",
    "NetnsError",
    "add",
    "create",
    "delete",
    "enter_process_netns",
    "ip",
    "quiet_ipv6",
    "setns",
    "temporary_netns",
    "unavailable_reason",
    "veth",
]

CLONE_NEWNET = 0x40000000
ADDR_A = "10.77.0.1"
ADDR_B = "10.77.0.2"


class NetnsError(RuntimeError):
    """An `ip` command failed (its stderr is the message)."""


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
    """Run ``ip ARGS…``; :class:`NetnsError` with its stderr when it fails."""
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=20)
    if result.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {result.stderr.strip()}")


def nft(namespace: str, rules: str) -> None:
    """Load nftables `rules` inside `namespace`; :class:`NetnsError` when nft refuses them."""
    result = subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "-f", "-"],
        input=rules, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    if result.returncode != 0:
        raise NetnsError(f"nft in {namespace} failed: {result.stderr.strip()}")


def drop_table(namespace: str, table: str) -> None:
    """Delete the inet nftables `table` inside `namespace`, if it is there."""
    subprocess.run(
        ["ip", "netns", "exec", namespace, "nft", "delete", "table", "inet", table],
        capture_output=True, timeout=20,
    )  # fmt: skip


def setns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path`` (/run/netns/NAME)."""
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


def add(name: str, *, ipv6: bool = True) -> None:
    """A new namespace ``name`` with ``lo`` up (``ipv6=False``: IPv6 switched off in it)."""
    ip("netns", "add", name)
    if not ipv6:
        quiet_ipv6(name)
    ip("-n", name, "link", "set", "lo", "up")


def delete(name: str) -> None:
    """Delete a namespace (its veth ends go with it); no error when it is already gone."""
    subprocess.run(["ip", "netns", "del", name], capture_output=True)


def veth(
    device: str,
    peer: str,
    *,
    namespace: str | None = None,
    peer_namespace: str | None = None,
    address: str | None = None,
    peer_address: str | None = None,
) -> None:
    """A veth pair ``device`` (in ``namespace``, default the current one) ⇄ ``peer`` (in
    ``peer_namespace``, default the same as ``device``), each end given its CIDR and set up."""
    where = ["-n", namespace] if namespace else []
    into = ["netns", peer_namespace] if peer_namespace and peer_namespace != namespace else []
    ip(*where, "link", "add", device, "type", "veth", "peer", "name", peer, *into)
    peer_where = ["-n", peer_namespace] if peer_namespace else where
    for dev, cidr, scope in ((device, address, where), (peer, peer_address, peer_where)):
        if cidr:
            ip(*scope, "addr", "add", cidr, "dev", dev)
        ip(*scope, "link", "set", dev, "up")


def create(name: str, extra_addresses: Sequence[str] = ()) -> None:
    """A namespace with `lo` up and a veth pair v0/v1 carrying ADDR_A/ADDR_B (and extras on v0)."""
    add(name, ipv6=False)
    veth("v0", "v1", namespace=name, address=f"{ADDR_A}/24", peer_address=f"{ADDR_B}/24")
    for extra in extra_addresses:
        ip("-n", name, "addr", "add", extra, "dev", "v0")


def enter_process_netns() -> Netns:
    """Move this process's main thread into a fresh namespace, once; deleted at interpreter exit."""
    global _current
    if _current is not None:
        return _current
    name = f"srt{uuid.uuid4().hex[:10]}"
    create(name)
    original = os.open(f"/proc/{os.getpid()}/ns/net", os.O_RDONLY)
    setns(f"/run/netns/{name}")
    _current = Netns(name=name, addresses=(ADDR_A, ADDR_B))

    def _leave() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns(original, CLONE_NEWNET)
        os.close(original)
        delete(name)

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
        delete(name)
