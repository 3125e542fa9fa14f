"""How long a full capture takes to start and to finish, step by step: the part
``benchmarks/latency.py`` and its e2e test share.

A local cluster of real nodes (process kubelets, real agent processes) with kpcap installed as the
e2e tests install it (``tests.support.fanout.FanoutBench``: the operator as a process, the real
agent image, the chart's report grace). One run is one full capture on the nodes of ``colo-a``;
every time is read afterwards from timestamps others wrote, so measuring changes nothing:

- the apiserver's audit log (microseconds, when each request was received): the capture's create,
  the operator's DaemonSet create, the DaemonSet controller's pod creates, the scheduler's
  bindings, each kubelet's first pod status (its container spawned), each agent's report create
  (the node capturing), its last report write, and the operator's status write that follows it;
- each agent's log (milliseconds): ``process up`` (how long the interpreter and its imports took
  since the process began, from ``/proc/self/stat``), ``socket open``, ``capture ended``,
  ``uploaded``.

A milestone is when the last target node reached it; a step is the time between two milestones.
Apply -> capturing is the last report create; limit -> success runs from the last node's time
limit (its report create + timeLimit) to the operator's write after the last agent's final report.
"""

from __future__ import annotations

import re
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kpcap.kubeapi import GROUP, PLURAL, REPORT_PLURAL, VERSION
from kpcap.names import capture_id
from kpcap_localcluster.cluster import ZONE_LABEL, LocalCluster, default_nodes
from kpcap_operator.manifests import daemonset_name
from tests.support.audit import AuditEntry
from tests.support.captures import capture_body
from tests.support.fanout import (
    ADMIN_USER,
    AGENT_USER,
    AUDIT_SETTLE_SECONDS,
    BENCH_USER_AGENT,
    FanoutBench,
    _pods_gone,
    begin_run,
    wait_until,
)
from tests.support.kpcap_install import OPERATOR_NAMESPACE

COLO = "colo-a"
NAMESPACE = "fanout"  # FanoutBench's captures' namespace
POLL_SECONDS = 0.05
DS_CONTROLLER = "system:serviceaccount:kube-system:daemon-set-controller"
SCHEDULER = "system:kube-scheduler"

START_STEPS = (
    ("operator", "apply -> DaemonSet created (operator reaction)"),
    ("pods", "-> pods created (DaemonSet controller)"),
    ("bound", "-> pods bound (scheduler)"),
    ("started", "-> containers spawned (kubelet)"),
    ("agent_up", "-> agent running main() (interpreter, imports)"),
    ("socket", "-> socket open"),
    ("capturing", "-> first report (node capturing)"),
)
END_STEPS = (
    ("ended", "limit -> capture ended (agent)"),
    ("uploaded", "-> uploaded"),
    ("reported", "-> final report"),
    ("success", "-> status success (operator)"),
)
_LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


@dataclass(frozen=True, kw_only=True)
class LatencyRun:
    index: int
    targets: int
    result: str
    load: str
    start: dict[str, float | None]  # milestone -> seconds after the apply (last node)
    end: dict[str, float | None]  # milestone -> seconds after the last node's time limit
    error: str = ""

    @property
    def apply_to_capturing(self) -> float | None:
        return self.start.get("capturing")

    @property
    def limit_to_success(self) -> float | None:
        return self.end.get("success")


@dataclass
class ColoANodes:
    """A local cluster whose ``colo-a`` nodes (the first two) are the targets (a ``Fleet``)."""

    cluster: LocalCluster

    @classmethod
    def start(cls, *, count: int = 2) -> ColoANodes:
        return cls(LocalCluster.start(nodes=default_nodes(count)))

    def targets(self) -> list[str]:
        return [n.name for n in self.cluster.nodes if n.spec.labels.get(ZONE_LABEL) == COLO]

    def stop(self) -> None:
        self.cluster.stop()


def _log_lines(text: str) -> list[tuple[datetime, str]]:
    """(when, line) of an agent log's timestamped lines (its %(asctime)s: local time, ms)."""
    found = []
    for line in text.splitlines():
        match = _LOG_TIME.match(line)
        if match:
            local = datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
            found.append((local.astimezone(UTC), line))
    return found


def _first(lines: Sequence[tuple[datetime, str]], needle: str) -> tuple[datetime, str] | None:
    return next(((when, line) for when, line in lines if needle in line), None)


