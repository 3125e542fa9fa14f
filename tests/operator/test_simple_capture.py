"""The simple-capture reconciler through the reconcile pass: samplers answer, fail, or the store does.

Plain objects stand in for the samplers (answers carry real PCAP bytes) and for the Kubernetes API;
the store is the real directory store. The e2e suite asks real samplers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kpcap.model import CaptureSpec, capture_id
from kpcap.pcap import PcapRecords, Record, pcap_bytes
from kpcap.storage import StorageError
from kpcap.storage.directory import DirectoryStore
from kpcap_operator import simple_capture
from kpcap_operator.ledger import AdmissionLedger
from kpcap_operator.reconcile import reconcile
from kpcap_operator.result import Result
from kpcap_operator.samples import SamplerAnswer, SampleStore
from kpcap_operator.settings import OperatorSettings
from tests.support.cluster_in_memory import InMemoryCluster, capture, node

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(namespace="kpcap-system", agent_image="kpcap-agent:test")
SIMPLE: dict[str, Any] = {"type": "simple", "timeLimit": 10, "packetLimit": 100}
NODES = ("kpcap-node-1", "kpcap-node-2", "kpcap-node-3")


def answer(node_name: str, *, packets: int = 0, error: str | None = None, **kwargs: Any) -> SamplerAnswer:
    if error is not None:
        return SamplerAnswer(node_name, None, error, 0.0, **kwargs)
    base = int(T0.timestamp()) - 5
    records = [Record(base + i, NODES.index(node_name), b"\x00" * 60, 60) for i in range(packets)]
    data = pcap_bytes(records, snaplen=256)
    return SamplerAnswer(node_name, PcapRecords([data]), None, 0.01, **kwargs)


class Samplers:
    """The samplers as the reconciler sees them: what each node answers, and what was asked."""

    def __init__(self, answers: dict[str, SamplerAnswer]) -> None:
        self.answers = answers
        self.asked: list[tuple[list[str], int, int, int]] = []
        self.closed: list[str] = []

    def ask(
        self, *, targets: Sequence[str], spec: CaptureSpec, since_ns: int, until_ns: int
    ) -> list[SamplerAnswer]:
        self.asked.append((list(targets), spec.packet_limit, since_ns, until_ns))
        found = [
            self.answers.get(t) or SamplerAnswer(t, None, "no running sampler pod", 0.0) for t in targets
        ]
        for each in found:
            each.close = lambda node=each.node: self.closed.append(node)
        return found


class BrokenStore(DirectoryStore):
    def put_bytes(self, *, key: str, data: bytes, content_type: str | None = None) -> Any:  # noqa: ARG002
        raise StorageError(bucket="b", key=key, uri=f"file:///{key}", reason="Unavailable", permanent=False)


@pytest.fixture
def cluster() -> InMemoryCluster:
    return InMemoryCluster(nodes=[node(name, zone="colo-a") for name in NODES])


@pytest.fixture
def store(tmp_path: Path) -> SampleStore:
    return SampleStore(store=DirectoryStore(tmp_path), prefix="")


@pytest.fixture
def run_pass(cluster: InMemoryCluster, store: SampleStore) -> Callable[..., Result]:
    ledger = AdmissionLedger()

    def run(body: dict[str, Any], samplers: Samplers, *, sample_store: SampleStore | None = None) -> Result:
        result = reconcile(
            body=cluster.get(body),
            settings=SETTINGS,
            cluster=cluster,
            ledger=ledger,
            samplers=samplers,
            sample_store=sample_store or store,
            now_fn=lambda: T0,
        )
        if result.status:
            cluster.patch_status(body, result.status)
        return result

    return run


def test_answers_are_merged_kept_and_the_capture_succeeds_at_once(
    cluster: InMemoryCluster, store: SampleStore, run_pass: Callable[..., Result]
) -> None:
    samplers = Samplers(
        {"kpcap-node-1": answer("kpcap-node-1", packets=3), "kpcap-node-2": answer("kpcap-node-2", packets=2)}
    )
    body = cluster.add(capture("sample", SIMPLE, created=T0))
    result = run_pass(body, samplers)
    status = cluster.get(body)["status"]
    assert status["status"] == "success"
    assert status["packetsCaptured"] == 5
    assert status["bytesCaptured"] == 300
    assert status["packetsRemaining"] == 0
    assert status["targetNodes"] == list(NODES)
    assert status["nodesSummary"] == "2/3"
    assert status["nodes"]["kpcap-node-1"]["packets"] == 3
    assert status["nodes"]["kpcap-node-3"]["phase"] == "failed"
    assert status["nodes"]["kpcap-node-3"]["error"] == "no running sampler pod"
    assert {c["type"]: c["reason"] for c in status["conditions"]} == {
        "Admitted": "Admitted",
        "Complete": "Sampled",
        "Failed": "Sampled",
    }
    assert [e.reason for e in result.events] == ["Admitted", "Sampled", "SamplersSilent"]
    assert result.events[0].message == f"sampling past traffic on 3 node(s): {', '.join(NODES)}"
    [uri] = status["files"]
    key = store.key(namespace="team-a", capture_id=capture_id(body["metadata"]["uid"]))
    assert uri == store.store.uri(key)
    assert store.store.exists(key)
    [(targets, limit, since_ns, until_ns)] = samplers.asked
    assert (targets, limit) == (list(NODES), 100)
    assert until_ns - since_ns == 10 * 1_000_000_000
    assert sorted(samplers.closed) == list(NODES), "every answer's connection is released"
    assert cluster.creates == [], "a simple capture has no DaemonSet"


def test_no_answer_fails_naming_each_node(cluster: InMemoryCluster, run_pass: Callable[..., Result]) -> None:
    samplers = Samplers({"kpcap-node-2": answer("kpcap-node-2", error="sampler did not answer within 1 s")})
    body = cluster.add(capture("sample", SIMPLE, created=T0))
    result = run_pass(body, samplers)
    status = cluster.get(body)["status"]
    assert status["status"] == "failed"
    assert status["errorMessage"].startswith("no sampler answered: kpcap-node-1: no running sampler pod; ")
    assert "kpcap-node-2: sampler did not answer within 1 s" in status["errorMessage"]
    assert status["packetsCaptured"] == 0
    assert {c["type"]: c["reason"] for c in status["conditions"]} == {
        "Admitted": "Admitted",
        "Complete": "SamplersSilent",
        "Failed": "SamplersSilent",
    }
    assert [e.reason for e in result.events] == ["Admitted", "SamplersSilent"]


def test_an_answer_cut_short_keeps_its_packets_and_names_its_node(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    cut = answer("kpcap-node-1", packets=2, cut_short=["the answer ended early"])
    samplers = Samplers({"kpcap-node-1": cut, "kpcap-node-2": answer("kpcap-node-2", packets=1)})
    body = cluster.add(capture("sample", SIMPLE, created=T0))
    run_pass(body, samplers)
    status = cluster.get(body)["status"]
    assert status["status"] == "success"
    assert status["packetsCaptured"] == 3
    assert status["nodes"]["kpcap-node-1"] == {
        "phase": "failed",
        "error": "the answer ended early",
        "updated": "2025-05-01T12:00:00Z",
        "packets": 2,
    }


def test_the_store_failing_fails_the_capture(
    cluster: InMemoryCluster, run_pass: Callable[..., Result], tmp_path: Path
) -> None:
    samplers = Samplers({"kpcap-node-1": answer("kpcap-node-1", packets=1)})
    body = cluster.add(capture("sample", SIMPLE, created=T0))
    result = run_pass(body, samplers, sample_store=SampleStore(store=BrokenStore(tmp_path), prefix=""))
    status = cluster.get(body)["status"]
    assert status["status"] == "failed"
    assert status["errorMessage"].startswith("the sampled packets could not be stored: ")
    assert [e.reason for e in result.events] == ["Admitted", "StorageFailed"]


def test_a_second_simple_capture_within_the_window_is_refused_unasked(
    cluster: InMemoryCluster, run_pass: Callable[..., Result]
) -> None:
    samplers = Samplers({})
    first = cluster.add(capture("sample-1", SIMPLE, created=T0 - timedelta(seconds=30)))
    run_pass(first, samplers)
    second = cluster.add(capture("sample-2", SIMPLE, created=T0))
    run_pass(second, samplers)
    status = cluster.get(second)["status"]
    assert status["status"] == "failed"
    assert {c["type"]: c["reason"] for c in status["conditions"]}["Admitted"] == "SimpleCaptureRateLimited"
    assert "sample-1 was submitted at 2025-05-01T11:59:30Z" in status["errorMessage"]
    assert len(samplers.asked) == 1


def test_deleting_removes_the_kept_pcap(store: SampleStore) -> None:
    body = capture("sample", SIMPLE, created=T0)
    key = store.key(namespace="team-a", capture_id=capture_id(body["metadata"]["uid"]))
    store.store.put_bytes(key=key, data=b"pcap")
    simple_capture.delete_sample(store=store, body=body)
    assert not store.store.exists(key)
