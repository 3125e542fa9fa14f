"""One node's part of a full capture: capture, upload, report; then idle until the DaemonSet goes.

Restart-safe: the node's PacketCaptureReport says how far an earlier run of this pod got.
``done``/``failed``: nothing to do. ``running``/``uploading`` with the PCAP still on the pod's
emptyDir: upload that file (the capture is not repeated). Nothing on disk: the node fails with a
message saying so. A file that could not be uploaded is kept until the node has reported.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from kpcap.destinations import DestinationScheme, object_key
from kpcap.filters import bpf_expression, compile_matcher
from kpcap.kubeapi import parse_time
from kpcap.model import TERMINAL, CaptureSpec, NodePhase
from kpcap.pcap import PcapWriter, iter_pcap_records
from kpcap.storage import StorageError, open_store
from kpcap_agent.afpacket import LiveSource, open_live_source
from kpcap_agent.agent_config import AgentConfig
from kpcap_agent.capture import CaptureLimits, CaptureResult, run_capture
from kpcap_agent.metrics import AgentMetrics, CaptureCounts, serve
from kpcap_agent.report import CaptureApi, CaptureNotFoundError, NodeReport

log = logging.getLogger(__name__)

# How long the end of a capture waits for an in-flight progress write or stop poll: the write is
# safe to leave behind (it is conditional, see kpcap_agent.report), the wait only keeps order.
JOIN_SECONDS = 30.0
# A replaced pod's predecessor has its termination grace period (60 s) to upload and report.
HANDOVER_SECONDS = 75.0


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


def _warm_store_sdk(spec: CaptureSpec) -> None:
    """Import the destination's storage SDK in the background while the capture runs (boto3 alone
    takes 0.3-0.8 s), so the upload starts as soon as the capture ends."""
    if spec.destination is None:
        return
    module = "kpcap.storage.s3" if spec.destination.scheme == DestinationScheme.S3 else "kpcap.storage.gcs"
    warm = threading.Thread(target=importlib.import_module, args=(module,), name="warm-sdk", daemon=True)
    warm.start()


def capture(
    *,
    cfg: AgentConfig,
    api: CaptureApi,
    stop: threading.Event,
    metrics: AgentMetrics | None = None,
    opened: LiveSource | None = None,
) -> CaptureResult:
    """Capture into the pod's work directory, reporting progress; ends at a limit or on ``stop``.

    ``opened``: the live source, already open (``kpcap_agent.__main__`` opens it first); else here."""
    spec = cfg.spec
    cfg.pcap_path.parent.mkdir(parents=True, exist_ok=True)
    expression = bpf_expression(spec.filter)
    # The kernel filter's accepting return cuts each frame to the snap length, so the rest never
    # reaches the ring; the writer's snaplen covers what the VLAN tag put back adds.
    snaplen = cfg.snaplen
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
    if opened is None:
        opened = open_live_source(filter_expression=expression, interfaces=cfg.interfaces, snaplen=snaplen)
        log.info("socket open")  # benchmarks/latency.py times the start-up by this line
    with opened as source, PcapWriter(path=cfg.pcap_path, snaplen=snaplen) as writer:
        # Only frames the kernel filter judged without their outer VLAN tag are checked again.
        source.recheck_tagged_frames(compile_matcher(spec.filter))
        # Creates this node's report, before any progress report (those only replace a running one).
        api.report(NodeReport(phase=NodePhase.RUNNING))
        _warm_store_sdk(spec)

        # The kernel's drop count is read by the progress reporter only (each read resets the
        # kernel's counter); metrics show the last one read.
        drops_read = [0]
        if metrics is not None:
            metrics.follow(
                lambda: CaptureCounts(
                    packets=writer.packets, bytes=writer.packet_bytes, kernel_drops=drops_read[0]
                )
            )

        def progress() -> None:
            drops_read[0] = source.kernel_drops()
            api.report(
                NodeReport(
                    phase=NodePhase.RUNNING,
                    packets=writer.packets,
                    bytes=writer.packet_bytes,
                    drops=drops_read[0],
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
                accept=None,  # the kernel's filter, and the source's check of tagged frames
                stop_event=stop,
            )
        finally:
            # Stopped and joined before the caller's uploading and final reports: no progress write
            # of this process is in flight when they are sent.
            for reporter in reporters:
                reporter.stop_and_join()
    if metrics is not None:
        metrics.settle(
            CaptureCounts(packets=result.packets, bytes=result.bytes, kernel_drops=result.kernel_drops)
        )
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
    metrics: AgentMetrics | None = None,
) -> NodeReport | None:
    """Upload the node's file; its final report, or None when the node's report had already left
    ``moving_from`` (someone else's report ended it: nothing left to do here)."""
    destination = cfg.spec.destination
    assert destination is not None  # noqa: S101 - checked in AgentConfig.from_env
    key = object_key(destination, capture_id=cfg.capture_id, node_name=cfg.node)
    uploading = NodeReport(phase=NodePhase.UPLOADING, packets=packets, bytes=size, drops=drops)
    if not begin_upload(cfg=cfg, api=api, uploading=uploading, moving_from=moving_from):
        return None
    began = time.monotonic()
    try:
        store = open_store(destination, retry=cfg.upload_retry(started=started, now=datetime.now(UTC)))
        try:
            uploaded = store.upload_file(local_path=cfg.pcap_path, key=key)
        finally:
            store.close()
    except StorageError as err:
        if metrics is not None:
            metrics.uploaded(seconds=time.monotonic() - began, size=None)
        log.error("upload failed, keeping %s: %s", cfg.pcap_path, err)  # noqa: TRY400 - the message is the point
        return NodeReport(phase=NodePhase.FAILED, packets=packets, bytes=size, drops=drops, error=str(err))
    if metrics is not None:
        metrics.uploaded(seconds=time.monotonic() - began, size=uploaded.size)
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


def run(
    *, cfg: AgentConfig, api: CaptureApi, stop: threading.Event, opened: LiveSource | None = None
) -> NodeReport | None:
    """Do this node's work once; None when there was nothing (left) to do. ``opened``: see
    ``capture`` (the caller closes it when this run does not capture)."""
    metrics = None
    if cfg.metrics_port is not None:
        metrics = AgentMetrics()
        serve(registry=metrics.registry, host="0.0.0.0", port=cfg.metrics_port)  # noqa: S104 - hostNetwork: the node's port
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
        if opened is not None:
            opened.close()  # not capturing again: no ring filling up while the upload or handover runs
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
        if metrics is not None:
            metrics.settle(CaptureCounts(packets=packets, bytes=size, kernel_drops=drops))
        report = upload(
            cfg=cfg,
            api=api,
            packets=packets,
            size=size,
            drops=drops,
            started=started,
            moving_from=NodePhase(phase),
            metrics=metrics,
        )
    else:
        result = capture(cfg=cfg, api=api, stop=stop, metrics=metrics, opened=opened)
        report = upload(
            cfg=cfg,
            api=api,
            packets=result.packets,
            size=result.bytes,
            drops=result.kernel_drops,
            started=started,
            moving_from=NodePhase.RUNNING,
            metrics=metrics,
        )
    if report is None:
        return None
    api.report(report)
    if report.phase == NodePhase.DONE:
        cfg.pcap_path.unlink()  # reported and stored: the local copy has served its purpose
    return report
