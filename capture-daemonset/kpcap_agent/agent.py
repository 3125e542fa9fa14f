"""One node's part of a full capture: capture, upload, report; then idle until the DaemonSet goes.

Restart-safe: the node's PacketCaptureReport says how far an earlier run of this pod got.
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
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from kpcap import envconfig
from kpcap.destinations import object_key
from kpcap.filters import bpf_expression, compile_matcher
from kpcap.kubeapi import parse_time
from kpcap.model import TERMINAL, CaptureSpec, NodePhase, parse_spec
from kpcap.pcap import DEFAULT_SNAPLEN, PcapWriter, iter_pcap_records
from kpcap.storage import RetryPolicy, StorageError, open_store
from kpcap_agent.afpacket import open_live_source
from kpcap_agent.capture import CaptureLimits, CaptureResult, run_capture
from kpcap_agent.report import CaptureApi, CaptureNotFoundError, NodeReport

log = logging.getLogger(__name__)

# Defaults; the operator scales both with the capture's node count (KPCAP_PROGRESS_INTERVAL_SECONDS,
# KPCAP_STOP_POLL_SECONDS, from kpcap_operator.manifests) so the apiserver load stays flat.
PROGRESS_INTERVAL = 2.0
STOP_POLL_INTERVAL = 1.0
# How long the end of a capture waits for an in-flight progress write or stop poll: the write is
# safe to leave behind (it is conditional, see kpcap_agent.report), the wait only keeps order.
JOIN_SECONDS = 30.0
# A replaced pod's predecessor has its termination grace period (60 s) to upload and report.
HANDOVER_SECONDS = 75.0


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
    upload_deadline_seconds: float | None = None
    """Seconds after ``status.started + timeLimit`` by which upload retries stop (the operator
    derives it from its report grace); None: the storage layer's own deadline."""
    capture_uid: str | None = None
    """The capture's metadata.uid (its report's owner); None: read from the capture."""
    progress_interval: float = PROGRESS_INTERVAL
    stop_poll_interval: float = STOP_POLL_INTERVAL

    @property
    def reports_uploading(self) -> bool:
        """Whether the ``uploading`` step gets a report of its own.

        Only where progress is reported at all (a progress report falls within the time limit): on a
        capture of many nodes the operator spaces progress reports past any time limit, and each node
        then writes just its first and its terminal report (2 writes, not 3, at 2,000 nodes).
        """
        return self.progress_interval <= self.spec.time_limit

    @property
    def pcap_path(self) -> Path:
        return self.work_dir / f"pcap_{self.capture_id}" / f"{self.node}.pcap"

    @staticmethod
    def from_env(env: Mapping[str, str] | None = None) -> AgentConfig:
        """The one place the capture agent reads its environment (the operator's DaemonSet sets it)."""
        source = os.environ if env is None else env
        missing = [
            name
            for name in (
                "KPCAP_CAPTURE_NAMESPACE",
                "KPCAP_CAPTURE_NAME",
                "KPCAP_CAPTURE_ID",
                "KPCAP_CAPTURE_SPEC",
                "KPCAP_NODE_NAME",
            )
            if envconfig.optional(source, name) is None
        ]
        if missing:
            raise AgentConfigError(
                f"missing environment: {', '.join(missing)} (set by the operator's DaemonSet)"
            )
        # Re-validated here: the agent trusts nothing it did not check itself.
        spec = parse_spec(json.loads(source["KPCAP_CAPTURE_SPEC"]), now=None)
        if spec.destination is None:
            raise AgentConfigError("KPCAP_CAPTURE_SPEC: a full capture needs destinationConf")
        listed = envconfig.string(source, "KPCAP_INTERFACES", default="")
        interfaces = tuple(i for i in listed.split(",") if i) or None
        deadline = envconfig.optional(source, "KPCAP_UPLOAD_DEADLINE_SECONDS")
        scaled = "set by the operator from the capture's node count"
        return AgentConfig(
            namespace=source["KPCAP_CAPTURE_NAMESPACE"],
            name=source["KPCAP_CAPTURE_NAME"],
            capture_id=source["KPCAP_CAPTURE_ID"],
            node=source["KPCAP_NODE_NAME"],
            work_dir=Path(envconfig.string(source, "KPCAP_WORK_DIR", default="/var/lib/kpcap")),
            spec=spec,
            interfaces=interfaces,
            upload_deadline_seconds=None
            if deadline is None
            else envconfig.number(
                source,
                "KPCAP_UPLOAD_DEADLINE_SECONDS",
                default=0.0,
                low=1.0,
                high=86400.0,
                what="set by the operator from its report grace",
            ),
            capture_uid=envconfig.optional(source, "KPCAP_CAPTURE_UID"),
            progress_interval=envconfig.number(
                source,
                "KPCAP_PROGRESS_INTERVAL_SECONDS",
                default=PROGRESS_INTERVAL,
                low=0.1,
                high=3600.0,
                what=scaled,
            ),
            stop_poll_interval=envconfig.number(
                source,
                "KPCAP_STOP_POLL_SECONDS",
                default=STOP_POLL_INTERVAL,
                low=0.1,
                high=600.0,
                what=scaled,
            ),
        )

    def upload_retry(self, *, started: datetime | None, now: datetime) -> RetryPolicy | None:
        """The retry policy of this node's upload: no try starts after the upload deadline, which is
        measured from the capture's ``status.started`` as the operator's report grace is, so the
        node reports before the operator could count it silent. None: no deadline was given."""
        if self.upload_deadline_seconds is None:
            return None
        ends = (started or now) + timedelta(seconds=self.spec.time_limit + self.upload_deadline_seconds)
        left = (ends - now).total_seconds()
        # Past the deadline already (a restart resuming late): one try, no retries.
        return RetryPolicy(deadline=left) if left > 0 else RetryPolicy(max_attempts=1)


