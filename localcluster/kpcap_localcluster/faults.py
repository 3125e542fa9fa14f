"""Faults a test injects into a running local cluster: the apiserver restarted, the S3 server
stopped and started again, a node lost (its kubelet and pods killed) and its kubelet brought back.

Each acts on the real processes the cluster started (by their recorded ids, never by name), so what
the clients see is what they would see in production: refused connections, broken watches, a Node
that stops renewing its status.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Sequence

from kubernetes import client

from kpcap_localcluster import network, processes
from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.storage import StorageServer, start_s3


def restart_apiserver(cluster: LocalCluster, *, down_seconds: float = 0.0) -> None:
    """kube-apiserver stopped (SIGTERM) and started again on the same etcd; returns once ready."""
    assert cluster.control_plane is not None  # noqa: S101
    cluster.control_plane.restart_apiserver(down_seconds=down_seconds)


def stop_s3(cluster: LocalCluster) -> None:
    """Stop the S3 server: its endpoint refuses connections until ``restart_s3``."""
    assert cluster.s3 is not None  # noqa: S101
    cluster.s3.stop()


def restart_s3(cluster: LocalCluster, *, buckets: Sequence[str] = ()) -> StorageServer:
    """The S3 server again on the same endpoint. moto keeps buckets in memory: it starts with
    ``buckets`` only, made before it accepts a connection."""
    assert cluster.s3 is not None  # noqa: S101
    old = cluster.s3
    old.stop()
    cluster.s3 = start_s3(
        host=old.host,
        log_dir=cluster.state_dir / "logs",
        run_id=cluster.run_id,
        port=old.port,
        buckets=buckets,
    )
    return cluster.s3


def kill_node(cluster: LocalCluster, name: str) -> None:
    """The node fails at once, as on power loss: SIGKILL to its kubelet and to every process in its
    network namespace (its pods' containers). Its Node and pods stay in the API.

    Killing the kubelet process alone would not do: its containers run in sessions of their own and,
    as on a real node, keep running without it."""
    node = cluster.node(name)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(node.kubelet.pid, signal.SIGKILL)
    for pid in network.netns_pids(node.netns):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    node.kubelet.popen.wait(timeout=10)


def restart_kubelet(cluster: LocalCluster, name: str, *, timeout: float = 60.0) -> None:
    """Start the node's kubelet again (after ``kill_node``); returns once the Node is Ready."""
    node = cluster.node(name)
    node.kubelet = processes.respawn(node.kubelet, run_id=cluster.run_id)
    core = client.CoreV1Api(cluster.api_client())

    def ready() -> bool:
        conditions = core.read_node(name).status.conditions or []
        return any(c.type == "Ready" and c.status == "True" for c in conditions)

    deadline = time.monotonic() + timeout
    while not ready():
        if not node.kubelet.alive():
            raise RuntimeError(f"the kubelet of {name} exited:\n{node.kubelet.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not Ready {timeout:.0f}s after its kubelet restarted")
        time.sleep(0.25)