def _latest(values: Sequence[datetime | None]) -> datetime | None:
    """The last node's time; None when a node never got there."""
    if not values or any(v is None for v in values):
        return None
    return max(v for v in values if v is not None)


def agent_logs(cluster: LocalCluster, *, cid: str) -> list[str]:
    """Each capture pod's agent log (its pods are named after its DaemonSet)."""
    pattern = f"{OPERATOR_NAMESPACE}_{daemonset_name(cid)}-*/*.log"
    return [
        p.read_text(errors="replace")
        for n in cluster.nodes
        for p in sorted((n.state_dir / "pods").glob(pattern))
    ]


def milestones(
    *, entries: Sequence[AuditEntry], logs: Sequence[str], cid: str, targets: int, time_limit: int
) -> tuple[dict[str, datetime | None], dict[str, datetime | None]]:
    """(start milestones, end milestones) as absolute times; the start's ``applied`` is the create."""
    ds = daemonset_name(cid)
    ok = [e for e in entries if 200 <= e.code < 300]

    def when(pred: object) -> list[datetime]:
        return sorted(e.received for e in ok if pred(e))  # type: ignore[operator]

    applied = when(lambda e: e.user_agent == BENCH_USER_AGENT and e.verb == "create" and e.resource == PLURAL)
    ds_created = when(lambda e: e.verb == "create" and e.resource == "daemonsets" and e.user == ADMIN_USER)
    pods = when(
        lambda e: (
            e.verb == "create" and e.resource == "pods" and e.user == DS_CONTROLLER and not e.subresource
        )
    )
    bound = when(lambda e: e.resource == "pods" and e.subresource == "binding" and e.name.startswith(ds))
    first_status: dict[str, datetime] = {}
    for e in ok:
        if (
            e.resource == "pods"
            and e.subresource == "status"
            and e.name.startswith(ds)
            and e.user.startswith("system:node:")
        ):
            first_status.setdefault(e.name, e.received)
    reports = when(lambda e: e.user == AGENT_USER and e.verb == "create" and e.resource == REPORT_PLURAL)
    parsed = [_log_lines(text) for text in logs]
    up: list[datetime | None] = []
    sockets: list[datetime | None] = []
    ended: list[datetime | None] = []
    uploaded: list[datetime | None] = []
    for lines in parsed:
        up.append(x[0] if (x := _first(lines, "process up")) else None)
        sockets.append(x[0] if (x := _first(lines, "socket open")) else None)
        ended.append(x[0] if (x := _first(lines, "capture ended")) else None)
        uploaded.append(x[0] if (x := _first(lines, "uploaded ")) else None)
    complete = len(reports) >= targets
    start: dict[str, datetime | None] = {
        "applied": applied[0] if applied else None,
        "operator": ds_created[0] if ds_created else None,
        "pods": pods[-1] if len(pods) >= targets else None,
        "bound": bound[-1] if len(bound) >= targets else None,
        "started": max(first_status.values()) if len(first_status) >= targets else None,
        "agent_up": _latest(up) if len(up) >= targets else None,
        "socket": _latest(sockets) if len(sockets) >= targets else None,
        "capturing": reports[-1] if complete else None,
    }
    limit = reports[-1] + timedelta(seconds=time_limit) if complete else None
    agent_writes = when(lambda e: e.user == AGENT_USER and e.resource == REPORT_PLURAL)
    last_report = agent_writes[-1] if agent_writes else None
    after = (
        when(
            lambda e: (
                e.user == ADMIN_USER
                and e.user_agent != BENCH_USER_AGENT
                and e.resource == PLURAL
                and e.subresource == "status"
                and e.verb == "patch"
                and e.received > last_report
            )
        )
        if last_report
        else []
    )
    end: dict[str, datetime | None] = {
        "limit": limit,
        "ended": _latest(ended) if len(ended) >= targets else None,
        "uploaded": _latest(uploaded) if len(uploaded) >= targets else None,
        "reported": last_report,
        "success": after[0] if after else None,
    }
    return start, end


def _relative(points: dict[str, datetime | None], origin: str) -> dict[str, float | None]:
    zero = points.get(origin)
    return {
        key: None if zero is None or value is None else (value - zero).total_seconds()
        for key, value in points.items()
        if key != origin
    }


