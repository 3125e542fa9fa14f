"""One full capture fanned out over many nodes: how long, how many writes, how big, what it costs.

    sudo .venv/bin/python benchmarks/fanout.py [--nodes 20] [--runs 10] [--time-limit 5] [--packets 100]

A local cluster (``kpcap_localcluster``) with ``--nodes`` simulated nodes (``kpcap-node-1..N``: 1 and
2 in ``colo-a``, the rest in ``colo-b``), kpcap installed as the e2e tests install it (the CRD, the
agent's RBAC, the storage credentials; the operator as a process with the real agent image and the
chart's report grace of 60 s). Then ``--runs`` full captures in a row, one at a time, each on the
N-2 nodes of ``colo-b`` (no filter, ``--time-limit`` s, ``--packets`` per node, to the local S3
server). Per run:

- apply -> every node capturing: from the create until every target's first ``running`` report is
  in ``status.nodes`` (the object is polled every 0.2 s);
- limit -> end: from the last node's time limit (every node capturing + timeLimit) until the
  capture is ``success`` or ``failed``; the result, and files against targets;
- apiserver writes per node: writes to the capture's object and to its nodes' PacketCaptureReports
  counted in the apiserver's audit log (``tests.support.audit``), the agents' (their
  ServiceAccount) and everyone's, over the targets; the agents' refused writes (422: a stale
  report dropped) are counted too;
- the capture object's size: its JSON from the apiserver once finished, in bytes; and the number
  and mean size of its PacketCaptureReports;
- the operator's CPU seconds during the run (utime + stime of ``/proc/PID/stat``) and its peak RSS
  so far (``VmHWM``).

Before the next run the capture's pods are waited for to be gone. Root is needed (the local cluster).
A lighter kind of node (many Nodes kept Ready by one process) is another ``NodeFleet``: this module
measures through ``Fleet`` only, so adding one means a fleet class and a ``--light`` flag choosing it.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from kubernetes import client

from kpcap.kubeapi import GROUP, LABEL_CAPTURE_ID, PLURAL, REPORT_PLURAL, VERSION
from kpcap.names import capture_id
from kpcap_localcluster.cluster import ZONE_LABEL, LocalCluster, default_nodes
from kpcap_localcluster.ports import free_port
from tests.support.audit import AuditEntry, AuditLog
from tests.support.captures import capture_body
from tests.support.kpcap_install import (
    AGENT_SA,
    CREDENTIALS_SECRET,
    OPERATOR_NAMESPACE,
    apply_storage_credentials,
    install_kpcap_objects,
)
from tests.support.operator import start_operator

AGENT_IMAGE = "registry.example/kpcap/kpcap-agent:test"
AGENT_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{AGENT_SA}"
TARGET_COLO = "colo-b"
POLL_SECONDS = 0.2
REPORT_GRACE_SECONDS = 60  # the chart's default: a failed run says so rather than timing out here
CLK_TCK = os.sysconf("SC_CLK_TCK")


class Fleet(Protocol):
    """Where the benchmark's nodes come from; all it needs of them."""

    cluster: LocalCluster

    def targets(self) -> list[str]: ...

    def stop(self) -> None: ...


@dataclass
class RealNodes:
    """Process kubelets, one per node, running real agent processes (full capture fidelity)."""

    cluster: LocalCluster

    @classmethod
    def start(cls, *, count: int) -> RealNodes:
        return cls(LocalCluster.start(nodes=default_nodes(count), timeout=max(120.0, 10.0 * count)))

    def targets(self) -> list[str]:
        return [n.name for n in self.cluster.nodes if n.spec.labels.get(ZONE_LABEL) == TARGET_COLO]

    def stop(self) -> None:
        self.cluster.stop()


@dataclass(frozen=True, kw_only=True)
class Run:
    index: int
    targets: int
    all_capturing_s: float | None
    limit_to_end_s: float | None
    apply_to_end_s: float | None
    result: str
    files: int
    agent_writes: int
    agent_refused: int
    all_writes: int
    object_bytes: int
    reports: int
    reports_bytes: int
    operator_cpu_s: float
    operator_peak_mib: float
    error: str


def _proc(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, peak RSS in MiB) of a process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cpu, peak


