"""The hollow nodes' pure parts: what they register and report, which pods get a light agent, the
synthetic file it uploads, the lease pacing, and the timers everything waits on."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from kpcap_localcluster.cluster import KNOWN_IMAGES
from kpcap_localcluster.hollow import HollowConfig, HollowNodeSpec, first_unknown_image, node_body, pod_status
from kpcap_localcluster.hollow_runtime import Timers
from kpcap_localcluster.light_agent import is_capture_agent, synthetic_pcap
from kpcap_localcluster.light_nodes import (
    hollow_config,
    lease_interval,
    light_address,
    light_identities,
    light_node_names,
)
from tests.support.pcaps import udp_payloads


def _pod(image: str, args: list[str] | None = None) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "c", "image": image}
    if args is not None:
        container["args"] = args
    return {"metadata": {"name": "p", "namespace": "n", "uid": "u"}, "spec": {"containers": [container]}}


def test_the_synthetic_pcap_holds_the_udp_records_asked_for() -> None:
    assert udp_payloads(synthetic_pcap(node_address="100.64.1.1", count=3)) == [
        (7777, f"kpcap light agent {i}".encode()) for i in range(3)
    ]


def test_only_a_capture_agent_pod_gets_a_light_agent() -> None:
    assert is_capture_agent(_pod("registry.example/kpcap/kpcap-agent:test", ["capture"]))
    assert is_capture_agent(_pod("kpcap-agent"))  # the image's default mode is capture
    assert not is_capture_agent(_pod("kpcap-agent:1", ["sample"]))
    assert not is_capture_agent(_pod("kpcap-testbox:1", ["capture"]))


def test_an_unknown_image_is_named_and_known_ones_pass() -> None:
    assert first_unknown_image(_pod("kpcap-testbox:1"), KNOWN_IMAGES) is None
    message = first_unknown_image(_pod("nginx:1.25"), KNOWN_IMAGES)
    assert message is not None
    assert "nginx:1.25" in message


def test_pod_status_running_or_waiting() -> None:
    running = pod_status(pod=_pod("kpcap-testbox"), address="100.64.1.1", running=True)
    assert running["phase"] == "Running"
    assert {c["type"]: c["status"] for c in running["conditions"]}["Ready"] == "True"
    assert running["containerStatuses"][0]["ready"] is True
    waiting = pod_status(
        pod=_pod("nginx"), address="100.64.1.1", running=False, reason="ImageNotKnown", message="m"
    )
    assert waiting["phase"] == "Pending"
    assert waiting["containerStatuses"][0]["state"] == {
        "waiting": {"reason": "ImageNotKnown", "message": "m"}
    }


def test_a_light_node_registers_ready_with_a_real_nodes_labels() -> None:
    spec = HollowNodeSpec(
        name="kpcap-light-3",
        token="t",
        address="100.64.1.3",
        labels={"topology.kubernetes.io/zone": "colo-b"},
    )
    body = node_body(spec, boot_id="run")
    labels = body["metadata"]["labels"]
    assert labels["kubernetes.io/hostname"] == "kpcap-light-3"
    assert labels["topology.kubernetes.io/zone"] == "colo-b"
    assert {c["type"]: c["status"] for c in body["status"]["conditions"]}["Ready"] == "True"


def test_light_nodes_have_names_identities_and_addresses_of_their_own() -> None:
    names = light_node_names(3)
    assert names == ["kpcap-light-1", "kpcap-light-2", "kpcap-light-3"]
    identities = light_identities(names)
    assert identities["node:kpcap-light-2"].user == "system:node:kpcap-light-2"
    assert len({light_address(i) for i in range(1, 2001)}) == 2000
    raw = hollow_config(
        server="https://x",
        ca_file=Path("/ca"),
        run_id="r",
        images=KNOWN_IMAGES,
        identities=identities,
        names=names,
        labels={"topology.kubernetes.io/zone": "colo-b"},
    )
    assert [n["token"] for n in raw["nodes"]] == [identities[f"node:{n}"].token for n in names]  # type: ignore[attr-defined]
    assert HollowConfig(**{**raw, "nodes": ()}).lease_interval == 10.0  # type: ignore[arg-type]


def test_lease_renewals_stay_near_twenty_a_second() -> None:
    assert lease_interval(50) == 10.0
    assert lease_interval(1000) == 50.0
    assert lease_interval(2000) == 100.0
    assert lease_interval(100_000) == 120.0  # the node-monitor grace (400 s) still outlasts it


def test_timers_run_in_order_and_a_cancelled_one_never_runs() -> None:
    timers = Timers(workers=2)
    ran: list[str] = []
    done = threading.Event()
    try:

        def late() -> None:
            ran.append("late")
            done.set()

        timers.after(0.2, late)
        cancelled = timers.after(0.1, lambda: ran.append("cancelled"))
        timers.after(0.05, lambda: ran.append("early"))
        cancelled.cancel()
        started = time.monotonic()
        assert done.wait(5)
        assert time.monotonic() - started >= 0.15
        assert ran == ["early", "late"]
    finally:
        timers.close()
