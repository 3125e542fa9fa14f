"""``python -m kpcap_agent sample``: the always-on sampler of one node, its lifecycle and ``main``.

Run by the chart's sampler DaemonSet (hostNetwork, NET_RAW and NET_ADMIN only, a ServiceAccount that
may only create TokenReviews). Its parts, each injectable so tests can swap them:

- **settings**: :class:`~kpcap_agent.sampler_settings.SamplerServiceConfig`, from the environment;
- **capture**: a packet source (the live TPACKET_V3 source on a node, sampling in the kernel; a
  :class:`~kpcap_agent.sources.MemorySource` or a live source in a test namespace in tests)
  read by one thread that feeds a :class:`~kpcap_agent.sampler.SampleRing` a block at a time
  (:meth:`~kpcap_agent.sampler.SampleRing.offer_batch`);
- **authorisation**: an :class:`~kpcap_agent.sampler_auth.Authoriser`
  (:class:`~kpcap_agent.sampler_auth.TokenReviewAuthoriser` on a node);
- **HTTPS**: the aiohttp application of :mod:`kpcap_agent.sampler_http` (the protocol is
  :mod:`kpcap.sampleprotocol`), with the certificate of :mod:`kpcap_agent.sampler_ca`.

Sampling happens in the kernel: :func:`open_sampler_source` prepends a random 1-in-N check
(``SKF_AD_RANDOM``, ``mod N``) to the socket's BPF program, so each frame is kept independently with
probability 1/N and a frame not sampled is never copied to the kernel ring nor seen by Python (the
ring keeps every frame it is offered: :func:`ring_config`). The count sampled out of M frames is
binomial (mean M/N), not exactly every N-th frame. ``X-Kpcap-Sample-Rate`` is the configured N. A
packet seen on k captured interfaces (routed, bridged) has k chances to be sampled (about k/N; the
copy check then keeps it once).

Memory: the ring holds at most ``byte_budget`` bytes (see :mod:`kpcap_agent.sampler`); the kernel
ring is small (:data:`SAMPLER_RING_GEOMETRY`, 4 MiB, against 64 MiB for a full capture), since a
sampler keeps only headers (the kernel truncates every frame to the snap length before queueing it)
and runs on every node all the time. Nothing is written to disk: the TLS key and certificate are
loaded from a memfd (a private temporary directory where memfd is unavailable, deleted at once).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import signal
import sys
import threading
from collections.abc import Mapping
from typing import Final

from kpcap.envconfig import EnvError
from kpcap_agent.afpacket import LiveSource, RingGeometry, open_live_source
from kpcap_agent.copies import CopyPolicy
from kpcap_agent.metrics import MetricsServer, SamplerMetrics, serve
from kpcap_agent.sampler import SamplerConfig, SampleRing
from kpcap_agent.sampler_auth import Authoriser, TokenReviewAuthoriser
from kpcap_agent.sampler_ca import ServingCertificate
from kpcap_agent.sampler_http import HttpsServer, SamplesEndpoint, create_app
from kpcap_agent.sampler_settings import SamplerServiceConfig
from kpcap_agent.sources import PacketSource, SourceExhausted

log = logging.getLogger(__name__)

# The kernel ring of the sampler: 8 blocks of 512 KiB = 4 MiB, mapped (so in the RSS) for the
# process's life. At the default 128-byte snap length a frame takes about 224 bytes of it, so it
# absorbs a burst of ~18k frames while the capture thread is busy (e.g. answering the ring's lock).
SAMPLER_RING_GEOMETRY: Final = RingGeometry(block_bytes=512 << 10, block_count=8, block_timeout_ms=50)
STATS_INTERVAL_SECONDS: Final = 60.0
_CAPTURE_POLL_SECONDS: Final = 0.25


def open_sampler_source(
    config: SamplerServiceConfig, *, geometry: RingGeometry = SAMPLER_RING_GEOMETRY
) -> LiveSource:
    """The live source of the sampler: 1 in ``config.sampler.sample_rate`` frames, sampled in the
    kernel (each frame kept independently with probability 1/N, before it is queued:
    ``sample_one_in``), of every kind (empty filter expression: libpcap compiles it to "accept,
    truncated to the snap length"), on the configured interfaces, each packet once
    (``CopyPolicy.ONE_COPY``, as full captures), in a small kernel ring (:data:`SAMPLER_RING_GEOMETRY`,
    4 MiB). Opened in the calling thread's network namespace (the node's, with hostNetwork).

    Its frames are already sampled: give them to a ring that keeps them all (:func:`ring_config`).
    """
    return open_live_source(
        filter_expression="",
        interfaces=config.interfaces,
        copy_policy=CopyPolicy.ONE_COPY,
        snaplen=config.sampler.snap_length,
        geometry=geometry,
        sample_one_in=config.sampler.sample_rate,
    )


def ring_config(config: SamplerServiceConfig) -> SamplerConfig:
    """The :class:`~kpcap_agent.sampler.SampleRing` configuration of the service: the configured
    snap length, byte budget and retention, but ``sample_rate`` 1, since the source hands over
    frames already sampled (in the kernel, :func:`open_sampler_source`); sampling them again in the
    ring would keep 1 in N**2. ``config.sampler.sample_rate`` stays the rate reported
    (``X-Kpcap-Sample-Rate``, the stats line)."""
    return dataclasses.replace(config.sampler, sample_rate=1)


# --- the service ---------------------------------------------------------------------------------


class SamplerService:
    """The ring, the thread feeding it from ``source``, the stats logger and the HTTPS server.

    The server socket is bound on construction (so :attr:`address` is known); :meth:`start` starts
    the threads, :meth:`stop` ends them (the caller closes ``source``). A context manager too.
    When the capture fails (not merely a finite source running out), :attr:`failure` is set and
    :meth:`wait` returns.

    ``source`` hands over frames already sampled (:func:`open_sampler_source` samples in the
    kernel), so the default ring keeps every frame it is offered (:func:`ring_config`); the rate
    reported is ``config.sampler.sample_rate``. A test may pass its own ``ring`` (e.g. one with the
    ring's own deterministic 1-in-N counter, for an unsampled :class:`MemorySource`).
    """

    def __init__(
        self,
        *,
        config: SamplerServiceConfig,
        source: PacketSource,
        authoriser: Authoriser,
        ring: SampleRing | None = None,
        stats_interval: float = STATS_INTERVAL_SECONDS,
    ) -> None:
        self.config = config
        self.ring = ring if ring is not None else SampleRing(ring_config(config))
        self.source = source
        self.authoriser = authoriser
        self.audience = config.audience
        self.failure: BaseException | None = None
        self._stats_interval = stats_interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._last_drops = 0
        # Each read of the kernel's drop count resets the kernel's counter: one reader at a time.
        self._drops_lock = threading.Lock()
        self.metrics_server: MetricsServer | None = None
        self.metrics = SamplerMetrics(
            stats=self.ring.stats, drops=self.kernel_drops, budget=self.ring.config.byte_budget
        )
        addresses = ["127.0.0.1", "::1"]
        if not ipaddress.ip_address(config.host).is_unspecified:
            addresses.append(config.host)
        if config.node_ip is not None:
            addresses.append(config.node_ip)
        self._certificate = ServingCertificate(
            node_name=config.node_name, addresses=sorted(set(addresses)), ca=config.ca, ca_dir=config.ca_dir
        )
        endpoint = SamplesEndpoint(
            ring=self.ring,
            authoriser=authoriser,
            node_name=config.node_name,
            sample_rate=config.sampler.sample_rate,
            audience=config.audience,
            answered=self.metrics.answered,
        )
        self._server = HttpsServer(
            create_app(endpoint), host=config.host, port=config.port, tls=self._certificate.context
        )

    @property
    def certificate_pem(self) -> bytes:
        """The serving certificate new connections get (PEM)."""
        return self._certificate.certificate_pem

    def refresh_certificate(self) -> bool:
        """Issue a new serving certificate if the CA in ``config.ca_dir`` changed (a rotated Secret is
        updated in the mounted volume); True if it did. Checked with the stats, every minute."""
        return self._certificate.refresh()

    @property
    def address(self) -> tuple[str, int]:
        return self._server.address

    def kernel_drops(self) -> int:
        with self._drops_lock:
            return self.source.kernel_drops()

    def start(self) -> None:
        self._server.start()
        for name, target in (
            ("sampler-capture", self._capture),
            ("sampler-stats", self._log_stats_periodically),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("serving HTTPS on %s:%d", *self.address)
        if self.config.metrics_port is not None:
            self.metrics_server = serve(
                registry=self.metrics.registry, host=self.config.host, port=self.config.metrics_port
            )

    def stop(self, *, timeout: float = 10.0) -> None:
        if self._stop.is_set() and not self._threads:
            return
        self._stop.set()
        self._server.stop(timeout=timeout)
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
        for thread in self._threads:
            thread.join(timeout)
        self._threads.clear()
        self.log_stats()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the service is stopping or stopped (asked to, or its capture failed)."""
        return self._stop.wait(timeout)

    def __enter__(self) -> SamplerService:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _capture(self) -> None:
        source, offer_batch, stop = self.source, self.ring.offer_batch, self._stop
        try:
            while not stop.is_set():
                frames = source.next_frames(timeout=_CAPTURE_POLL_SECONDS)
                if frames:
                    offer_batch(frames)
        except SourceExhausted:
            log.info("packet source exhausted; the ring keeps what it holds and queries are answered")
        except BaseException as err:
            log.exception("capture failed; stopping the sampler")
            self.failure = err
            self._stop.set()

    def _log_stats_periodically(self) -> None:
        while not self._stop.wait(self._stats_interval):
            try:
                self.log_stats()
                self.refresh_certificate()
            except Exception:
                log.exception("could not log the stats or check the CA")

    def log_stats(self) -> None:
        stats = self.ring.stats()
        budget = self.ring.config.byte_budget
        drops = self.kernel_drops()
        # The frames reaching the ring are already sampled (1 in N, in the kernel): the ring keeps
        # every one it is offered (``sampled`` also counts those already past retention).
        log.info(
            "stats: held %d records, %s of %s budget (%.1f%%); %d frames reached the ring, already "
            "sampled 1 in %d by the kernel, %d kept; evicted %d for the budget, %d for retention; "
            "kernel drops %d (+%d)",
            stats.held_records,
            _mib(stats.held_bytes),
            _mib(budget),
            100 * stats.held_bytes / budget,
            stats.offered,
            self.config.sampler.sample_rate,
            stats.sampled,
            stats.evicted_for_budget,
            stats.evicted_for_retention,
            drops,
            drops - self._last_drops,
        )
        self._last_drops = drops


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


# --- entry point ---------------------------------------------------------------------------------


def main(env: Mapping[str, str] | None = None) -> int:
    """``python -m kpcap_agent sample``. 0 after SIGTERM, 2 for a configuration error, 1 when the
    capture or the server cannot run."""
    try:
        config = SamplerServiceConfig.from_env(env)
    except EnvError as err:
        print(f"kpcap-agent sample: configuration error: {err}", file=sys.stderr)
        return 2
    sampler = config.sampler
    log.info(
        "sampler on node %s: keep 1 packet in %d, %d bytes each, retention %gs, budget %s (%d bytes); "
        "interfaces %s; kernel ring %s; HTTPS on %s:%d for %s (audience %s)",
        config.node_name,
        sampler.sample_rate,
        sampler.snap_length,
        sampler.retention_seconds,
        _mib(sampler.byte_budget),
        sampler.byte_budget,
        ",".join(config.interfaces) if config.interfaces else "all but lo",
        _mib(SAMPLER_RING_GEOMETRY.block_bytes * SAMPLER_RING_GEOMETRY.block_count),
        config.host,
        config.port,
        config.client,
        config.audience,
    )
    stop = threading.Event()

    def on_sigterm(_signum: int, _frame: object) -> None:
        log.info("SIGTERM: stopping")
        stop.set()

    signal.signal(signal.SIGTERM, on_sigterm)
    signal.signal(signal.SIGINT, on_sigterm)
    try:
        authoriser = TokenReviewAuthoriser.in_cluster(audience=config.audience, allowed_user=config.client)
    except Exception:
        log.exception("cannot build the Kubernetes client for TokenReviews (in-cluster config or kubeconfig)")
        return 1
    try:
        source = open_sampler_source(config)
    except Exception:
        log.exception("cannot open the packet capture (needs CAP_NET_RAW; interfaces %s)", config.interfaces)
        return 1
    with source:
        try:
            service = SamplerService(config=config, source=source, authoriser=authoriser)
        except OSError:
            log.exception("cannot serve on %s:%d", config.host, config.port)
            return 1
        with service:
            while not stop.wait(1.0):
                if service.failure is not None:
                    return 1
    log.info("stopped")
    return 0
