"""One full capture fanned out over many nodes, measured: the part ``benchmarks/fanout.py`` and the
e2e fan-out tests share.

A fleet (``RealNodes``: process kubelets running real agents; ``LightNodes``: 2 real nodes in
``colo-a`` plus N hollow nodes in ``colo-b`` running light agents) gives a local cluster whose
``colo-b`` nodes are the targets. ``FanoutBench`` installs kpcap on it as the e2e tests do (CRDs,
agent RBAC, storage credentials, the operator as a process with the real agent image and the
chart's report grace) and ``one_run`` runs one full capture on ``colo-b`` and measures it (``Run``).

Timings come from the apiserver's audit log where the capture object no longer says it (above 50
targets its status lists only failed and unfinished nodes): a node is capturing once its agent's
create of its PacketCaptureReport is answered 201.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from kubernetes import client

from kpcap.kubeapi import GROUP, LABEL_CAPTURE_ID, PLURAL, REPORT_PLURAL, VERSION
from kpcap.names import capture_id
from kpcap_localcluster.cluster import ZONE_LABEL, LocalCluster, default_nodes
from kpcap_localcluster.ports import free_port
from kpcap_localcluster.processes import ManagedProcess
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
ADMIN_USER = "kpcap-admin"  # the operator process runs with the admin kubeconfig
BENCH_USER_AGENT = "kpcap-fanout-benchmark"  # the benchmark's own requests (its create) as admin
TARGET_COLO = "colo-b"
NAMESPACE = "fanout"
POLL_SECONDS = 0.2
REPORT_GRACE_SECONDS = 60  # the chart's default: a failed run says so rather than timing out here
AUDIT_SETTLE_SECONDS = 1.5  # the audit log's batch backend writes a moment after the response
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


@dataclass
class LightNodes:
    """2 real nodes (``colo-a``) and ``count`` hollow nodes in ``colo-b`` running light agents."""

    cluster: LocalCluster

    @classmethod
    def start(cls, *, count: int) -> LightNodes:
        cluster = LocalCluster.start(
            nodes=default_nodes(2), light_nodes=count, light_zone=TARGET_COLO, timeout=120.0
        )
        try:
            settle(cluster, timeout=180.0)
        except BaseException:
            cluster.stop()
            raise
        return cls(cluster)

    def targets(self) -> list[str]:
        return list(self.cluster.light_nodes)

    def stop(self) -> None:
        self.cluster.stop()


# Controllers that write to every new Node once or twice (taints, the TTL annotation): thousands
# of Nodes Ready at once keep them, and the apiserver, busy for a minute after they are Ready.
NODE_CONTROLLERS = frozenset(
    {
        "system:serviceaccount:kube-system:node-controller",
        "system:serviceaccount:kube-system:ttl-controller",
    }
)
QUIET_SECONDS = 5.0


def settle(cluster: LocalCluster, *, timeout: float) -> None:
    """Wait until the node controllers have taken in every new Node (none of them wrote to a Node
    for ``QUIET_SECONDS``): a capture on a cluster whose nodes have long been there is measured, not
    the cluster's own start-up."""
    audit = AuditLog(cluster.audit_log)
    marker = 0
    last = time.monotonic()
    deadline = last + timeout
    while time.monotonic() < deadline:
        since, marker = marker, audit.marker()
        if any(e.user in NODE_CONTROLLERS for e in audit.entries(since=since)):
            last = time.monotonic()
        elif time.monotonic() - last >= QUIET_SECONDS:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the node controllers still write to Nodes after {timeout:.0f} s")


@dataclass(frozen=True, kw_only=True)
class Writes:
    """Successful writes in the audit log during one run, by whom."""

    agent: int  # the agents' ServiceAccount: their PacketCaptureReports
    agent_refused: int  # the agents' writes answered 422 (a stale progress report dropped)
    operator: int  # the admin user but for the benchmark's own create: status, finalizers, DaemonSet
    nodes: Counter[str]  # system:node:* (kubelets, hollow nodes): resource[/subresource] -> count
    control_plane: Counter[str]  # everyone else (controllers, scheduler): user -> count
    capture_create: int  # the benchmark's create of the capture


@dataclass(frozen=True, kw_only=True)
class Run:
    index: int
    targets: int
    all_capturing_s: float | None
    limit_to_end_s: float | None
    apply_to_end_s: float | None
    result: str
    files: int  # status.filesTotal, else len(status.files)
    bucket_objects: int  # objects under the capture's prefix in the bucket
    writes: Writes
    object_bytes: int
    reports: int
    reports_bytes: int
    operator_cpu_s: float
    operator_peak_mib: float
    error: str
    load: str = ""  # uptime's load averages before the run

    @property
    def kpcap_writes_per_node(self) -> float:
        return (self.writes.agent + self.writes.operator) / max(self.targets, 1)


