"""Simple captures end to end: the chart's samplers on every node, the operator asking them.

Real traffic between the nodes' network namespaces, real samplers (``python -m kpcap_agent sample``
as DaemonSet pods, TokenReview of the operator's audience-bound token), the operator as a process.
The PCAP is read back from the operator's store with scapy.
"""

from __future__ import annotations

import io
import json
import os
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.utils import PcapReader

from kpcap.model import format_rfc3339
from kpcap.tls import self_signed_certificate
from kpcap_localcluster.install import Samplers
from tests.support.captures import Captures, capture_body
from tests.support.kpcap_install import sampler_ca_file
from tests.support.operator import RunningOperator, operator_fixture
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

operator = pytest.fixture(scope="module")(operator_fixture(webhook=False))
PORT = 5353


@pytest.fixture
def captures(operator: RunningOperator, samplers: Samplers, namespace: str) -> Captures:
    del samplers
    return Captures(operator.cluster, namespace)


def simple(**overrides: Any) -> dict[str, Any]:
    return {"type": "simple", "timeLimit": 60, "packetLimit": 1000, **overrides}


def read_pcap(operator: RunningOperator, status: dict[str, Any]) -> list[Any]:
    (uri,) = status["files"]
    assert uri.startswith("file://")
    path = Path(uri.removeprefix("file://"))
    assert path.is_relative_to(operator.env["KPCAP_SAMPLE_STORE"])
    return list(PcapReader(io.BytesIO(path.read_bytes())))


def create_and_time(captures: Captures, name: str, spec: dict[str, Any]) -> tuple[dict[str, Any], float]:
    """Create the capture; the seconds until its status is final, polled every 50 ms."""
    started = time.monotonic()
    captures.create(capture_body(name, **spec))
    status = wait_for(
        lambda: (s := captures.status(name)).get("status") in {"success", "failed"} and s,
        timeout=15,
        interval=0.05,
        what=f"{name} to finish",
    )
    return status, time.monotonic() - started


def test_past_traffic_comes_back_within_2s_filtered_and_in_the_window(
    captures: Captures, operator: RunningOperator
) -> None:
    cluster = operator.cluster
    target = cluster.node("kpcap-node-2").address
    marker = f"simple-{captures.namespace}"
    cluster.send_udp(src="kpcap-node-1", dst="kpcap-node-2", port=PORT, count=20, payload=f"{marker}-match")
    cluster.send_udp(
        src="kpcap-node-1", dst="kpcap-node-2", port=PORT + 1, count=15, payload=f"{marker}-port"
    )
    cluster.send_udp(src="kpcap-node-2", dst="kpcap-node-3", port=PORT, count=10, payload=f"{marker}-dst")
    time.sleep(0.5)  # the samplers' kernel rings hand over blocks within their timeout
    spec = simple(filter={"destinationAddress": target, "protocol": 17, "destinationPort": PORT})
    status, seconds = create_and_time(captures, "recent", spec)
    print(f"simple capture: {seconds:.2f} s from create to success; nodes {status.get('nodes')}")
    assert status["status"] == "success", status
    assert seconds < 2.0, f"{seconds:.2f} s"
    # Node 1 saw the 20 datagrams leave, node 2 saw them arrive; node 3 saw none of them.
    assert status["nodesSummary"] == "3/3"
    assert {node: entry["packets"] for node, entry in status["nodes"].items()} == {
        "kpcap-node-1": 20,
        "kpcap-node-2": 20,
        "kpcap-node-3": 0,
    }
    assert status["packetsCaptured"] == 40
    packets = read_pcap(operator, status)
    assert len(packets) == 40
    assert {bytes(p[UDP].payload) for p in packets} == {f"{marker}-match".encode()}
    assert all(p[IP].dst == target and p[UDP].dport == PORT for p in packets)
    created = datetime.fromisoformat(captures.get("recent")["metadata"]["creationTimestamp"])
    stamps = [float(p.time) for p in packets]
    assert stamps == sorted(stamps)
    window_end = created + timedelta(seconds=2)  # admission follows creation within the 2 s above
    assert all(
        created - timedelta(seconds=60) <= datetime.fromtimestamp(t, UTC) <= window_end for t in stamps
    )
    sampled = {e["reason"] for e in cluster_events(captures, "recent")}
    assert {"Admitted", "Sampled"} <= sampled


def cluster_events(captures: Captures, name: str) -> list[dict[str, Any]]:
    out = captures.cluster.kubectl(
        "get",
        "events",
        "-n",
        captures.namespace,
        "--field-selector",
        f"involvedObject.name={name}",
        "-o",
        "json",
    ).stdout
    return list(json.loads(out)["items"])


