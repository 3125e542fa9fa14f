"""One node's part of a full capture: capture, upload, report; then idle until the DaemonSet goes.

Restart-safe: the node's entry under ``status.nodes`` says how far an earlier run of this pod got.
``done``/``failed``: nothing to do. ``running``/``uploading`` with the PCAP still on the pod's
emptyDir: upload that file (the capture is not repeated). Nothing on disk: the node fails with a
message saying so. A file that could not be uploaded is kept until the node has reported.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from kpcap.destinations import object_key
from kpcap.filters import bpf_expression, compile_matcher
from kpcap.model import CaptureSpec, CaptureStatus, NodePhase, parse_spec
from kpcap.pcap import PcapWriter, iter_pcap_records
from kpcap.storage import StorageError, open_store
from kpcap_agent.afpacket import open_live_source
from kpcap_agent.capture import CaptureLimits, CaptureResult, run_capture
from kpcap_agent.report import CaptureApi, CaptureNotFoundError, NodeReport

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 2.0
STOP_POLL_INTERVAL = 1.0
# A replaced pod's predecessor has its termination grace period (60 s) to upload and report.
HANDOVER_SECONDS = 75.0
_FINISHED = {CaptureStatus.SUCCESS.value, CaptureStatus.COMPLETE.value, CaptureStatus.FAILED.value}


class AgentConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class AgentConfig:
    namespace: str
    name: str
    capture_id: str
    node: str
    work_dir: Path
    spec: CaptureSpec
    interfaces: tuple[str, ...] | None

    @property
    def pcap_path(self) -> Path:
        return self.work_dir / f"pcap_{self.capture_id}" / f"{self.node}.pcap"

    @staticmethod
    def from_env(env: dict[str, str] | None = None) -> AgentConfig:
        source = dict(os.environ) if env is None else env
        missing = [
            name
            for name in (
                "KPCAP_CAPTURE_NAMESPACE",
                "KPCAP_CAPTURE_NAME",
                "KPCAP_CAPTURE_ID",
                "KPCAP_CAPTURE_SPEC",
                "KPCAP_NODE_NAME",
            )
            if not source.get(name)
        ]
        if missing:
            raise AgentConfigError(
                f"missing environment: {', '.join(missing)} (set by the operator's DaemonSet)"
            )
        # Re-validated here: the agent trusts nothing it did not check itself.
        spec = parse_spec(json.loads(source["KPCAP_CAPTURE_SPEC"]), now=None)
        if spec.destination is None:
            raise AgentConfigError("KPCAP_CAPTURE_SPEC: a full capture needs destinationConf")
        interfaces = tuple(i for i in source.get("KPCAP_INTERFACES", "").split(",") if i) or None
        return AgentConfig(
            namespace=source["KPCAP_CAPTURE_NAMESPACE"],
            name=source["KPCAP_CAPTURE_NAME"],
            capture_id=source["KPCAP_CAPTURE_ID"],
            node=source["KPCAP_NODE_NAME"],
            work_dir=Path(source.get("KPCAP_WORK_DIR", "/var/lib/kpcap")),
            spec=spec,
            interfaces=interfaces,
        )


def _every(interval: float, stop: threading.Event, action: Callable[[], None]) -> threading.Thread:
    def loop() -> None:
        while not stop.wait(interval):
            try:
                action()
            except Exception:
                log.warning("periodic %s failed", getattr(action, "__name__", "action"), exc_info=True)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def capture(*, cfg: AgentConfig, api: CaptureApi, stop: threading.Event) -> CaptureResult:
    """Capture into the pod's work directory, reporting progress; ends at a limit or on ``stop``."""
    spec = cfg.spec
    cfg.pcap_path.parent.mkdir(parents=True, exist_ok=True)
    expression = bpf_expression(spec.filter)
    log.info(
        "capturing on %s: filter %r, limits packets=%d bytes=%s time=%ds -> %s",
        ",".join(cfg.interfaces) if cfg.interfaces else "all interfaces but lo",
        expression,
        spec.packet_limit,
        spec.byte_limit,
        spec.time_limit,
        cfg.pcap_path,
    )
    done = threading.Event()
    with (
        open_live_source(filter_expression=expression, interfaces=cfg.interfaces) as source,
        PcapWriter(path=cfg.pcap_path) as writer,
    ):
        api.report(NodeReport(phase=NodePhase.RUNNING))

        def progress() -> None:
            api.report(
                NodeReport(
                    phase=NodePhase.RUNNING,
                    packets=writer.packets,
                    bytes=writer.packet_bytes,
                    drops=source.kernel_drops(),
                )
            )

        def watch_stop() -> None:
            try:
                body = api.read()
            except CaptureNotFoundError:
                stop.set()
                return
            if (body.get("spec") or {}).get("stop") or (body.get("status") or {}).get("status") in _FINISHED:
                log.info("capture stopped by request")
                stop.set()

        _every(PROGRESS_INTERVAL, done, progress)
        _every(STOP_POLL_INTERVAL, done, watch_stop)
        try:
            result = run_capture(
                source=source,
                writer=writer,
                limits=CaptureLimits(
                    packet_limit=spec.packet_limit,
                    time_limit=float(spec.time_limit),
                    byte_limit=spec.byte_limit,
                ),
                accept=compile_matcher(spec.filter),
                stop_event=stop,
            )
        finally:
            done.set()
    log.info(
        "capture ended (%s): %d packets, %d bytes, %d kernel drops, %d refused by the userspace check",
        result.reason,
        result.packets,
        result.bytes,
        result.kernel_drops,
        result.rejected,
    )
    return result


