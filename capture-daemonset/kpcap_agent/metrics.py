"""Prometheus metrics of the node agent: the capture agent's (one capture) and the sampler's.

Each process has its own registry (no module-level state: tests run several in one process) served
over plain HTTP on ``/metrics`` (counts only, no packet data, no secret). Both run with hostNetwork,
so the port is the node's: the sampler (one per node) has a fixed one; a capture agent gets the port
the operator chose for its capture (``KPCAP_METRICS_PORT``, distinct from every other live capture's,
see ``kpcap_operator.manifests.agent_metrics_port``). A port already taken costs that process its
metrics, never its capture: :func:`serve` logs it and returns None.

Live values (packets written, frames held) are read when scraped, by callbacks, so the capture loop
does no metrics work per packet. Labels are bounded: results and reasons only, never a packet field.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from kpcap_agent.sampler import SamplerStats

log = logging.getLogger(__name__)

UPLOAD_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class MetricsServer:
    """A registry served over HTTP from a daemon thread; :meth:`close` stops it."""

    def __init__(self, *, registry: CollectorRegistry, host: str, port: int) -> None:
        self._server, self._thread = start_http_server(port, addr=host, registry=registry)
        self.port = int(self._server.server_address[1])

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)


def serve(*, registry: CollectorRegistry, host: str, port: int) -> MetricsServer | None:
    """Serve ``registry`` on ``host:port`` (0: any free port); None when the port cannot be bound
    (the process goes on without metrics)."""
    try:
        server = MetricsServer(registry=registry, host=host, port=port)
    except OSError as err:
        log.warning("metrics not served: cannot listen on %s:%d (%s)", host, port, err)
        return None
    log.info("metrics on http://%s:%d/metrics", host, server.port)
    return server


# --- the capture agent ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class CaptureCounts:
    packets: int
    bytes: int
    kernel_drops: int


class _CaptureCollector(Collector):
    """packets/bytes/drops of the capture, read at scrape time from what ``AgentMetrics`` follows."""

    def __init__(self, read: Callable[[], CaptureCounts]) -> None:
        self._read = read

    def collect(self) -> Iterator[CounterMetricFamily]:
        counts = self._read()
        yield CounterMetricFamily(
            "kpcap_agent_packets_total", "Packets written to this node's capture file", value=counts.packets
        )
        yield CounterMetricFamily(
            "kpcap_agent_bytes_total", "Packet bytes written to this node's capture file", value=counts.bytes
        )
        yield CounterMetricFamily(
            "kpcap_agent_kernel_drops_total",
            "Frames the kernel dropped before the agent read them (ring full)",
            value=counts.kernel_drops,
        )


class AgentMetrics:
    """The capture agent's metrics: the capture's counts (followed live, then settled) and uploads."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._lock = threading.Lock()
        self._counts = CaptureCounts(packets=0, bytes=0, kernel_drops=0)
        self._live: Callable[[], CaptureCounts] | None = None
        self.registry.register(_CaptureCollector(self._read))
        self.upload_bytes = Counter(
            "kpcap_agent_upload_bytes",
            "Bytes of capture files uploaded to the destination",
            registry=self.registry,
        )
        self.upload_duration = Histogram(
            "kpcap_agent_upload_duration_seconds",
            "Duration of an upload of this node's file, retries included, by result",
            ["result"],
            buckets=UPLOAD_BUCKETS,
            registry=self.registry,
        )

    def follow(self, live: Callable[[], CaptureCounts]) -> None:
        """Read the counts from ``live`` at each scrape (while the capture runs)."""
        with self._lock:
            self._live = live

    def settle(self, counts: CaptureCounts) -> None:
        """The capture ended: these counts from now on (its writer and source are closed)."""
        with self._lock:
            self._live, self._counts = None, counts

    def uploaded(self, *, seconds: float, size: int | None) -> None:
        """One upload: ``size`` bytes stored, or None when it failed."""
        self.upload_duration.labels(result="done" if size is not None else "failed").observe(seconds)
        if size is not None:
            self.upload_bytes.inc(size)

    def _read(self) -> CaptureCounts:
        with self._lock:
            live, counts = self._live, self._counts
        if live is None:
            return counts
        try:
            return live()
        except Exception:  # noqa: BLE001 - a scrape must not fail on a closing source
            return counts


# --- the sampler ---------------------------------------------------------------------------------

REQUEST_RESULTS: Final = ("ok", "unauthorized", "invalid", "error")


def request_result(status: int) -> str:
    """The bounded label of an HTTP status the sampler answered."""
    if status < 400:
        return "ok"
    if status in (401, 403):
        return "unauthorized"
    if status < 500:
        return "invalid"
    return "error"


class _SamplerCollector(Collector):
    def __init__(self, *, stats: Callable[[], SamplerStats], drops: Callable[[], int], budget: int) -> None:
        self._stats, self._drops, self._budget = stats, drops, budget

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        stats = self._stats()
        yield GaugeMetricFamily(
            "kpcap_sampler_held_frames", "Sampled frames held in the ring", value=stats.held_records
        )
        yield GaugeMetricFamily(
            "kpcap_sampler_held_bytes",
            "Bytes the held frames cost (at most the budget)",
            value=stats.held_bytes,
        )
        yield GaugeMetricFamily("kpcap_sampler_budget_bytes", "The ring's byte budget", value=self._budget)
        yield CounterMetricFamily(
            "kpcap_sampler_frames_total",
            "Frames (already sampled by the kernel) that reached the ring",
            value=stats.offered,
        )
        evicted = CounterMetricFamily(
            "kpcap_sampler_evicted_frames_total", "Frames evicted from the ring, by reason", labels=["reason"]
        )
        evicted.add_metric(["budget"], stats.evicted_for_budget)
        evicted.add_metric(["retention"], stats.evicted_for_retention)
        yield evicted
        yield CounterMetricFamily(
            "kpcap_sampler_kernel_drops_total",
            "Frames the kernel dropped before the sampler read them (ring full)",
            value=self._drops(),
        )


class SamplerMetrics:
    """The sampler's metrics: the ring and kernel drops (read at scrape time) and queries by result."""

    def __init__(self, *, stats: Callable[[], SamplerStats], drops: Callable[[], int], budget: int) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_SamplerCollector(stats=stats, drops=drops, budget=budget))
        self.requests = Counter(
            "kpcap_sampler_requests",
            "Requests the sampler answered, by result (ok, unauthorized, invalid, error)",
            ["result"],
            registry=self.registry,
        )
        for result in REQUEST_RESULTS:
            self.requests.labels(result=result)  # every series present from the start

    def answered(self, status: int) -> None:
        self.requests.labels(result=request_result(status)).inc()
