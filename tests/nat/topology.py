"""A small internet in namespaces: a public side and two clients behind symmetric NATs.

The test process itself (moved into a namespace of its own by synth/netns.py) is the public side:
the relay, its HTTP server and coturn listen there. Each client site is two namespaces, a client
and its NAT router, the router joined to the public side by a veth pair (recipe:
../shared/notes/test-infrastructure.md):

    client A 10.0.1.2 ─ 10.0.1.1 [router A: masquerade random,fully-random] 198.51.100.2 ─┐
                                                                    public side 198.51.100.1
    client B 10.0.2.2 ─ 10.0.2.1 [router B: masquerade random,fully-random] 198.51.100.6 ─┤
                                                                    public side 198.51.100.5
                                               relay 203.0.113.10, TURN 203.0.113.20 (on lo)

The routers map every new destination to a fresh random port and drop unsolicited inbound
traffic (a symmetric NAT), so two clients cannot reach each other even with STUN candidates, but
both reach a public server. `announce()` adds a 1:1 NAT on the public side: packets to the
announced address are DNAT-ed to the relay's bound address (a cloud VM's public IP).
Everything is removed by `teardown()`, also after a failed setup.
"""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass, field

from synth import netns

RELAY_IP = "203.0.113.10"
TURN_IP = "203.0.113.20"
ANNOUNCED_IP = "203.0.113.99"  # the "public" address of the 1:1 NAT in front of the relay
# Every address above and below, for RELAY_ALLOWED_PEER_RANGES (all non-global ranges).
PEER_RANGES = ("203.0.113.0/24", "198.51.100.0/24", "10.0.0.0/16")


@dataclass(frozen=True)
class Site:
    """A client namespace behind its own symmetric-NAT router."""

    client_ns: str
    router_ns: str
    client_ip: str
    router_wan_ip: str  # the NAT's public address: what servers see as the client's address


@dataclass
class Topology:
    tag: str
    sites: dict[str, Site] = field(default_factory=dict)
    _links: list[str] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _addresses: list[tuple[str, str]] = field(default_factory=list)  # (cidr, dev) on public side
    _nft_tables: list[str] = field(default_factory=list)
    _forwarding_before: str | None = None

    @property
    def nft_table(self) -> str:
        return f"natpub{self.tag}"

    def build(self) -> None:
        self._forwarding_before = _sysctl_get("net.ipv4.ip_forward")
        _sysctl_set("net.ipv4.ip_forward", "1")  # clients reach each other across the public side
        for cidr in (f"{RELAY_IP}/32", f"{TURN_IP}/32"):
            netns.ip("addr", "add", cidr, "dev", "lo")
            self._addresses.append((cidr, "lo"))
        for index, name in enumerate(("a", "b")):
            self.sites[name] = self._site(name, index)

    def _site(self, name: str, index: int) -> Site:
        client_ns, router_ns = f"nc{name}{self.tag}", f"nr{name}{self.tag}"
        public_dev = f"w{name}{self.tag}"[:15]
        public_ip, wan_ip = f"198.51.100.{4 * index + 1}", f"198.51.100.{4 * index + 2}"
        lan = f"10.0.{index + 1}"
        for ns in (client_ns, router_ns):
            netns.add(ns)
            self._namespaces.append(ns)
        self._links.append(public_dev)
        netns.veth(
            public_dev, "wan", peer_namespace=router_ns,
            address=f"{public_ip}/30", peer_address=f"{wan_ip}/30",
        )  # fmt: skip
        netns.ip("-n", router_ns, "route", "add", "default", "via", public_ip)
        netns.veth(
            "c0", "lan", namespace=client_ns, peer_namespace=router_ns,
            address=f"{lan}.2/24", peer_address=f"{lan}.1/24",
        )  # fmt: skip
        netns.ip("-n", client_ns, "route", "add", "default", "via", f"{lan}.1")
        _run(["ip", "netns", "exec", router_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
        _nft(router_ns, SYMMETRIC_NAT)
        return Site(client_ns, router_ns, f"{lan}.2", wan_ip)

    def announce(self, announced_ip: str, bound_ip: str) -> None:
        """A 1:1 NAT on the public side: `announced_ip` is forwarded to `bound_ip`."""
        rules = (
            f"table ip {self.nft_table} {{\n"
            " chain prerouting {\n  type nat hook prerouting priority dstnat; policy accept;\n"
            f"  ip daddr {announced_ip} dnat to {bound_ip}\n }}\n"
            "}\n"
        )
        _nft(None, rules)
        self._nft_tables.append(self.nft_table)

    def withdraw(self) -> None:
        """Remove the 1:1 NAT of `announce()`."""
        if self.nft_table in self._nft_tables:
            subprocess.run(["nft", "delete", "table", "ip", self.nft_table], capture_output=True)
            self._nft_tables.remove(self.nft_table)

    def teardown(self) -> None:
        for table in self._nft_tables:
            subprocess.run(["nft", "delete", "table", "ip", table], capture_output=True)
        for ns in reversed(self._namespaces):  # deleting a namespace removes its veth ends
            netns.delete(ns)
        for dev in self._links:
            subprocess.run(["ip", "link", "del", dev], capture_output=True)
        for cidr, dev in self._addresses:
            subprocess.run(["ip", "addr", "del", cidr, "dev", dev], capture_output=True)
        if self._forwarding_before is not None:
            _sysctl_set("net.ipv4.ip_forward", self._forwarding_before)


SYMMETRIC_NAT = """
table ip nat {
  chain postrouting {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" masquerade random,fully-random
  }
}
table ip filter {
  chain forward {
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" accept
    iifname "wan" oifname "lan" ct state established,related accept
  }
}
"""


def build() -> Topology:
    topology = Topology(tag=uuid.uuid4().hex[:6])
    try:
        topology.build()
    except BaseException:
        topology.teardown()
        raise
    return topology


def _run(command: list[str], stdin: str | None = None) -> None:
    result = subprocess.run(command, input=stdin, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed: {result.stderr.strip()}")


def _nft(namespace: str | None, rules: str) -> None:
    prefix = ["ip", "netns", "exec", namespace] if namespace else []
    _run([*prefix, "nft", "-f", "-"], stdin=rules)


def _sysctl_get(name: str) -> str:
    with open(f"/proc/sys/{name.replace('.', '/')}") as f:
        return f.read().strip()


def _sysctl_set(name: str, value: str) -> None:
    with open(f"/proc/sys/{name.replace('.', '/')}", "w") as f:
        f.write(value)
