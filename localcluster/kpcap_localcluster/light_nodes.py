"""The light nodes of a local cluster: their names, identities and the one hollow process for all.

Light nodes are ``kpcap-light-<i>`` (never a real node's ``kpcap-node-<i>``), in one zone
(``colo-b`` unless told), each with an address from 100.64.0.0/10 that nothing routes (a light node
has no network: its pods run nothing but a light agent, see ``hollow``).
"""

from __future__ import annotations

import ipaddress
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from kpcap_localcluster.pki import Identity, new_identity
from kpcap_localcluster.processes import ManagedProcess, spawn

PREFIX = "kpcap-light-"
DEFAULT_ZONE = "colo-b"
_ADDRESSES = ipaddress.IPv4Network("100.64.0.0/10")
# The node controller's grace (controlplane.LIGHT_NODE_MONITOR_GRACE_SECONDS) bounds the Lease's.
LEASE_SECONDS = 400


def lease_interval(node_count: int) -> float:
    """Seconds between one node's Lease renewals: about 20 renewals a second in all, 10-120 s."""
    return min(120.0, max(10.0, node_count / 20))


def light_node_names(count: int) -> list[str]:
    return [f"{PREFIX}{i}" for i in range(1, count + 1)]


def light_identities(names: Sequence[str]) -> dict[str, Identity]:
    """One ``system:node:<name>`` identity per light node (keys as ``LocalCluster`` keys nodes')."""
    return {f"node:{n}": new_identity(user=f"system:node:{n}", groups=["system:nodes"]) for n in names}


def light_address(index: int) -> str:
    return str(_ADDRESSES.network_address + 256 + index)


def hollow_config(
    *,
    server: str,
    ca_file: Path,
    run_id: str,
    images: Mapping[str, Sequence[str]],
    identities: Mapping[str, Identity],
    names: Sequence[str],
    labels: Mapping[str, str],
) -> dict[str, object]:
    """The hollow process's configuration (``hollow.HollowConfig``), as JSON."""
    return {
        "server": server,
        "ca_file": str(ca_file),
        "run_id": run_id,
        "images": {k: list(v) for k, v in images.items()},
        "lease_interval": lease_interval(len(names)),
        "lease_seconds": LEASE_SECONDS,
        "nodes": [
            {
                "name": name,
                "token": identities[f"node:{name}"].token,
                "address": light_address(index),
                "labels": dict(labels),
            }
            for index, name in enumerate(names, start=1)
        ],
    }


def start_hollow(*, config: Mapping[str, object], state_dir: Path, run_id: str) -> ManagedProcess:
    directory = state_dir / "hollow"
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "hollow.json"
    path.write_text(json.dumps(config))
    path.chmod(0o600)  # node tokens
    return spawn(
        name="hollow-nodes",
        argv=[sys.executable, "-m", "kpcap_localcluster.hollow", str(path)],
        log_path=directory / "hollow.log",
        run_id=run_id,
    )
