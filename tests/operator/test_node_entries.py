"""The nodes' entries under ``status.nodes`` are copies of the agents' PacketCaptureReports (issue 17).

A node's terminal report is final (the agents' writes ensure no late progress replaces it, see
tests/agent/test_report_order_e2e.py, and the operator's ReportIndex never replaces a terminal entry,
tests/operator/test_report_index.py); this is the operator's half: its status patches only move a
node's entry forward, never from a terminal phase back, and end equal to the reports.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kpcap_operator.ledger import AdmissionLedger
from kpcap_operator.reconcile import reconcile
from kpcap_operator.settings import OperatorSettings
from tests.support.captures import full_spec
from tests.support.cluster_in_memory import InMemoryCluster, capture, node

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(namespace="kpcap-system", agent_image="kpcap-agent:test", report_grace_seconds=5)


class NoSamplers:
    def ask(self, **_: Any) -> list[Any]:
        raise AssertionError("a full capture asks no sampler")


def test_no_pass_of_a_full_capture_writes_a_node_entry() -> None:
    cluster = InMemoryCluster(
        nodes=[node("kpcap-node-1", zone="colo-a"), node("kpcap-node-2", zone="colo-a")]
    )
    body = cluster.add(capture("c", full_spec(timeLimit=5), created=T0))
    ledger = AdmissionLedger()
    clock = [T0]
    reports: dict[int, dict[str, dict[str, Any]]] = {
        1: {"kpcap-node-1": {"phase": "running", "packets": 0}, "kpcap-node-2": {"phase": "running"}},
        3: {"kpcap-node-1": {"phase": "done", "packets": 7, "objectUri": "s3://b/kpcap-node-1.pcap"}},
        4: {"kpcap-node-2": {"phase": "failed", "error": "upload failed"}},
    }
    patches: list[dict[str, Any]] = []
    for second in range(8):
        for name, entry in reports.get(second, {}).items():
            cluster.report(body, name, **entry)
        result = reconcile(
            body=cluster.get(body),
            settings=SETTINGS,
            cluster=cluster,
            ledger=ledger,
            samplers=NoSamplers(),
            sample_store=None,  # type: ignore[arg-type]  # full captures keep no sample
            now_fn=lambda: clock[0],
        )
        patches.append(result.status)
        cluster.patch_status(body, result.status)
        clock[0] += timedelta(seconds=1)
    status = cluster.get(body)["status"]
    ended: set[str] = set()
    for patch in patches:
        for name, entry in (patch.get("nodes") or {}).items():
            assert name not in ended, f"a patch touched {name}'s entry after its terminal report: {patch}"
            if (entry or {}).get("phase") in ("done", "failed"):
                ended.add(name)
    assert ended == {"kpcap-node-1", "kpcap-node-2"}
    assert status["status"] == "failed"
    assert status["files"] == ["s3://b/kpcap-node-1.pcap"]
    assert status["nodes"]["kpcap-node-1"] == reports[3]["kpcap-node-1"]
    assert status["nodes"]["kpcap-node-2"] == {"phase": "failed", "error": "upload failed"}