def test_offset_time_selects_an_earlier_window_and_packet_limit_keeps_the_newest(
    captures: Captures, operator: RunningOperator
) -> None:
    cluster = operator.cluster
    marker = f"offset-{captures.namespace}"
    cluster.send_udp(src="kpcap-node-1", dst="kpcap-node-2", port=PORT, count=10, payload=f"{marker}-early")
    time.sleep(1.5)
    boundary = datetime.now(UTC)
    time.sleep(1.5)
    cluster.send_udp(src="kpcap-node-1", dst="kpcap-node-2", port=PORT, count=10, payload=f"{marker}-late")
    time.sleep(0.5)
    spec = simple(
        timeLimit=30,
        packetLimit=6,
        offsetTime=format_rfc3339(boundary),
        filter={"destinationPort": PORT, "protocol": 17},
        nodeSelector={"kubernetes.io/hostname": "kpcap-node-2"},
    )
    status, _ = create_and_time(captures, "earlier", spec)
    assert status["status"] == "success", status
    assert status["targetNodes"] == ["kpcap-node-2"]
    packets = read_pcap(operator, status)
    # Only the early burst lies in [boundary - 30 s, boundary]; of its 10 packets the 6 newest are kept.
    assert [bytes(p[UDP].payload) for p in packets] == [f"{marker}-early".encode()] * 6
    assert all(float(p.time) <= boundary.timestamp() for p in packets)
    assert status["packetsCaptured"] == 6


def _sampler_pids(node: str) -> list[int]:
    """The sampler process(es) of ``node``: ``python -m kpcap_agent sample`` with that node's name."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"kpcap_agent" in argv and b"sample" in argv and f"KPCAP_NODE_NAME={node}".encode() in environ:
            found.append(int(entry.name))
    return found


@pytest.fixture
def frozen_sampler() -> Iterator[str]:
    """The sampler of kpcap-node-3 stopped (SIGSTOP): its pod runs, its socket accepts, nobody answers."""
    node = "kpcap-node-3"
    pids = _sampler_pids(node)
    assert pids, f"no sampler process found for {node}"
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield node
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


def test_a_sampler_that_does_not_answer_is_named_and_the_others_count(
    captures: Captures, operator: RunningOperator, frozen_sampler: str
) -> None:
    cluster = operator.cluster
    marker = f"silent-{captures.namespace}"
    cluster.send_udp(src="kpcap-node-1", dst="kpcap-node-2", port=PORT, count=5, payload=marker)
    time.sleep(0.5)
    status, seconds = create_and_time(captures, "partial", simple(filter={"destinationPort": PORT}))
    assert status["status"] == "success", status
    assert seconds < 2.5, f"{seconds:.2f} s (the samplers' budget is 1 s)"
    assert status["nodesSummary"] == "2/3"
    assert status["nodes"][frozen_sampler]["phase"] == "failed"
    assert status["nodes"][frozen_sampler]["error"] == "sampler did not answer within 1 s"
    (complete,) = [c for c in status["conditions"] if c["type"] == "Complete"]
    assert complete["status"] == "True"
    assert f"no answer from {frozen_sampler}: sampler did not answer within 1 s" in complete["message"]
    payloads = [bytes(p[UDP].payload) for p in read_pcap(operator, status) if UDP in p]
    assert payloads.count(marker.encode()) == 10  # node 1 (out) and node 2 (in)


def test_no_answering_sampler_fails_naming_each_node(
    captures: Captures, operator: RunningOperator, frozen_sampler: str
) -> None:
    spec = simple(nodeSelector={"kubernetes.io/hostname": frozen_sampler})
    status, _ = create_and_time(captures, "none", spec)
    assert status["status"] == "failed"
    assert (
        status["errorMessage"] == f"no sampler answered: {frozen_sampler}: sampler did not answer within 1 s"
    )
    assert "files" not in status
    assert not list(Path(operator.env["KPCAP_SAMPLE_STORE"]).glob(f"{captures.namespace}/*"))


def test_deleting_a_simple_capture_deletes_its_pcap(captures: Captures, operator: RunningOperator) -> None:
    status, _ = create_and_time(captures, "short-lived", simple(packetLimit=1))
    assert status["status"] == "success", status
    (uri,) = status["files"]
    path = Path(uri.removeprefix("file://"))
    assert path.is_file()
    captures.custom.delete_namespaced_custom_object(
        "kpcap.io", "v1alpha1", captures.namespace, "packetcaptures", "short-lived"
    )
    wait_for(lambda: not path.exists(), timeout=15, what=f"{path} to be deleted with its capture")


def test_the_operator_only_trusts_samplers_its_ca_issued(
    captures: Captures, operator: RunningOperator, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """With another CA in KPCAP_SAMPLER_CA_FILE the real samplers' certificates fail verification:
    the token is never sent, and the capture names why for each node."""
    ca_file = sampler_ca_file(tmp_path_factory)
    assert operator.env["KPCAP_SAMPLER_CA_FILE"] == str(ca_file)
    genuine = ca_file.read_bytes()
    impostor, _ = self_signed_certificate(common_name="another-ca", dns_names=[], ip_addresses=[])
    ca_file.write_bytes(impostor)
    try:
        status, _ = create_and_time(
            captures, "untrusted", simple(nodeSelector={"kubernetes.io/hostname": "kpcap-node-1"})
        )
    finally:
        ca_file.write_bytes(genuine)
    assert status["status"] == "failed"
    assert "CERTIFICATE_VERIFY_FAILED" in status["nodes"]["kpcap-node-1"]["error"]
