"""Operator replicas on the local cluster: who holds the leader Lease, killing the leader's process
(SIGKILL, by the process id its pod's status names) and timing the Lease's change of holder.

Shared by the HA e2e tests and benchmarks/failover.py.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import threading
import time
from dataclasses import dataclass
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from kpcap_localcluster.install import Installation
from tests.support.captures import Captures, capture_body, full_spec
from tests.support.pcaps import udp_payloads
from tests.support.waiting import wait_for

NODES = ("kpcap-node-1", "kpcap-node-2")  # colo-a: the capture's targets
PORT = 7777


@dataclass(frozen=True, slots=True)
class Holder:
    identity: str
    transitions: int

    @property
    def pod(self) -> str:
        """The identity is ``<pod name>_<process suffix>`` (kpcap_operator.__main__)."""
        return self.identity.rpartition("_")[0]


def lease_name(installation: Installation) -> str:
    return f"{installation.release}-operator-leader"


def lease_holder(installation: Installation) -> Holder | None:
    leases = client.CoordinationV1Api(installation.cluster.api_client())
    try:
        lease = leases.read_namespaced_lease(lease_name(installation), installation.namespace)
    except ApiException as err:
        if err.status == 404:
            return None
        raise
    if not lease.spec.holder_identity:
        return None
    return Holder(identity=lease.spec.holder_identity, transitions=lease.spec.lease_transitions or 0)


def capture_daemonsets(installation: Installation, capture: dict[str, Any]) -> list[Any]:
    """The capture's DaemonSets, in the release namespace (where its operator creates them)."""
    apps = client.AppsV1Api(installation.cluster.api_client())
    cid = capture["metadata"]["uid"].replace("-", "")
    selector = f"kpcap.io/capture-id={cid}"
    return list(apps.list_namespaced_daemon_set(installation.namespace, label_selector=selector).items)


def container_pid(pod: dict[str, Any]) -> int:
    """The process the process kubelet runs as the pod's (only) container: ``process://<pid>``."""
    (status,) = pod["status"]["containerStatuses"]
    scheme, _, pid = str(status.get("containerID") or "").partition("://")
    if scheme != "process" or not pid.isdigit():
        raise RuntimeError(f"pod {pod['metadata']['name']} has no process container id: {status}")
    return int(pid)


def serving_replicas(installation: Installation, *, count: int) -> bool:
    """``count`` operator pods run and accept connections on their webhook port."""
    running = [p for p in installation.operator_pods() if p["status"].get("phase") == "Running"]
    return len(running) == count and installation.webhook_serving()


def kill_leader(installation: Installation) -> tuple[Holder, float]:
    """SIGKILL the leader's container process group (no handover: its Lease must expire); returns
    the holder killed and the monotonic time of the kill."""
    holder = lease_holder(installation)
    if holder is None:
        raise RuntimeError("no replica holds the leader Lease")
    (pod,) = [p for p in installation.operator_pods() if p["metadata"]["name"] == holder.pod]
    pid = container_pid(pod)
    killed_at = time.monotonic()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    return holder, killed_at


def wait_new_holder(
    installation: Installation, *, old: Holder, since: float, timeout: float = 30.0
) -> tuple[Holder, float]:
    """The next holder of the Lease after ``old``, and the seconds from ``since`` until it took over."""
    deadline = since + timeout
    while time.monotonic() < deadline:
        holder = lease_holder(installation)
        if holder is not None and holder.identity != old.identity:
            return holder, time.monotonic() - since
        time.sleep(0.1)
    raise TimeoutError(f"no replica took the leader Lease over from {old.identity} within {timeout:.0f}s")


@dataclass(frozen=True, slots=True)
class FailoverRun:
    """One capture whose leader was SIGKILLed mid-way: what the acceptance asks of it."""

    failover_seconds: float
    result: str
    packets: dict[str, int]
    """Matching packets in each node's file (an unexpected packet makes the file count -1)."""
    expected_packets: int
    most_daemonsets: int
    old: Holder
    new: Holder

    @property
    def ok(self) -> bool:
        right = all(n == self.expected_packets for n in self.packets.values()) and len(self.packets) == len(
            NODES
        )
        return self.result == "success" and right and self.most_daemonsets == 1

    def __str__(self) -> str:
        return (
            f"failover {self.failover_seconds:.1f}s ({self.old.pod} -> {self.new.pod}), {self.result},"
            f" packets {self.packets} (want {self.expected_packets} each), at most {self.most_daemonsets} DaemonSet"
        )


def run_failover(
    installation: Installation, *, namespace: str, name: str, time_limit: int = 25
) -> FailoverRun:
    """A full capture on colo-a to a fresh bucket; packets sent before, during and after the leader's
    SIGKILL (matching ones on PORT, others beside them); waits for the end and reads both files."""
    cluster = installation.cluster
    assert cluster.s3 is not None
    s3 = cluster.s3.s3_client()
    bucket = f"kpcap-ha-{secrets.token_hex(4)}"
    s3.create_bucket(Bucket=bucket)
    marker = f"ha-{secrets.token_hex(6)}"
    destination = f"s3://{bucket}/captures?region=us-east-1&endpoint={cluster.s3.endpoint}"
    captures = Captures(cluster, namespace)
    spec = full_spec(
        timeLimit=time_limit,
        packetLimit=1000,
        destinationConf=destination,
        filter={"protocol": 17, "destinationPort": PORT},
    )
    capture = captures.create(capture_body(name, **spec))
    wait_for(
        lambda: len(captures.status(name).get("nodes") or {}) == len(NODES),
        timeout=60,
        what="nodes capturing",
    )

    most = 0
    watching = threading.Event()

    def count_daemonsets() -> None:
        nonlocal most
        while not watching.is_set():
            most = max(most, len(capture_daemonsets(installation, capture)))
            watching.wait(0.2)

    watcher = threading.Thread(target=count_daemonsets, daemon=True)
    watcher.start()

    def send(count: int, *, port: int = PORT) -> None:
        for dst in NODES:
            cluster.send_udp(src="kpcap-node-3", dst=dst, port=port, count=count, payload=marker)

    try:
        send(10)
        old, killed_at = kill_leader(installation)
        send(10)  # no replica leads now: the agents capture on regardless
        send(10, port=PORT + 1111)
        new, failover = wait_new_holder(installation, old=old, since=killed_at)
        send(5)
        status = captures.wait_status(name, {"success", "failed"}, timeout=time_limit + 120)
    finally:
        watching.set()
        watcher.join(timeout=5)
    cid = capture["metadata"]["uid"].replace("-", "")
    packets: dict[str, int] = {}
    for node in NODES:
        key = f"captures/pcap_{cid}/{node}.pcap"
        if s3.list_objects_v2(Bucket=bucket, Prefix=key).get("KeyCount", 0) == 0:
            continue  # no file: the node is missing from ``packets``
        payloads = udp_payloads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
        packets[node] = len(payloads) if set(payloads) == {(PORT, marker.encode())} else -1
    wait_for(lambda: not capture_daemonsets(installation, capture), timeout=30, what="the DaemonSet to go")
    return FailoverRun(
        failover_seconds=failover,
        result=str(status["status"]),
        packets=packets,
        expected_packets=25,
        most_daemonsets=most,
        old=old,
        new=new,
    )
