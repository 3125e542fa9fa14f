"""Reports of one agent go out in order: no progress write is in flight or starts after the capture.

The real ``capture()`` runs (live AF_PACKET source on ``lo``: root, as the live-capture tests) with
a plain object in place of ``CaptureApi`` whose progress write is slow, and the test ends the
capture while one is in flight. The apiserver side of the same guarantee (a late write cannot
replace the final report) is tests/agent/test_report_order_e2e.py.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kpcap.model import NodePhase, parse_spec
from kpcap_agent.agent import AgentConfig, Periodic, capture
from kpcap_agent.report import CREATE, JSON_PATCH, MERGE_PATCH, CaptureApi, NodeReport

SLOW_WRITE = 0.6
PROGRESS_INTERVAL = 0.05


@dataclass(frozen=True)
class Call:
    phase: NodePhase
    conditional: bool
    started: float
    ended: float


@dataclass
class SlowProgressApi:
    """Stands in for CaptureApi: records every report; a progress (conditional) write takes a while."""

    calls: list[Call] = field(default_factory=list)
    progress_in_flight: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, report: NodeReport, *, moving_from: NodePhase | None = None) -> bool:
        started = time.monotonic()
        if moving_from is not None:
            self.progress_in_flight.set()
            time.sleep(SLOW_WRITE)
        with self.lock:
            self.calls.append(Call(report.phase, moving_from is not None, started, time.monotonic()))
        return True

    def read(self, *, cached: bool = False) -> dict[str, Any]:
        del cached
        return {"spec": {}, "status": {"status": "running"}}


def _config(tmp_path: Path) -> AgentConfig:
    spec = {
        "type": "full",
        "colo": "colo-a",
        "timeLimit": 60,
        "packetLimit": 10000,
        "destinationConf": "s3://bucket/p?region=r",
    }
    return AgentConfig(
        namespace="team-a",
        name="c",
        capture_id="a" * 32,
        node="node-1",
        work_dir=tmp_path,
        spec=parse_spec(spec, now=None),
        interfaces=("lo",),
        progress_interval=PROGRESS_INTERVAL,
    )


def test_capture_returns_only_after_the_progress_write_in_flight_and_none_follows(tmp_path: Path) -> None:
    api = SlowProgressApi()
    stop = threading.Event()
    stopped_at: list[float] = []

    def stop_while_a_progress_write_is_in_flight() -> None:
        api.progress_in_flight.wait(10)
        time.sleep(SLOW_WRITE / 3)
        stopped_at.append(time.monotonic())
        stop.set()

    stopper = threading.Thread(target=stop_while_a_progress_write_is_in_flight)
    stopper.start()
    stand_in: Any = api  # duck-typed in place of CaptureApi
    capture(cfg=_config(tmp_path), api=stand_in, stop=stop)
    returned = time.monotonic()
    stopper.join()
    # The caller's uploading/final reports would go now: wait as long as several intervals.
    time.sleep(10 * PROGRESS_INTERVAL + SLOW_WRITE)

    first, *progress = api.calls
    assert first.phase == NodePhase.RUNNING, "the entry is created first"
    assert not first.conditional
    assert progress
    assert all(c.conditional and c.phase == NodePhase.RUNNING for c in progress)
    assert any(c.started < stopped_at[0] < c.ended for c in progress), "a write was in flight at stop"
    assert all(c.ended <= returned for c in progress), "capture() returned before a progress write ended"
    assert all(c.started < returned for c in progress), "a progress write started after capture() ended"


def test_periodic_stop_and_join_waits_for_the_run_in_flight() -> None:
    ran: list[tuple[float, float]] = []
    entered = threading.Event()

    def slow() -> None:
        entered.set()
        started = time.monotonic()
        time.sleep(SLOW_WRITE)
        ran.append((started, time.monotonic()))

    periodic = Periodic(interval=0.01, action=slow)
    assert entered.wait(5)
    periodic.stop_and_join()
    joined = time.monotonic()
    time.sleep(SLOW_WRITE)
    assert len(ran) == 1
    assert ran[0][1] <= joined


UID = "0123abcd-0000-4000-8000-00000000abcd"


def _write_api(node: str) -> CaptureApi:
    no_transport: Any = None  # write_for only builds; nothing is sent
    return CaptureApi(no_transport, namespace="ns", name="c", node=node, uid=UID)


def test_the_first_report_creates_the_nodes_report_owned_by_the_capture() -> None:
    write = _write_api("node-1").write_for(NodeReport(phase=NodePhase.RUNNING))
    assert write.content_type == CREATE
    body = write.body
    assert body["kind"] == "PacketCaptureReport"
    assert body["metadata"]["name"] == "0123abcd00004000800000000000abcd.node-1"
    assert body["metadata"]["namespace"] == "ns"
    assert body["metadata"]["labels"] == {"kpcap.io/capture-id": UID.replace("-", "")}
    assert body["metadata"]["ownerReferences"] == [
        {"apiVersion": "kpcap.io/v1alpha1", "kind": "PacketCapture", "name": "c", "uid": UID}
    ]
    assert body["spec"] == {"capture": "c", "node": "node-1"}
    assert body["status"]["phase"] == "running"


def test_terminal_reports_are_merge_patches_that_always_land() -> None:
    api = _write_api("node-1")
    for report, moving_from in (
        (NodeReport(phase=NodePhase.DONE, object_uri="s3://b/k"), NodePhase.UPLOADING),
        (NodeReport(phase=NodePhase.FAILED, error="x"), NodePhase.RUNNING),
        (NodeReport(phase=NodePhase.FAILED, error="x"), None),
    ):
        write = api.write_for(report, moving_from=moving_from)
        assert write.content_type == MERGE_PATCH
        assert write.body["status"]["phase"] == report.phase.value


def test_progress_and_uploading_test_the_phase_they_move_from() -> None:
    api = _write_api("node-1")
    write = api.write_for(NodeReport(phase=NodePhase.UPLOADING, packets=4), moving_from=NodePhase.RUNNING)
    assert write.content_type == JSON_PATCH
    test, replace = write.body
    assert test == {"op": "test", "path": "/status/phase", "value": "running"}
    assert replace["op"] == "replace"
    assert replace["path"] == "/status"
    assert replace["value"]["phase"] == "uploading"
    assert replace["value"]["packets"] == 4
