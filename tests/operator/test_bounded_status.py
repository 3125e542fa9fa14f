"""The capture's status stays bounded whatever the node count (issue 17).

Up to 50 target nodes the status looks as it always did (every reported node under ``nodes``, every
file); above, ``nodes`` holds at most 50 failed and unfinished nodes (``nodesListed`` says so) and
``files`` the first 50 (``filesTotal``); ``nodeCounts`` always. Driven through the reconciler with
the in-memory cluster, so what is measured is the status as the operator writes it.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kpcap_operator import decisions
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


def _node(i: int) -> str:
    # Long-ish names, as cloud nodes have: the size measured is not flattered by short names.
    return f"ip-10-{i // 250}-{i % 250}-{i % 7}.eu-west-1.compute.internal"


class Run:
    def __init__(self, count: int) -> None:
        self.cluster = InMemoryCluster(nodes=[node(_node(i), zone="colo-a") for i in range(count)])
        self.body = self.cluster.add(capture("big", full_spec(timeLimit=60), created=T0))
        self.ledger = AdmissionLedger()
        self.now = T0
        self.patches: list[dict[str, Any]] = []

    def step(self, seconds: float = 1.0) -> dict[str, Any]:
        result = reconcile(
            body=self.cluster.get(self.body),
            settings=SETTINGS,
            cluster=self.cluster,
            ledger=self.ledger,
            samplers=NoSamplers(),
            sample_store=None,  # type: ignore[arg-type]  # full captures keep no sample
            now_fn=lambda: self.now,
        )
        self.patches.append(result.status)
        self.cluster.patch_status(self.body, result.status)
        self.now += timedelta(seconds=seconds)
        status: dict[str, Any] = self.cluster.get(self.body)["status"]
        return status

    def report(self, name: str, **entry: Any) -> None:
        entry.setdefault("updated", "2025-05-01T12:00:30Z")
        self.cluster.report(self.body, name, **entry)


def _done(i: int) -> dict[str, Any]:
    uri = f"s3://kpcap-captures/prefix/pcap_{'a' * 32}/{_node(i)}.pcap"
    return {"phase": "done", "packets": 10_000, "bytes": 15_000_000, "drops": 3, "objectUri": uri}


@pytest.mark.parametrize("count", [3, 50])
def test_up_to_50_nodes_every_entry_and_file_is_listed(count: int) -> None:
    run = Run(count)
    run.step()
    for i in range(count):
        run.report(_node(i), phase="running", packets=1)
    status = run.step()
    assert status["nodeCounts"] == {"pending": 0, "running": count, "uploading": 0, "done": 0, "failed": 0}
    assert sorted(status["nodes"]) == sorted(_node(i) for i in range(count))
    assert "nodesListed" not in status
    for i in range(count):
        run.report(_node(i), **_done(i))
    status = run.step()
    assert status["status"] == "success"
    assert len(status["nodes"]) == count
    assert all(e["phase"] == "done" for e in status["nodes"].values())
    assert len(status["files"]) == count
    assert "filesTotal" not in status
    assert status["nodeCounts"]["done"] == count


def test_51_nodes_list_only_the_failed_and_unfinished() -> None:
    run = Run(51)
    run.step()
    status = run.step()
    assert status["nodeCounts"]["pending"] == 51
    assert status["nodesListed"] == "failed and unfinished, 0 of 0"
    assert not status.get("nodes")
    for i in range(51):
        run.report(_node(i), phase="running", packets=i)
    status = run.step()
    assert len(status["nodes"]) == 50, "at most 50 entries"
    assert status["nodesListed"] == "failed and unfinished, 50 of 51"
    run.report(_node(7), phase="failed", error="upload failed")
    for i in range(51):
        if i not in (7, 8):
            run.report(_node(i), **_done(i))
    status = run.step()
    assert status["nodes"] == {
        _node(7): {"phase": "failed", "error": "upload failed", "updated": "2025-05-01T12:00:30Z"},
        _node(8): {"phase": "running", "packets": 8, "updated": "2025-05-01T12:00:30Z"},
    }, "done nodes leave the list (removed by the merge patch)"
    assert status["nodesListed"] == "failed and unfinished, 2 of 2"
    assert status["nodeCounts"] == {"pending": 0, "running": 1, "uploading": 0, "done": 49, "failed": 1}
    assert len(status["files"]) == 49
    run.report(_node(8), **_done(8))
    status = run.step()
    assert status["status"] == "failed"
    assert len(status["files"]) == 50, "50 done nodes: every file, no filesTotal"
    assert "filesTotal" not in status
    assert list(status["nodes"]) == [_node(7)]


def test_2000_nodes_stay_far_below_the_object_limit_and_say_what_they_list() -> None:
    run = Run(2000)
    run.step()
    for i in range(2000):
        run.report(_node(i), phase="running", packets=i, bytes=i * 1500, drops=0)
    running = run.step()
    for i in range(2000):
        if i % 100 == 0:
            run.report(_node(i), phase="failed", packets=i, error=f"upload failed: {'x' * 200}")
        else:
            run.report(_node(i), **_done(i))
    final = run.step()
    assert final["status"] == "failed"
    assert final["nodeCounts"] == {"pending": 0, "running": 0, "uploading": 0, "done": 1980, "failed": 20}
    assert len(final["nodes"]) == 20
    assert final["nodesListed"] == "failed and unfinished, 20 of 20"
    assert len(final["files"]) == 50
    assert final["filesTotal"] == 1980
    for status in (running, final):
        size = len(json.dumps(run.cluster.get(run.body)))
        assert len(status.get("nodes") or {}) <= 50
        assert size < 256 * 1024, size
    # The condition message (at most 32 KiB in the CRD) names at most 50 nodes of each kind.
    message = next(c["message"] for c in final["conditions"] if c["type"] == "Complete")
    assert len(message) < 32768
    print(f"2,000 nodes: capture object {len(json.dumps(run.cluster.get(run.body)))} bytes when finished")


def test_a_merge_patch_of_the_entries_removes_what_is_no_longer_listed() -> None:
    current = {"a": {"phase": "running", "packets": 1}, "b": {"phase": "running"}}
    wanted = {"a": {"phase": "running", "packets": 2}, "c": {"phase": "failed"}}
    assert decisions.merge_patch_of(current, wanted) == {
        "b": None,
        "a": {"packets": 2},
        "c": {"phase": "failed"},
    }
    assert decisions.merge_patch_of(wanted, wanted) == {}
