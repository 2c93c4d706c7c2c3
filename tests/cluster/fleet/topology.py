"""Two relay nodes in two network namespaces, each with its own address, joined to the test's
namespace (where Redis and the participants run) by a veth pair each:

    node-a 10.78.1.2 ─ 10.78.1.1 ┐ the test's namespace: Redis, the aiortc participants,
    node-b 10.78.2.2 ─ 10.78.2.1 ┘ IP forwarding on (node-a reaches node-b for bridges)
"""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from synth import netns

PEER_RANGES = "10.78.0.0/16,10.77.0.0/24"


@dataclass(frozen=True)
class NodeSite:
    name: str  # node id
    namespace: str
    address: str  # the node's own address (HTTP, internal listener, media)
    gateway: str  # the test's side of the link (where the node reaches Redis)


@contextmanager
def two_node_sites() -> Iterator[list[NodeSite]]:
    tag = uuid.uuid4().hex[:6]
    sites = [
        NodeSite("node-a", f"na{tag}", "10.78.1.2", "10.78.1.1"),
        NodeSite("node-b", f"nb{tag}", "10.78.2.2", "10.78.2.1"),
    ]
    try:
        for i, site in enumerate(sites):
            netns.add(site.namespace, ipv6=False)
            netns.veth(
                f"fl{tag}{i}",
                "v0",
                peer_namespace=site.namespace,
                address=f"{site.gateway}/24",
                peer_address=f"{site.address}/24",
            )
            netns.ip("-n", site.namespace, "route", "add", "default", "via", site.gateway)
        subprocess.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"], check=True, timeout=10)
        yield sites
    finally:
        for site in sites:
            netns.delete(site.namespace)