class Periodic:
    """``action`` every ``interval`` seconds on a thread of its own, until ``stop_and_join``."""

    def __init__(self, *, interval: float, action: Callable[[], None]) -> None:
        self._stop = threading.Event()
        self._interval, self._action = interval, action
        self._thread = threading.Thread(
            target=self._loop, name=getattr(action, "__name__", None), daemon=True
        )
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self._action()
            except Exception:
                log.warning("periodic %s failed", self._thread.name, exc_info=True)

    def stop_and_join(self, *, timeout: float = JOIN_SECONDS) -> None:
        """No new run starts; wait for the one in flight (if any) to return."""
        self._stop.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning(
                "periodic %s still running after %.0f s; going on without it", self._thread.name, timeout
            )


def capture(*, cfg: AgentConfig, api: CaptureApi, stop: threading.Event) -> CaptureResult:
    """Capture into the pod's work directory, reporting progress; ends at a limit or on ``stop``."""
    spec = cfg.spec
    cfg.pcap_path.parent.mkdir(parents=True, exist_ok=True)
    expression = bpf_expression(spec.filter)
    # The kernel filter's accepting return cuts each frame to the snap length, so the rest never
    # reaches the ring; the writer's snaplen covers what the VLAN tag put back adds.
    snaplen = DEFAULT_SNAPLEN if spec.snap_length is None else spec.snap_length
    log.info(
        "capturing on %s: filter %r, snap length %d, limits packets=%d bytes=%s time=%ds -> %s",
        ",".join(cfg.interfaces) if cfg.interfaces else "all interfaces but lo",
        expression,
        snaplen,
        spec.packet_limit,
        spec.byte_limit,
        spec.time_limit,
        cfg.pcap_path,
    )
    with (
        open_live_source(filter_expression=expression, interfaces=cfg.interfaces, snaplen=snaplen) as source,
        PcapWriter(path=cfg.pcap_path, snaplen=snaplen) as writer,
    ):
        # Creates this node's report, before any progress report (those only replace a running one).
        api.report(NodeReport(phase=NodePhase.RUNNING))

        def progress() -> None:
            api.report(
                NodeReport(
                    phase=NodePhase.RUNNING,
                    packets=writer.packets,
                    bytes=writer.packet_bytes,
                    drops=source.kernel_drops(),
                ),
                moving_from=NodePhase.RUNNING,
            )

        def watch_stop() -> None:
            try:
                body = api.read(cached=True)
            except CaptureNotFoundError:
                stop.set()
                return
            if (body.get("spec") or {}).get("stop") or (body.get("status") or {}).get("status") in TERMINAL:
                log.info("capture stopped by request")
                stop.set()

        reporters = [
            Periodic(interval=cfg.progress_interval, action=progress),
            Periodic(interval=cfg.stop_poll_interval, action=watch_stop),
        ]
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
            # Stopped and joined before the caller's uploading and final reports: no progress write
            # of this process is in flight when they are sent.
            for reporter in reporters:
                reporter.stop_and_join()
    log.info(
        "capture ended (%s): %d packets, %d bytes, %d kernel drops, %d refused by the userspace check",
        result.reason,
        result.packets,
        result.bytes,
        result.kernel_drops,
        result.rejected,
    )
    return result


