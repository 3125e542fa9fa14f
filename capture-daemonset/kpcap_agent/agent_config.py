"""The capture agent's configuration: the one place it reads its environment (set by the operator's
DaemonSet). Light on purpose (no Kubernetes client, no storage SDK): ``kpcap_agent.__main__`` reads
it and opens the capture socket before the rest of the agent is imported.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from kpcap import envconfig
from kpcap.model import CaptureSpec, parse_spec
from kpcap.pcap import DEFAULT_SNAPLEN
from kpcap.storage import RetryPolicy

# Defaults; the operator scales both with the capture's node count (KPCAP_PROGRESS_INTERVAL_SECONDS,
# KPCAP_STOP_POLL_SECONDS, from kpcap_operator.manifests) so the apiserver load stays flat.
PROGRESS_INTERVAL = 2.0
STOP_POLL_INTERVAL = 1.0
# Upload tries before the deadline (which is what ends them: at most 30 s apart, see RetryPolicy).
UPLOAD_MAX_ATTEMPTS = 1000


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
    metrics_port: int | None = None
    """Port of this agent's /metrics (the node's: hostNetwork), chosen by the operator for this
    capture; None: no metrics."""

    @property
    def reports_uploading(self) -> bool:
        """Whether the ``uploading`` step gets a report of its own.

        Only where progress is reported at all (a progress report falls within the time limit): on a
        capture of many nodes the operator spaces progress reports past any time limit, and each node
        then writes just its first and its terminal report (2 writes, not 3, at 2,000 nodes).
        """
        return self.progress_interval <= self.spec.time_limit

    @property
    def snaplen(self) -> int:
        """Bytes kept per frame: the spec's snapLength, else all (the kernel filter's accepting
        return and the PCAP writer's snap length)."""
        return DEFAULT_SNAPLEN if self.spec.snap_length is None else self.spec.snap_length

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
            metrics_port=envconfig.integer(
                source, "KPCAP_METRICS_PORT", default=0, low=1, high=65535, what="the metrics port"
            )
            if envconfig.optional(source, "KPCAP_METRICS_PORT") is not None
            else None,
        )

    def upload_retry(self, *, started: datetime | None, now: datetime) -> RetryPolicy | None:
        """The retry policy of this node's upload: no try starts after the upload deadline, which is
        measured from the capture's ``status.started`` as the operator's report grace is, so the
        node reports before the operator could count it silent. None: no deadline was given."""
        if self.upload_deadline_seconds is None:
            return None
        ends = (started or now) + timedelta(seconds=self.spec.time_limit + self.upload_deadline_seconds)
        left = (ends - now).total_seconds()
        # Past the deadline already (a restart resuming late): one try, no retries. Before it, the
        # deadline ends the retries, not a count of tries: an S3 outage of half the window is outlived.
        if left <= 0:
            return RetryPolicy(max_attempts=1)
        return RetryPolicy(deadline=left, max_attempts=UPLOAD_MAX_ATTEMPTS)
