"""Simulated node networks: one network namespace per node, joined to a bridge in the host namespace.

Addresses come from 198.18.0.0/15 (RFC 2544 benchmarking space) so that nothing here can collide
with or leak into a real network: each cluster takes a free /24, the bridge holds ``.1`` (where the
apiserver and the storage servers listen) and node ``i`` holds ``.(10 + i)``. No route leaves the
machine. All names carry the cluster's run id, so a leak check can find leftovers by prefix.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

NETNS_PREFIX = "kpcap-"
LINK_PREFIX = "kpc"  # bridges kpcb<rid>, veths kpcv<rid>i<n>: Linux allows 15 characters
_BASE = ipaddress.IPv4Network("198.18.0.0/16")


def ip(*args: str, netns: str | None = None, check: bool = True) -> str:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def _used_networks() -> set[ipaddress.IPv4Network]:
    used: set[ipaddress.IPv4Network] = set()
    for link in json.loads(ip("-j", "-4", "addr", "show") or "[]"):
        for addr in link.get("addr_info", []):
            used.add(ipaddress.IPv4Network(f"{addr['local']}/{addr['prefixlen']}", strict=False))
    return used


def pick_subnet() -> ipaddress.IPv4Network:
    """The first /24 of 198.18.0.0/16 (after .0) that no interface on this machine uses."""
    used = _used_networks()
    candidates: list[ipaddress.IPv4Network] = list(_BASE.subnets(new_prefix=24))[1:]
    for candidate in candidates:
        if not any(candidate.overlaps(net) for net in used):
            return candidate
    raise RuntimeError("no free /24 left in 198.18.0.0/16 for a local cluster")


@dataclass(frozen=True, slots=True)
class NodeNetwork:
    node_name: str
    netns: str
    host_veth: str
    address: str  # the node's InternalIP, on eth0 inside its namespace
    prefix_len: int


@dataclass(frozen=True, slots=True)
class ClusterNetwork:
    run_id: str
    subnet: ipaddress.IPv4Network
    bridge: str

    @property
    def gateway(self) -> str:
        """The bridge's address: where the nodes reach the apiserver and storage servers."""
        return str(self.subnet.network_address + 1)

    def node_address(self, index: int) -> str:
        return str(self.subnet.network_address + 10 + index)


def create_bridge(*, run_id: str) -> ClusterNetwork:
    subnet = pick_subnet()
    net = ClusterNetwork(run_id=run_id, subnet=subnet, bridge=f"{LINK_PREFIX}b{run_id}")
    ip("link", "add", net.bridge, "type", "bridge")
    ip("addr", "add", f"{net.gateway}/{subnet.prefixlen}", "dev", net.bridge)
    ip("link", "set", net.bridge, "up")
    log.info("bridge %s up on %s", net.bridge, subnet)
    return net


def add_node(*, net: ClusterNetwork, index: int, node_name: str) -> NodeNetwork:
    """A namespace with eth0 on the bridge, lo up and a default route via the bridge address."""
    node = NodeNetwork(
        node_name=node_name,
        netns=f"{NETNS_PREFIX}{net.run_id}-{node_name}",
        host_veth=f"{LINK_PREFIX}v{net.run_id}i{index}",
        address=net.node_address(index),
        prefix_len=net.subnet.prefixlen,
    )
    ip("netns", "add", node.netns)
    peer = f"{LINK_PREFIX}p{net.run_id}i{index}"
    ip("link", "add", node.host_veth, "type", "veth", "peer", "name", peer)
    ip("link", "set", peer, "netns", node.netns)
    ip("link", "set", peer, "name", "eth0", netns=node.netns)
    ip("addr", "add", f"{node.address}/{node.prefix_len}", "dev", "eth0", netns=node.netns)
    ip("link", "set", "eth0", "up", netns=node.netns)
    ip("link", "set", "lo", "up", netns=node.netns)
    ip("route", "add", "default", "via", net.gateway, netns=node.netns)
    ip("link", "set", node.host_veth, "master", net.bridge)
    ip("link", "set", node.host_veth, "up")
    return node


def netns_pids(netns: str) -> list[int]:
    out = ip("netns", "pids", netns, check=False)
    return [int(p) for p in out.split()]


def remove_node(node: NodeNetwork) -> None:
    with contextlib.suppress(RuntimeError):
        ip("link", "del", node.host_veth)
    with contextlib.suppress(RuntimeError):
        ip("netns", "del", node.netns)


def remove_bridge(net: ClusterNetwork) -> None:
    with contextlib.suppress(RuntimeError):
        ip("link", "del", net.bridge)


def leftovers(*, run_id: str | None = None) -> dict[str, list[str]]:
    """Namespaces and links of ``run_id`` (of any local cluster when None) that still exist."""
    netns_prefix = f"{NETNS_PREFIX}{run_id}-" if run_id else NETNS_PREFIX
    namespaces = [
        line.split()[0] for line in ip("netns", "list").splitlines() if line.startswith(netns_prefix)
    ]
    links = []
    for link in json.loads(ip("-j", "link", "show") or "[]"):
        name = link["ifname"]
        # kpc + kind (b bridge, v host veth, p peer) + run id; other kpc* names are not ours.
        if not name.startswith(LINK_PREFIX) or len(name) < 5 or name[3] not in "bvp":
            continue
        if run_id is None or name[4:].startswith(run_id):
            links.append(name)
    return {"netns": namespaces, "links": links}


def remove_leftovers(*, run_id: str | None = None) -> dict[str, list[str]]:
    found = leftovers(run_id=run_id)
    for name in found["links"]:
        with contextlib.suppress(RuntimeError):
            ip("link", "del", name)
    for ns in found["netns"]:
        with contextlib.suppress(RuntimeError):
            ip("netns", "del", ns)
    return found


def links_in(netns: str) -> Sequence[str]:
    return [link["ifname"] for link in json.loads(ip("-j", "link", "show", netns=netns) or "[]")]