def proc_usage(pid: int) -> tuple[float, float]:
    """(CPU seconds so far, peak RSS in MiB) of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    cpu = (int(fields[11]) + int(fields[12])) / CLK_TCK
    peak = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cpu, peak


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def classify_writes(entries: Sequence[AuditEntry]) -> Writes:
    """Who wrote during a run (one capture at a time, so every kpcap write is the run's)."""
    ok = [e for e in entries if 200 <= e.code < 300]
    nodes: Counter[str] = Counter()
    others: Counter[str] = Counter()
    for e in ok:
        if e.user.startswith("system:node:"):
            nodes[f"{e.resource}/{e.subresource}" if e.subresource else e.resource] += 1
        elif e.user not in (AGENT_USER, ADMIN_USER):
            others[e.user] += 1
    return Writes(
        agent=sum(1 for e in ok if e.user == AGENT_USER),
        agent_refused=sum(1 for e in entries if e.user == AGENT_USER and e.code == 422),
        operator=sum(1 for e in ok if e.user == ADMIN_USER and e.user_agent != BENCH_USER_AGENT),
        nodes=nodes,
        control_plane=others,
        capture_create=sum(1 for e in ok if e.user == ADMIN_USER and e.user_agent == BENCH_USER_AGENT),
    )


def report_creates(entries: Sequence[AuditEntry], *, namespace: str) -> list[datetime]:
    """When each agent's create of its PacketCaptureReport was received (201 only)."""
    return sorted(
        e.received
        for e in entries
        if e.user == AGENT_USER
        and e.verb == "create"
        and e.resource == REPORT_PLURAL
        and e.namespace == namespace
        and e.code == 201
    )


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


def _bucket_objects(s3: Any, *, bucket: str, prefix: str) -> int:
    count = 0
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        count += len(page.get("Contents") or [])
    return count


def _pods_gone(core: client.CoreV1Api) -> bool:
    pods = core.list_namespaced_pod(OPERATOR_NAMESPACE, _preload_content=False)
    items = json.loads(pods.data).get("items") or []
    return not [p for p in items if p["metadata"]["name"].startswith("kpcap-capture-")]


def wait_until(check: Callable[[], bool], *, timeout: float, interval: float = POLL_SECONDS) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval)
    return False


@dataclass
class FanoutBench:
    """kpcap installed on a fleet's cluster: the operator process, a bucket, the captures' namespace."""

    fleet: Fleet
    operator: ManagedProcess
    bucket: str
    work: Path
    runs: list[Run] = field(default_factory=list)

    @classmethod
    def open(cls, fleet: Fleet, *, work: Path) -> FanoutBench:
        cluster = fleet.cluster
        install_kpcap_objects(cluster)
        apply_storage_credentials(cluster)
        assert cluster.s3 is not None
        bucket = f"kpcap-fanout-{secrets.token_hex(3)}"
        cluster.s3.s3_client().create_bucket(Bucket=bucket)
        cluster.kubectl("create", "namespace", NAMESPACE)
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
        return cls(fleet=fleet, operator=operator, bucket=bucket, work=work)

    def close(self) -> None:
        self.operator.stop(grace=10)

    def run(self, *, time_limit: int, packets: int) -> Run:
        run = one_run(
            index=len(self.runs) + 1,
            fleet=self.fleet,
            bucket=self.bucket,
            operator_pid=self.operator.pid,
            time_limit=time_limit,
            packets=packets,
        )
        self.runs.append(run)
        return run


@dataclass(frozen=True, kw_only=True)
class RunSetup:
    """What one measured capture starts from: the load, the clients, the targets, a fresh name, the
    audit log's position."""

    load: str
    custom: client.CustomObjectsApi
    core: client.CoreV1Api
    targets: list[str]
    name: str
    colo: str
    destination: str
    audit: AuditLog
    marker: Any

    def spec(self, *, time_limit: int, packets: int) -> dict[str, Any]:
        return {
            "type": "full",
            "timeLimit": time_limit,
            "packetLimit": packets,
            "colo": self.colo,
            "destinationConf": self.destination,
        }


def begin_run(*, fleet: Fleet, bucket: str, colo: str, prefix: str, index: int) -> RunSetup:
    """Everything a benchmark's capture run needs before it applies the capture (load read first)."""
    cluster = fleet.cluster
    assert cluster.s3 is not None
    load = load_average()
    api = cluster.api_client()
    api.user_agent = BENCH_USER_AGENT
    audit = AuditLog(cluster.audit_log)
    return RunSetup(
        load=load,
        custom=client.CustomObjectsApi(api),
        core=client.CoreV1Api(api),
        targets=fleet.targets(),
        name=f"{prefix}-{index}-{secrets.token_hex(2)}",
        colo=colo,
        destination=f"s3://{bucket}/{prefix}?region=us-east-1&endpoint={cluster.s3.endpoint}",
        audit=audit,
        marker=audit.marker(),
    )