def begin_upload(*, cfg: AgentConfig, api: CaptureApi, uploading: NodeReport, moving_from: NodePhase) -> bool:
    """Claim the upload: False when this node's report has left ``moving_from`` (someone else's
    report ended it, e.g. a replaced pod's). The claim is the ``uploading`` report where the node
    reports that step, else a read of its report (no write)."""
    if cfg.reports_uploading:
        claimed = api.report(uploading, moving_from=moving_from)
    else:
        claimed = api.own_entry().get("phase") == moving_from
    if not claimed:
        log.info("node %s is no longer %s: not uploading", cfg.node, moving_from)
    return claimed


def upload(
    *,
    cfg: AgentConfig,
    api: CaptureApi,
    packets: int,
    size: int,
    drops: int,
    started: datetime | None,
    moving_from: NodePhase,
) -> NodeReport | None:
    """Upload the node's file; its final report, or None when the node's report had already left
    ``moving_from`` (someone else's report ended it: nothing left to do here)."""
    destination = cfg.spec.destination
    assert destination is not None  # noqa: S101 - checked in AgentConfig.from_env
    key = object_key(destination, capture_id=cfg.capture_id, node_name=cfg.node)
    uploading = NodeReport(phase=NodePhase.UPLOADING, packets=packets, bytes=size, drops=drops)
    if not begin_upload(cfg=cfg, api=api, uploading=uploading, moving_from=moving_from):
        return None
    try:
        store = open_store(destination, retry=cfg.upload_retry(started=started, now=datetime.now(UTC)))
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
    """True once this node's report shows done/failed (the previous pod finished its work)."""
    deadline = time.monotonic() + HANDOVER_SECONDS
    while time.monotonic() < deadline and not stop.wait(1.0):
        try:
            api.read()
        except CaptureNotFoundError:
            return True
        phase = api.own_entry().get("phase")
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
    started = parse_time(status.get("started"))
    mine = api.own_entry()
    phase = mine.get("phase")
    if phase in (NodePhase.DONE, NodePhase.FAILED) or status.get("status") in TERMINAL:
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
            failed = NodeReport(
                phase=NodePhase.FAILED,
                error=(f"the agent restarted while {phase} and its capture file {cfg.pcap_path} is gone"),
            )
            api.report(failed)
            return failed
        log.info("resuming after a restart: uploading the existing %s", cfg.pcap_path)
        packets, size = _count(cfg.pcap_path)
        drops = int(mine.get("drops") or 0)
        report = upload(
            cfg=cfg,
            api=api,
            packets=packets,
            size=size,
            drops=drops,
            started=started,
            moving_from=NodePhase(phase),
        )
    else:
        result = capture(cfg=cfg, api=api, stop=stop)
        report = upload(
            cfg=cfg,
            api=api,
            packets=result.packets,
            size=result.bytes,
            drops=result.kernel_drops,
            started=started,
            moving_from=NodePhase.RUNNING,
        )
    if report is None:
        return None
    api.report(report)
    if report.phase == NodePhase.DONE:
        cfg.pcap_path.unlink()  # reported and stored: the local copy has served its purpose
    return report
