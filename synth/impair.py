"""Client-side network impairment for `smiling-relay synth` (root only).

The synthetic participants run in a network namespace of their own (worker processes started
with ``ip netns exec``), joined to the current namespace by a veth pair (:mod:`synth.netns`):

    [current namespace]  <host veth> 10.213.N.1  ⇄  10.213.N.2 <c0>  [client namespace]

* **loss** — an nftables random drop (``numgen random mod 10000 < pct×100``) on UDP (media, ICE,
  DTLS) in both directions, in the client namespace; TCP (REST, WebSocket signaling) is not
  dropped;
* **rate** — a token bucket (``tc … tbf``) on each end of the veth pair: the limit applies to the
  namespace's link as a whole, shared by all the participants in it (run one call per namespace
  when each participant needs its own limit);
* **delay / jitter** — need the kernel's ``sch_netem``. Where it is missing (the kernel these
  tools were developed on has none) they are refused with an error: they are never faked.

A relay URL on a loopback address is rewritten to the host end of the veth pair (the relay must
then listen on all addresses, e.g. ``serve --host 0.0.0.0``); another address of the current
namespace is reached directly. Any other address is reached through the current namespace: IP
forwarding is switched on and the client subnet masqueraded for the duration of the run (both
undone afterwards).
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import socket
import subprocess
import uuid
from dataclasses import dataclass
from types import TracebackType
from urllib.parse import urlsplit, urlunsplit

from synth import netns

__all__ = ["ClientNamespace", "Impairment", "ImpairmentError", "netem_unavailable_reason"]


class ImpairmentError(RuntimeError):
    """Impairment was asked for but cannot be set up here (not root, no tc/nft, no netem)."""


@dataclass(frozen=True)
class Impairment:
    loss_pct: float = 0.0  # each direction
    rate_kbit: int | None = None  # each direction, shared by the namespace
    delay_ms: float = 0.0  # needs netem
    jitter_ms: float = 0.0  # needs netem

    @property
    def active(self) -> bool:
        return bool(self.loss_pct or self.rate_kbit or self.delay_ms or self.jitter_ms)

    @property
    def needs_netem(self) -> bool:
        return bool(self.delay_ms or self.jitter_ms)

    def validate(self) -> None:
        if not 0 <= self.loss_pct <= 100:
            raise ImpairmentError("--loss must be within 0-100 %")
        if self.rate_kbit is not None and self.rate_kbit < 8:
            raise ImpairmentError("--rate must be at least 8 kbit/s")
        if self.delay_ms < 0 or self.jitter_ms < 0:
            raise ImpairmentError("--delay and --jitter must not be negative")
        if self.jitter_ms and not self.delay_ms:
            raise ImpairmentError("--jitter needs --delay (netem varies the delay around it)")

    def describe(self) -> str:
        parts = []
        if self.loss_pct:
            parts.append(f"{self.loss_pct:g}% UDP loss each way")
        if self.rate_kbit:
            parts.append(f"{self.rate_kbit} kbit/s each way (shared)")
        if self.delay_ms:
            parts.append(f"{self.delay_ms:g}±{self.jitter_ms:g} ms delay each way")
        return ", ".join(parts) or "none"


def _run(
    *args: str, stdin: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(list(args), input=stdin, capture_output=True, text=True, timeout=20)
    if check and result.returncode != 0:
        raise ImpairmentError(f"`{' '.join(args)}` failed: {result.stderr.strip()}")
    return result


def _preconditions(impairment: Impairment) -> None:
    if os.geteuid() != 0:
        raise ImpairmentError("network impairment needs root (namespaces, tc, nftables)")
    for tool in ("ip", "tc", *(("nft",) if impairment.loss_pct else ())):
        if shutil.which(tool) is None:
            raise ImpairmentError(f"network impairment needs `{tool}` (iproute2 / nftables)")


def _is_local_address(host: str) -> bool:
    """Whether ``host`` is an address of this namespace (then no forwarding or NAT is needed)."""
    try:
        address = socket.gethostbyname(host)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind((address, 0))
    except OSError:
        return False
    return True


def netem_unavailable_reason() -> str | None:
    """Why ``tc … netem`` cannot be used here (None when it can). Needs root."""
    name = f"synnetem{uuid.uuid4().hex[:6]}"
    try:
        netns.add(name)
    except netns.NetnsError as exc:
        return f"cannot create a namespace to test netem: {exc}"
    try:
        result = _run(
            "ip", "netns", "exec", name, "tc", "qdisc", "add", "dev", "lo", "root", "netem",
            "delay", "1ms", check=False,
        )  # fmt: skip
        if result.returncode != 0:
            return (
                "this kernel has no netem (sch_netem), so delay and jitter cannot be emulated "
                f"({result.stderr.strip() or 'tc failed'}); loss and rate work without it"
            )
        return None
    finally:
        netns.delete(name)


class ClientNamespace:
    """A namespace for the synthetic clients with the requested impairment; a context manager."""

    def __init__(self, impairment: Impairment) -> None:
        impairment.validate()
        self.impairment = impairment
        tag = uuid.uuid4().hex[:8]
        self.name = f"synth{tag}"
        self.host_if = f"syh{tag}"
        self.client_if = "c0"
        self.table = f"synth_{tag}"
        subnet = random.randrange(1, 254)
        self.host_ip = f"10.213.{subnet}.1"
        self.client_ip = f"10.213.{subnet}.2"
        self.subnet = f"10.213.{subnet}.0/24"
        self._forwarding_was: str | None = None
        self._nat = False
        self._created = False

    @property
    def worker_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def url_for_clients(self, url: str) -> str:
        """``url`` as the clients in the namespace reach it (loopback → the host veth address)."""
        parts = urlsplit(url)
        host = parts.hostname or ""
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            if not _is_local_address(host):
                self._enable_nat()  # reached through this namespace's own routes
            return url
        netloc = self.host_ip + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def __enter__(self) -> ClientNamespace:
        _preconditions(self.impairment)
        if self.impairment.needs_netem:
            reason = netem_unavailable_reason()
            if reason is not None:
                raise ImpairmentError(reason)
        try:
            self._create()
            self._shape()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _create(self) -> None:
        try:
            netns.add(self.name)
            self._created = True
            netns.veth(
                self.host_if, self.client_if, peer_namespace=self.name,
                address=f"{self.host_ip}/24", peer_address=f"{self.client_ip}/24",
            )  # fmt: skip
            netns.ip("-n", self.name, "route", "add", "default", "via", self.host_ip)
        except netns.NetnsError as exc:
            raise ImpairmentError(str(exc)) from None

    def _qdisc(self, device: str, namespace: str | None) -> None:
        imp = self.impairment
        prefix = ["ip", "netns", "exec", namespace] if namespace else []
        parent = ["root"]
        if imp.needs_netem:
            delay = ["delay", f"{imp.delay_ms:g}ms"] + (
                [f"{imp.jitter_ms:g}ms"] if imp.jitter_ms else []
            )
            _run(
                *prefix,
                "tc",
                "qdisc",
                "add",
                "dev",
                device,
                "root",
                "handle",
                "1:",
                "netem",
                *delay,
            )
            parent = ["parent", "1:", "handle", "2:"]
        if imp.rate_kbit:
            burst = max(imp.rate_kbit * 1000 // 8 // 50, 1600)  # ≥ 20 ms worth, ≥ one packet
            rate = ["rate", f"{imp.rate_kbit}kbit", "burst", str(burst), "latency", "200ms"]
            _run(*prefix, "tc", "qdisc", "add", "dev", device, *parent, "tbf", *rate)

    def reshape(self, rate_kbit: int | None) -> None:
        """Change (None: lift) the rate limit of a live namespace, both ends, mid-call; loss
        and delay stay as they were."""
        imp = Impairment(self.impairment.loss_pct, rate_kbit, *self._delays())
        imp.validate()
        for device, namespace in ((self.host_if, None), (self.client_if, self.name)):
            prefix = ["ip", "netns", "exec", namespace] if namespace else []
            _run(*prefix, "tc", "qdisc", "del", "dev", device, "root", check=False)
        self.impairment = imp
        self._qdisc(self.host_if, None)
        self._qdisc(self.client_if, self.name)

    def _delays(self) -> tuple[float, float]:
        return self.impairment.delay_ms, self.impairment.jitter_ms

    def _shape(self) -> None:
        imp = self.impairment
        self._qdisc(self.host_if, None)  # downlink: towards the clients
        self._qdisc(self.client_if, self.name)  # uplink: from the clients
        if imp.loss_pct:
            limit = round(imp.loss_pct * 100)
            rule = f"meta l4proto udp numgen random mod 10000 < {limit} drop"
            rules = (
                f"table inet {self.table} {{\n"
                "  chain uplink { type filter hook output priority 0; policy accept;\n"
                f"    {rule}\n  }}\n"
                "  chain downlink { type filter hook input priority 0; policy accept;\n"
                f"    {rule}\n  }}\n"
                "}\n"
            )
            _run("ip", "netns", "exec", self.name, "nft", "-f", "-", stdin=rules)

    def _enable_nat(self) -> None:
        if self._nat:
            return
        with open("/proc/sys/net/ipv4/ip_forward") as fh:
            self._forwarding_was = fh.read().strip()
        _run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        rules = (
            f"table ip {self.table} {{\n"
            "  chain postrouting { type nat hook postrouting priority srcnat; policy accept;\n"
            f'    ip saddr {self.subnet} oifname != "{self.host_if}" masquerade\n  }}\n'
            "}\n"
        )
        _run("nft", "-f", "-", stdin=rules)
        self._nat = True

    def close(self) -> None:
        if self._nat:
            _run("nft", "delete", "table", "ip", self.table, check=False)
            if self._forwarding_was is not None:
                _run("sysctl", "-qw", f"net.ipv4.ip_forward={self._forwarding_was}", check=False)
            self._nat = False
        if self._created:
            _run("ip", "link", "del", self.host_if, check=False)
            netns.delete(self.name)
            self._created = False