@dataclass
class LatencyBench:
    """kpcap on a cluster (``FanoutBench``), one full capture at a time."""

    bench: FanoutBench
    runs: list[LatencyRun] = field(default_factory=list)

    @classmethod
    def open(cls, fleet: ColoANodes, *, work: Path) -> LatencyBench:
        return cls(FanoutBench.open(fleet, work=work))

    def close(self) -> None:
        self.bench.close()

    def run(self, *, time_limit: int = 5, packets: int = 10000) -> LatencyRun:
        fleet, bucket = self.bench.fleet, self.bench.bucket
        cluster = fleet.cluster
        setup = begin_run(fleet=fleet, bucket=bucket, colo=COLO, prefix="latency", index=len(self.runs) + 1)
        load, custom, core, targets, name = setup.load, setup.custom, setup.core, setup.targets, setup.name
        spec = setup.spec(time_limit=time_limit, packets=packets)
        audit, marker = setup.audit, setup.marker
        created = custom.create_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, PLURAL, capture_body(name, **spec)
        )
        cid = capture_id(created["metadata"]["uid"])
        status: dict[str, object] = {}
        give_up = time.monotonic() + 120 + time_limit
        while time.monotonic() < give_up:
            status = (
                custom.get_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, name).get("status")
                or {}
            )
            if status.get("status") in ("success", "failed"):
                break
            time.sleep(POLL_SECONDS)
        wait_until(lambda: _pods_gone(core), timeout=180, interval=0.5)
        time.sleep(AUDIT_SETTLE_SECONDS)
        logs = agent_logs(cluster, cid=cid)
        kept = self.bench.work / name  # the agents' logs, to read a slow step after the cluster is gone
        kept.mkdir(parents=True, exist_ok=True)
        for number, text in enumerate(logs, start=1):
            (kept / f"agent-{number}.log").write_text(text)
        start, end = milestones(
            entries=audit.entries(since=marker),
            logs=logs,
            cid=cid,
            targets=len(targets),
            time_limit=time_limit,
        )
        run = LatencyRun(
            index=len(self.runs) + 1,
            targets=len(targets),
            result=str(status.get("status") or "timeout"),
            load=load,
            start=_relative(start, "applied"),
            end=_relative(end, "limit"),
            error=str(status.get("errorMessage") or ""),
        )
        self.runs.append(run)
        return run


def _percentile(values: Sequence[float], q: float) -> float:
    """The median for q 0.5 (what the target is checked on, :func:`p50`), else the nearest rank."""
    if q == 0.5:
        return statistics.median(values)
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _steps(points: dict[str, float | None], keys: Sequence[str]) -> list[float | None]:
    """Each milestone minus the one before (the first from 0)."""
    out: list[float | None] = []
    before: float | None = 0.0
    for key in keys:
        value = points.get(key)
        out.append(None if value is None or before is None else value - before)
        before = value
    return out


def table(runs: Sequence[LatencyRun]) -> str:
    """Per run: the two totals and each step; then p50/p90 of every column (Markdown)."""
    start_keys = [k for k, _ in START_STEPS]
    end_keys = [k for k, _ in END_STEPS]
    heads = [label for _, label in START_STEPS] + [label for _, label in END_STEPS]
    lines = [
        "| run | load | apply -> capturing (s) | limit -> success (s) | " + " | ".join(heads) + " | result |",
        "|--:|---|--:|--:|" + "--:|" * len(heads) + "---|",
    ]
    columns: list[list[float]] = [[] for _ in range(2 + len(heads))]
    for r in runs:
        row = [
            r.apply_to_capturing,
            r.limit_to_success,
            *_steps(r.start, start_keys),
            *_steps(r.end, end_keys),
        ]
        for column, value in zip(columns, row, strict=True):
            if value is not None:
                column.append(value)
        lines.append(f"| {r.index} | {r.load} | " + " | ".join(_cell(v) for v in row) + f" | {r.result} |")
    for label, q in (("p50", 0.5), ("p90", 0.9)):
        cells = [_cell(_percentile(c, q)) if c else "-" for c in columns]
        lines.append(f"| {label} | | " + " | ".join(cells) + " | |")
    return "\n".join(lines)


def p50(runs: Sequence[LatencyRun], what: str) -> float | None:
    values = [v for r in runs if (v := getattr(r, what)) is not None]
    return statistics.median(values) if values else None