def one_run(
    *, index: int, fleet: Fleet, bucket: str, operator_pid: int, time_limit: int, packets: int
) -> Run:
    cluster = fleet.cluster
    assert cluster.s3 is not None
    setup = begin_run(fleet=fleet, bucket=bucket, colo=TARGET_COLO, prefix="fanout", index=index)
    load, custom, core, targets, name = setup.load, setup.custom, setup.core, setup.targets, setup.name
    spec = setup.spec(time_limit=time_limit, packets=packets)
    audit, marker = setup.audit, setup.marker
    cpu_before, _ = proc_usage(operator_pid)
    applied_wall = datetime.now(UTC)
    applied = time.monotonic()
    created = custom.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, PLURAL, capture_body(name, **spec)
    )
    cid = capture_id(created["metadata"]["uid"])
    status: dict[str, Any] = {}
    ended: float | None = None
    give_up = applied + 120 + time_limit + REPORT_GRACE_SECONDS
    while time.monotonic() < give_up:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name)
        status = body.get("status") or {}
        if status.get("status") in ("success", "failed"):
            ended = time.monotonic()
            break
        time.sleep(POLL_SECONDS)
    object_bytes = _object_bytes(custom, namespace=NAMESPACE, name=name)
    reports, reports_bytes = _reports_bytes(custom, namespace=NAMESPACE, cid=cid)
    cpu_after, peak = proc_usage(operator_pid)
    files = int(status.get("filesTotal") or len(status.get("files") or []))
    objects = _bucket_objects(cluster.s3.s3_client(), bucket=bucket, prefix=f"fanout/pcap_{cid}/")
    wait_until(lambda: _pods_gone(core), timeout=180, interval=1.0)
    time.sleep(AUDIT_SETTLE_SECONDS)
    entries = audit.entries(since=marker)
    creates = report_creates(entries, namespace=NAMESPACE)
    # Every node capturing: the last target's report create, on the apply's clock.
    all_capturing = (creates[-1] - applied_wall).total_seconds() if len(creates) >= len(targets) else None
    limit = None if all_capturing is None else applied + all_capturing + time_limit
    return Run(
        index=index,
        targets=len(targets),
        all_capturing_s=all_capturing,
        limit_to_end_s=None if limit is None or ended is None else ended - limit,
        apply_to_end_s=None if ended is None else ended - applied,
        result=str(status.get("status") or "timeout"),
        files=files,
        bucket_objects=objects,
        writes=classify_writes(entries),
        object_bytes=object_bytes,
        reports=reports,
        reports_bytes=reports_bytes,
        operator_cpu_s=cpu_after - cpu_before,
        operator_peak_mib=peak,
        error=str(status.get("errorMessage") or ""),
        load=load,
    )


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _counts(counter: Counter[str], *, per: int) -> str:
    def value(count: int) -> str:
        return str(count) if per == 1 else f"{count / per:.2f}"

    return ", ".join(f"{key} {value(count)}" for key, count in counter.most_common()) or "-"


def table(runs: Sequence[Run], *, title: str) -> str:
    """The runs as a Markdown table, with the writes of others (nodes, controllers) listed apart."""
    lines = [
        f"\n{title}, {runs[0].targets if runs else 0} targets ({TARGET_COLO})\n",
        "| run | load before | apply -> every node capturing (s) | limit -> end (s) | apply -> end (s) "
        "| result | files (status / bucket) | kpcap writes/node | agent writes/node (422) "
        "| operator writes | capture object (bytes) | reports (n x bytes) | operator CPU (s) "
        "| operator peak RSS (MiB) |",
        "|--:|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for r in runs:
        per = max(r.targets, 1)
        lines.append(
            f"| {r.index} | {r.load} | {_seconds(r.all_capturing_s)} | {_seconds(r.limit_to_end_s)} "
            f"| {_seconds(r.apply_to_end_s)} | {r.result} | {r.files} / {r.bucket_objects} of {r.targets} "
            f"| {r.kpcap_writes_per_node:.2f} | {r.writes.agent / per:.2f} ({r.writes.agent_refused}) "
            f"| {r.writes.operator} | {r.object_bytes} | {r.reports} x {r.reports_bytes // max(r.reports, 1)} "
            f"| {r.operator_cpu_s:.2f} | {r.operator_peak_mib:.0f} |"
        )
    lines.append("")
    for r in runs:
        per = max(r.targets, 1)
        lines.append(f"run {r.index}: nodes' own writes per node: {_counts(r.writes.nodes, per=per)}")
        lines.append(f"run {r.index}: control plane writes: {_counts(r.writes.control_plane, per=1)}")
        if r.error:
            lines.append(f"run {r.index}: {r.error}")
    return "\n".join(lines)
