"""A node's final report survives progress writes that land after it (the real apiserver decides).

The reordering is forced, not waited for: the agent's own ``CaptureApi`` builds a progress write
while the node is running (``write_for``, what the periodic reporter computes), the test holds it,
lets the uploading and final reports land, and only then sends the held write, as a write delayed
past its client-side timeout would arrive. The writes go with the agent ServiceAccount's token,
so they are also what its RBAC allows.
"""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kpcap.kubeapi import ClientTransport
from kpcap.model import CaptureStatus, NodePhase, parse_spec
from kpcap_agent.report import CaptureApi, NodeReport
from kpcap_localcluster.cluster import LocalCluster
from kpcap_operator.decisions import Outcome, aggregate
from tests.support.captures import Captures, capture_body, full_spec

pytestmark = pytest.mark.e2e

NODE = "kpcap-node-1"
URI = f"s3://kpcap-test/captures/{NODE}.pcap"


@pytest.fixture
def captures(kpcap_installed: LocalCluster, namespace: str) -> Captures:
    return Captures(kpcap_installed, namespace)


def _created(captures: Captures) -> str:
    name = f"order-{secrets.token_hex(3)}"
    captures.create(capture_body(name, **full_spec()))
    return name


def _agent(captures: Captures, name: str, node: str = NODE) -> CaptureApi:
    return CaptureApi(
        ClientTransport(captures.agent_api.api_client), namespace=captures.namespace, name=name, node=node
    )


def _entry(captures: Captures, name: str, node: str = NODE) -> dict[str, Any]:
    """The node's report as stored (its PacketCaptureReport's status)."""
    return captures.node_report(name, node)


def _operator_view(captures: Captures, name: str) -> Outcome:
    """What the operator's reconciler concludes from the object as it is now (grace not yet over)."""
    body = captures.get(name)
    now = datetime.now(UTC)
    return aggregate(
        spec=parse_spec(body["spec"], now=None),
        targets=[NODE],
        reports={NODE: _entry(captures, name)},
        started=now,
        now=now,
        grace=timedelta(seconds=60),
    )


def _progress(packets: int) -> NodeReport:
    return NodeReport(phase=NodePhase.RUNNING, packets=packets, bytes=packets * 100)


@pytest.mark.parametrize(
    "final",
    [
        NodeReport(phase=NodePhase.DONE, packets=80, bytes=8000, object_uri=URI),
        NodeReport(phase=NodePhase.FAILED, packets=80, bytes=8000, error="upload failed: bucket gone"),
    ],
    ids=["done", "failed"],
)
def test_a_progress_write_landing_after_the_final_report_is_discarded(
    captures: Captures, final: NodeReport
) -> None:
    name = _created(captures)
    agent = _agent(captures, name)
    assert agent.report(NodeReport(phase=NodePhase.RUNNING))
    late = agent.write_for(_progress(57), moving_from=NodePhase.RUNNING)  # computed while running
    late_uploading = agent.write_for(
        NodeReport(phase=NodePhase.UPLOADING, packets=80), moving_from=NodePhase.RUNNING
    )
    assert agent.report(NodeReport(phase=NodePhase.UPLOADING, packets=80), moving_from=NodePhase.RUNNING)
    assert agent.report(final)
    final_entry = _entry(captures, name)

    assert agent.send(late) is False
    assert agent.send(late_uploading) is False

    entry = _entry(captures, name)
    assert entry == final_entry
    assert entry["phase"] == final.phase.value
    assert entry["packets"] == 80
    outcome = _operator_view(captures, name)
    if final.phase == NodePhase.DONE:
        assert entry["objectUri"] == URI
        assert outcome.status == CaptureStatus.SUCCESS, outcome
        assert outcome.files == (URI,)
    else:
        assert entry["error"] == "upload failed: bucket gone"
        assert outcome.status == CaptureStatus.FAILED, outcome
        assert outcome.failed_nodes == {NODE: "upload failed: bucket gone"}
        assert not outcome.silent_nodes


def test_a_progress_write_landing_after_uploading_is_discarded(captures: Captures) -> None:
    name = _created(captures)
    agent = _agent(captures, name)
    agent.report(NodeReport(phase=NodePhase.RUNNING))
    late = agent.write_for(_progress(12), moving_from=NodePhase.RUNNING)
    assert agent.report(NodeReport(phase=NodePhase.UPLOADING, packets=40), moving_from=NodePhase.RUNNING)
    assert agent.send(late) is False
    assert _entry(captures, name)["phase"] == NodePhase.UPLOADING


def test_progress_in_order_replaces_the_entry_and_a_restart_may_resume_uploading(captures: Captures) -> None:
    name = _created(captures)
    agent = _agent(captures, name)
    agent.report(NodeReport(phase=NodePhase.RUNNING))
    assert agent.report(_progress(5), moving_from=NodePhase.RUNNING)
    assert agent.report(_progress(9), moving_from=NodePhase.RUNNING)
    assert _entry(captures, name)["packets"] == 9
    assert agent.report(NodeReport(phase=NodePhase.UPLOADING, packets=9), moving_from=NodePhase.RUNNING)
    # A restarted agent (same emptyDir) read "uploading" and moves on from there.
    assert agent.report(NodeReport(phase=NodePhase.UPLOADING, packets=9), moving_from=NodePhase.UPLOADING)
    assert agent.report(NodeReport(phase=NodePhase.DONE, packets=9, object_uri=URI))
    assert _entry(captures, name)["objectUri"] == URI


def test_each_node_writes_its_own_report(captures: Captures) -> None:
    """Node names that are prefixes of each other reach their own report objects, none other."""
    name = _created(captures)
    odd, plain = "node-1.a", "node-1"
    for node in (odd, plain):
        _agent(captures, name, node).report(NodeReport(phase=NodePhase.RUNNING))
    assert _agent(captures, name, odd).report(_progress(3), moving_from=NodePhase.RUNNING)
    assert _entry(captures, name, odd)["packets"] == 3
    assert _entry(captures, name, plain)["packets"] == 0