def _writes_to(entries: Sequence[AuditEntry], *, namespace: str, name: str, cid: str) -> list[AuditEntry]:
    """Writes to the capture object and to its nodes' PacketCaptureReports (named ``<id>.<node>``)."""
    return [
        e
        for e in entries
        if e.namespace == namespace
        and (
            (e.resource == PLURAL and (e.name == name or (e.verb == "create" and e.name == "")))
            or (e.resource == REPORT_PLURAL and e.name.startswith(f"{cid}."))
        )
    ]


def _object_bytes(custom: client.CustomObjectsApi, *, namespace: str, name: str) -> int:
    response = custom.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, _preload_content=False
    )
    return len(response.data)


def _reports_bytes(custom: client.CustomObjectsApi, *, namespace: str, cid: str) -> tuple[int, int]:
    """(count, total JSON bytes) of the capture's PacketCaptureReports."""
    listed = custom.list_namespaced_custom_object(
        GROUP, VERSION, namespace, REPORT_PLURAL, label_selector=f"{LABEL_CAPTURE_ID}={cid}"
    )
    items = listed.get("items") or []
    return len(items), sum(len(json.dumps(item, separators=(",", ":"))) for item in items)


def _pods_gone(core: client.CoreV1Api) -> bool:
    pods = core.list_namespaced_pod(OPERATOR_NAMESPACE).items
    return not [p for p in pods if p.metadata.name.startswith("kpcap-capture-")]