def upload(*, cfg: AgentConfig, api: CaptureApi, packets: int, size: int, drops: int) -> NodeReport:
    destination = cfg.spec.destination
    assert destination is not None  # noqa: S101 - checked in AgentConfig.from_env
    key = object_key(destination, capture_id=cfg.capture_id, node_name=cfg.node)
    api.report(NodeReport(phase=NodePhase.UPLOADING, packets=packets, bytes=size, drops=drops))
    try:
        store = open_store(destination)
        try:
            uploaded = store.upload_file(local_path=cfg.pcap_path, key=key)
        finally:
            store.close()
    except StorageError as err:
        log.error("upload failed, keeping %s: %s", cfg.pcap_path, err)  # noqa: TRY400 - the message is the point
        return NodeReport(phase=NodePhase.FAILED, packets=packets, bytes=size, drops=drops, error=str(err))
    log.info("uploaded %s (%d bytes)", uploaded.uri, uploaded.size)
    return NodeReport(phase=NodePhase.DONE, packets=packets, bytes=size, drops=drops, object_uri=uploaded.uri)


def _count(path: Path) -> tuple[int, int]:
    packets = size = 0
    for record in iter_pcap_records(path):
        packets += 1
        size += len(record.data)
    return packets, size


def _wait_for_handover(*, cfg: AgentConfig, api: CaptureApi, stop: threading.Event) -> bool:
    """True once this node's entry shows done/failed (the previous pod finished its work)."""
    deadline = time.monotonic() + HANDOVER_SECONDS
    while time.monotonic() < deadline and not stop.wait(1.0):
        try:
            body = api.read()
        except CaptureNotFoundError:
            return True
        phase = (((body.get("status") or {}).get("nodes") or {}).get(cfg.node) or {}).get("phase")
        if phase in (NodePhase.DONE, NodePhase.FAILED):
            log.info("the previous agent of %s finished (%s): nothing left to do", cfg.node, phase)
            return True
    return False


def run(*, cfg: AgentConfig, api: CaptureApi, stop: threading.Event) -> NodeReport | None:
    """Do this node's work once; None when there was nothing (left) to do."""
    try:
        body = api.read()
    except CaptureNotFoundError:
        log.info("capture %s/%s is gone: nothing to do", cfg.namespace, cfg.name)
        return None
    status = body.get("status") or {}
    mine = (status.get("nodes") or {}).get(cfg.node) or {}
    phase = mine.get("phase")
    if phase in (NodePhase.DONE, NodePhase.FAILED) or status.get("status") in _FINISHED:
        log.info(
            "node %s already reported %s (capture %s): not capturing again",
            cfg.node,
            phase,
            status.get("status"),
        )
        return None
    if phase in (NodePhase.RUNNING, NodePhase.UPLOADING):
        if not cfg.pcap_path.exists():
            # A replacement pod (new emptyDir): the previous one may still be uploading in its grace
            # period, so give it the time to report before calling the node failed.
            if _wait_for_handover(cfg=cfg, api=api, stop=stop):
                return None
            report = NodeReport(
                phase=NodePhase.FAILED,
                error=(f"the agent restarted while {phase} and its capture file {cfg.pcap_path} is gone"),
            )
            api.report(report)
            return report
        log.info("resuming after a restart: uploading the existing %s", cfg.pcap_path)
        packets, size = _count(cfg.pcap_path)
        report = upload(cfg=cfg, api=api, packets=packets, size=size, drops=int(mine.get("drops") or 0))
    else:
        result = capture(cfg=cfg, api=api, stop=stop)
        report = upload(
            cfg=cfg, api=api, packets=result.packets, size=result.bytes, drops=result.kernel_drops
        )
    api.report(report)
    if report.phase == NodePhase.DONE:
        cfg.pcap_path.unlink()  # reported and stored: the local copy has served its purpose
    return report