def _wait(check: Any, *, timeout: float, interval: float = POLL_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


def one_run(
    *,
    index: int,
    fleet: Fleet,
    namespace: str,
    bucket: str,
    operator_pid: int,
    time_limit: int,
    packets: int,
) -> Run:
    cluster = fleet.cluster
    assert cluster.s3 is not None
    api = cluster.api_client()
    custom, core = client.CustomObjectsApi(api), client.CoreV1Api(api)
    targets = fleet.targets()
    name = f"fanout-{index}-{secrets.token_hex(2)}"
    spec = {
        "type": "full",
        "timeLimit": time_limit,
        "packetLimit": packets,
        "colo": TARGET_COLO,
        "destinationConf": f"s3://{bucket}/fanout?region=us-east-1&endpoint={cluster.s3.endpoint}",
    }
    audit = AuditLog(cluster.audit_log)
    marker = audit.marker()
    cpu_before, _ = _proc(operator_pid)
    applied = time.monotonic()
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, capture_body(name, **spec)
    )
    cid = capture_id(created["metadata"]["uid"])
    first_seen: dict[str, float] = {}
    status: dict[str, Any] = {}
    ended: float | None = None
    give_up = applied + 120 + time_limit + REPORT_GRACE_SECONDS
    while time.monotonic() < give_up:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        now = time.monotonic()
        status = body.get("status") or {}
        for node in status.get("nodes") or {}:
            first_seen.setdefault(node, now)
        if status.get("status") in ("success", "failed"):
            ended = now
            break
        time.sleep(POLL_SECONDS)
    all_capturing = max(first_seen[n] for n in targets) if all(n in first_seen for n in targets) else None
    object_bytes = _object_bytes(custom, namespace=namespace, name=name)
    reports, reports_bytes = _reports_bytes(custom, namespace=namespace, cid=cid)
    cpu_after, peak = _proc(operator_pid)
    _wait(lambda: _pods_gone(core), timeout=120)
    time.sleep(1.0)  # the audit log is written asynchronously (batch backend): let the last lines land
    writes = _writes_to(audit.entries(since=marker), namespace=namespace, name=name, cid=cid)
    agents = [w for w in writes if w.user == AGENT_USER]
    limit = all_capturing + time_limit if all_capturing is not None else None
    return Run(
        index=index,
        targets=len(targets),
        all_capturing_s=None if all_capturing is None else all_capturing - applied,
        limit_to_end_s=None if limit is None or ended is None else ended - limit,
        apply_to_end_s=None if ended is None else ended - applied,
        result=str(status.get("status") or "timeout"),
        files=len(status.get("files") or []),
        agent_writes=len([w for w in agents if w.code < 300]),
        agent_refused=len([w for w in agents if w.code == 422]),
        all_writes=len([w for w in writes if w.code < 300]),
        object_bytes=object_bytes,
        reports=reports,
        reports_bytes=reports_bytes,
        operator_cpu_s=cpu_after - cpu_before,
        operator_peak_mib=peak,
        error=str(status.get("errorMessage") or ""),
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_table(runs: Sequence[Run], *, nodes: int) -> None:
    print(f"\n{nodes} nodes, {runs[0].targets if runs else 0} targets ({TARGET_COLO})\n")
    print(
        "| run | apply -> every node capturing (s) | limit -> end (s) | apply -> end (s) | result | files "
        "| agent writes/node (422) | all writes/node | capture object (bytes) | reports (n x bytes) "
        "| operator CPU (s) | operator peak RSS (MiB) |"
    )
    print("|--:|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in runs:
        per = max(r.targets, 1)
        print(
            f"| {r.index} | {_seconds(r.all_capturing_s)} | {_seconds(r.limit_to_end_s)} "
            f"| {_seconds(r.apply_to_end_s)} | {r.result} | {r.files}/{r.targets} "
            f"| {r.agent_writes / per:.1f} ({r.agent_refused}) | {r.all_writes / per:.1f} | {r.object_bytes} "
            f"| {r.reports} x {r.reports_bytes // max(r.reports, 1)} "
            f"| {r.operator_cpu_s:.2f} | {r.operator_peak_mib:.0f} |"
        )
    for r in runs:
        if r.error:
            print(f"run {r.index}: {r.error}")


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fanout.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=20, help="simulated nodes (targets: all but 2)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--time-limit", type=int, default=5)
    parser.add_argument("--packets", type=int, default=100)
    args = parser.parse_args(argv)
    if args.nodes < 3:
        parser.error("--nodes: at least 3 (nodes 1 and 2 are colo-a, the targets colo-b)")

    started = time.monotonic()
    fleet = RealNodes.start(count=args.nodes)
    print(f"cluster of {args.nodes} nodes ready in {time.monotonic() - started:.1f} s", flush=True)
    cluster = fleet.cluster
    operator = None
    runs: list[Run] = []
    try:
        install_kpcap_objects(cluster)
        apply_storage_credentials(cluster)
        assert cluster.s3 is not None
        bucket = f"kpcap-fanout-{secrets.token_hex(3)}"
        cluster.s3.s3_client().create_bucket(Bucket=bucket)
        namespace = "fanout"
        cluster.kubectl("create", "namespace", namespace)
        work = Path(tempfile.mkdtemp(prefix="kpcap-fanout-"))
        env = {
            **os.environ,
            "KUBECONFIG": str(cluster.kubeconfig),
            "KPCAP_NAMESPACE": OPERATOR_NAMESPACE,
            "KPCAP_AGENT_IMAGE": AGENT_IMAGE,
            "KPCAP_AGENT_SERVICE_ACCOUNT": AGENT_SA,
            "KPCAP_AGENT_CREDENTIALS_SECRET": CREDENTIALS_SECRET,
            "KPCAP_REPORT_GRACE_SECONDS": str(REPORT_GRACE_SECONDS),
            "KPCAP_WEBHOOK_ENABLED": "false",
            "KPCAP_METRICS_PORT": str(free_port()),
            "KPCAP_SAMPLE_STORE": str(work / "samples"),
            "KPCAP_SAMPLER_CA_FILE": str(work / "sampler-ca.crt"),
        }
        operator = start_operator(cluster, env, work / "operator.log")
        print(f"operator pid {operator.pid}, log {work / 'operator.log'}", flush=True)
        for index in range(1, args.runs + 1):
            run = one_run(
                index=index,
                fleet=fleet,
                namespace=namespace,
                bucket=bucket,
                operator_pid=operator.pid,
                time_limit=args.time_limit,
                packets=args.packets,
            )
            runs.append(run)
            print(f"{datetime.now(UTC):%H:%M:%S} run {index}: {run}", flush=True)
            if run.result != "success":
                print(cluster.pod_logs(namespace=OPERATOR_NAMESPACE, pod="kpcap-capture-*")[-20000:])
    finally:
        if operator is not None:
            operator.stop(grace=10)
        fleet.stop()
    print_table(runs, nodes=args.nodes)
    return 0 if runs and all(r.result == "success" and r.files == r.targets for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
