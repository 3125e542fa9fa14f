"""``python -m kpcap_agent sample``: the always-on sampler of one node (DESIGN.md item 4).

Run by the chart's sampler DaemonSet (hostNetwork, NET_RAW and NET_ADMIN only, a ServiceAccount that
may only create TokenReviews). Three parts, each injectable so tests can swap them:

- **capture**: a packet source (the live TPACKET_V3 source on a node, sampling in the kernel; a
  :class:`~kpcap_agent.packetsource.MemorySource` or a live source in a test namespace in tests)
  read by one thread that feeds a :class:`~kpcap_agent.sampler.SampleRing` a block at a time
  (:meth:`~kpcap_agent.sampler.SampleRing.offer_batch`);
- **authorisation**: an :class:`Authoriser` (:class:`TokenReviewAuthoriser` on a node);
- **HTTPS**: a stdlib ``ThreadingHTTPServer`` with a self-signed certificate generated at start.

Protocol (the operator is the only client):

- ``GET /healthz`` -> 200 ``ok`` (no authentication; the readiness probe);
- ``POST /v1/samples`` with ``Authorization: Bearer <token>`` and a JSON body of at most 64 KiB,
  ``{"spec": <PacketCapture spec, camelCase>, "sinceNs": <int>, "untilNs": <int>}``. The spec is
  re-validated here (``parse_spec``; it must be a simple capture); the held records with
  ``sinceNs <= timestamp <= untilNs`` that match ``spec.filter`` are returned, the newest
  ``spec.packetLimit`` of them, as a classic PCAP (nanosecond magic ``0xa1b23c4d``, little endian,
  linktype 1, snaplen = the sampler's snap length, ascending timestamps, ``orig_len`` = the wire
  length), ``Content-Type: application/vnd.tcpdump.pcap``, with headers ``X-Kpcap-Node``,
  ``X-Kpcap-Sample-Rate`` and ``X-Kpcap-Held-Records``.
- Errors are JSON ``{"error": "..."}`` naming the field or the problem: 400 (bad JSON or field),
  401 (no, forged or expired token, or one for another audience), 403 (a valid token of someone
  other than the allowed client), 404 (unknown path), 405 (wrong method), 411 (no Content-Length),
  413 (body over 64 KiB), 503 (the TokenReview could not be made, e.g. the apiserver is down, or
  too many requests at once).

Authorisation: each query's token is checked with a TokenReview for the audience
``KPCAP_SAMPLER_AUDIENCE``; it passes only when authenticated, issued for that audience and its
user is exactly ``KPCAP_SAMPLER_CLIENT``. Successes are cached for 30 s (keyed by the token's
SHA-256, at most 1024 entries), so repeated queries cost no apiserver round trip; refusals are
never cached.

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

import contextlib
import dataclasses
import hashlib
import ipaddress
import json
import logging
import math
import os
import re
import signal
import socket
import socketserver
import ssl
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Final, Protocol

from kpcap.errors import SpecInvalid
from kpcap.filters import compile_matcher
from kpcap.model import CaptureSpec, CaptureType, filter_to_dict, parse_spec
from kpcap.pcap import Record, global_header, record_bytes
from kpcap.tls import issued_certificate, load_ca, self_signed_certificate
from kpcap_agent.packetsource import (
    CopyPolicy,
    LiveSource,
    PacketSource,
    RingGeometry,
    SourceExhausted,
    open_live_source,
)
from kpcap_agent.pcapfile import LINKTYPE_ETHERNET
from kpcap_agent.sampler import (
    DEFAULT_RETENTION_SECONDS,
    MAX_BYTE_BUDGET,
    MAX_RETENTION_SECONDS,
    MAX_SAMPLE_RATE,
    MAX_SNAP_LENGTH,
    MIN_SNAP_LENGTH,
    RECORD_OVERHEAD_BYTES,
    SampledPacket,
    SamplerConfig,
    SampleRing,
)

log = logging.getLogger(__name__)

DEFAULT_HOST: Final = "0.0.0.0"  # noqa: S104 -- the node's operator-facing port, on every address
DEFAULT_PORT: Final = 9444
DEFAULT_AUDIENCE: Final = "kpcap-sampler"
DEFAULT_SAMPLE_RATE: Final = 100
DEFAULT_SNAP_LENGTH: Final = 128
DEFAULT_BYTE_BUDGET: Final = 64 << 20
MAX_BODY_BYTES: Final = 64 * 1024
PCAP_CONTENT_TYPE: Final = "application/vnd.tcpdump.pcap"
# The kernel ring of the sampler: 8 blocks of 512 KiB = 4 MiB, mapped (so in the RSS) for the
# process's life. At the default 128-byte snap length a frame takes about 224 bytes of it, so it
# absorbs a burst of ~18k frames while the capture thread is busy (e.g. answering the ring's lock).
SAMPLER_RING_GEOMETRY: Final = RingGeometry(block_bytes=512 << 10, block_count=8, block_timeout_ms=50)
STATS_INTERVAL_SECONDS: Final = 60.0
AUTH_CACHE_SECONDS: Final = 30.0
AUTH_CACHE_ENTRIES: Final = 1024
TOKEN_REVIEW_TIMEOUT_SECONDS: Final = 5.0
MAX_CONCURRENT_REVIEWS: Final = 4
MAX_CONNECTIONS: Final = 32
CONNECTION_TIMEOUT_SECONDS: Final = 15.0
_CAPTURE_POLL_SECONDS: Final = 0.25
_MAX_NS: Final = 2**63 - 1
_DRAIN_LIMIT: Final = 1 << 20
_NS_PER_SECOND: Final = 1_000_000_000
_INTERFACE_NAME: Final = re.compile(r"[^\s/:,]{1,15}")


# --- configuration --------------------------------------------------------------------------------


class SamplerEnvError(ValueError):
    """A bad or missing environment variable; the message starts with the variable's name."""

    def __init__(self, variable: str, message: str) -> None:
        self.variable = variable
        super().__init__(f"{variable}: {message}")


_DURATION: Final = re.compile(r"(?:(?P<h>\d+)h)?(?:(?P<m>\d+)m)?(?:(?P<s>\d+)s)?")
_SECONDS: Final = re.compile(r"\d+(?:\.\d+)?")
_QUANTITY: Final = re.compile(r"(?P<number>\d+(?:\.\d+)?)(?P<suffix>Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?")
_QUANTITY_FACTORS: Final = {
    None: 1,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
    "P": 10**15,
    "E": 10**18,
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``"24h"``, ``"90m"``, ``"45s"``, ``"1h30m"`` or plain seconds (``"3600"``)."""
    text = text.strip()
    if _SECONDS.fullmatch(text):
        return float(text)
    match = _DURATION.fullmatch(text)
    if not text or match is None:
        raise ValueError(f"not a duration: {text!r} (use e.g. 24h, 90m, 45s, 1h30m or plain seconds)")
    hours, minutes, seconds = (int(match.group(unit) or 0) for unit in "hms")
    return float(hours * 3600 + minutes * 60 + seconds)


def parse_quantity(text: str) -> int:
    """Bytes in ``text``: plain bytes or a Kubernetes quantity (``"128Mi"``, ``"1Gi"``, ``"500M"``),
    rounded up to a whole byte as Kubernetes does."""
    match = _QUANTITY.fullmatch(text.strip())
    if match is None:
        raise ValueError(
            f"not a byte quantity: {text!r} (use bytes or a quantity such as 128Mi, 1Gi or 500M)"
        )
    return math.ceil(Decimal(match.group("number")) * _QUANTITY_FACTORS[match.group("suffix")])


# The SamplerConfig field each variable sets, to name the variable in SamplerConfig's own messages.
_SAMPLER_FIELDS: Final = {
    "sample_rate": "KPCAP_SAMPLER_RATE",
    "snap_length": "KPCAP_SAMPLER_SNAPLEN",
    "retention_seconds": "KPCAP_SAMPLER_RETENTION",
    "byte_budget": "KPCAP_SAMPLER_BYTE_BUDGET",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SamplerServiceConfig:
    """What the sampler of one node runs with; :meth:`from_env` reads it from the chart's env.

    ``port`` 0 binds any free port (tests); the environment allows 1..65535 only.
    """

    node_name: str
    sampler: SamplerConfig
    client: str  # the one username allowed to query, e.g. system:serviceaccount:kpcap-system:kpcap-operator
    audience: str = DEFAULT_AUDIENCE
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    interfaces: tuple[str, ...] | None = None  # None: every interface but lo
    node_ip: str | None = None  # also named in the serving certificate (hostNetwork: the node's IP)
    ca: tuple[bytes, bytes] | None = None  # (certificate, key) PEM of the CA issuing the serving cert
    ca_dir: Path | None = None  # where ``ca`` was read: checked for a rotated CA (refresh_certificate)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> SamplerServiceConfig:
        """Read and check every variable; raises :class:`SamplerEnvError` naming the variable and
        what it allows."""
        source = os.environ if env is None else env

        def value(name: str) -> str | None:
            text = source.get(name)
            return None if text is None or not text.strip() else text.strip()

        def required(name: str, what: str) -> str:
            text = value(name)
            if text is None:
                raise SamplerEnvError(name, f"required ({what})")
            return text

        def integer(name: str, default: int, low: int, high: int, what: str) -> int:
            text = value(name)
            if text is None:
                return default
            try:
                number = int(text)
            except ValueError:
                raise SamplerEnvError(
                    name, f"must be an integer in {low}..{high} ({what}), got {text!r}"
                ) from None
            if not low <= number <= high:
                raise SamplerEnvError(name, f"must be in {low}..{high} ({what}), got {number}")
            return number

        node_name = required("KPCAP_NODE_NAME", "the node's name, from the downward API")
        client = required(
            "KPCAP_SAMPLER_CLIENT",
            "the username allowed to query, e.g. system:serviceaccount:kpcap-system:kpcap-operator",
        )
        audience = value("KPCAP_SAMPLER_AUDIENCE") or DEFAULT_AUDIENCE
        host = value("KPCAP_SAMPLER_HOST") or DEFAULT_HOST
        try:
            ipaddress.ip_address(host)
        except ValueError:
            raise SamplerEnvError(
                "KPCAP_SAMPLER_HOST",
                f"must be an IP address to listen on, such as 0.0.0.0 or ::, got {host!r}",
            ) from None
        port = integer("KPCAP_SAMPLER_PORT", DEFAULT_PORT, 1, 65535, "the HTTPS port")
        sample_rate = integer(
            "KPCAP_SAMPLER_RATE", DEFAULT_SAMPLE_RATE, 1, MAX_SAMPLE_RATE, "keep 1 packet in N"
        )
        snap_length = integer(
            "KPCAP_SAMPLER_SNAPLEN",
            DEFAULT_SNAP_LENGTH,
            MIN_SNAP_LENGTH,
            MAX_SNAP_LENGTH,
            "bytes kept of each sampled packet",
        )
        retention_text = value("KPCAP_SAMPLER_RETENTION")
        retention = DEFAULT_RETENTION_SECONDS
        if retention_text is not None:
            try:
                retention = parse_duration(retention_text)
            except ValueError as err:
                raise SamplerEnvError(
                    "KPCAP_SAMPLER_RETENTION",
                    f"{err}; allowed: more than 0 s, at most {MAX_RETENTION_SECONDS:g} s (168h)",
                ) from None
        budget_text = value("KPCAP_SAMPLER_BYTE_BUDGET")
        budget = DEFAULT_BYTE_BUDGET
        if budget_text is not None:
            try:
                budget = parse_quantity(budget_text)
            except ValueError as err:
                raise SamplerEnvError(
                    "KPCAP_SAMPLER_BYTE_BUDGET",
                    f"{err}; allowed: {snap_length + RECORD_OVERHEAD_BYTES}..{MAX_BYTE_BUDGET} bytes",
                ) from None
        try:
            sampler = SamplerConfig(
                sample_rate=sample_rate,
                snap_length=snap_length,
                byte_budget=budget,
                retention_seconds=retention,
            )
        except (ValueError, TypeError) as err:
            field = str(err).split(" ", 1)[0]
            variable = _SAMPLER_FIELDS.get(field, "KPCAP_SAMPLER_*")
            given = source.get(variable, "")
            raise SamplerEnvError(variable, f"{given.strip()!r} is out of range: {err}") from None
        interfaces_text = value("KPCAP_SAMPLER_INTERFACES")
        interfaces = None
        if interfaces_text is not None:
            interfaces = tuple(name.strip() for name in interfaces_text.split(",") if name.strip())
            bad = [name for name in interfaces if not _INTERFACE_NAME.fullmatch(name)]
            if bad or not interfaces:
                raise SamplerEnvError(
                    "KPCAP_SAMPLER_INTERFACES",
                    "must be a comma-separated list of interface names (1-15 characters, no spaces, "
                    f"'/' or ':'), or unset for every interface but lo; got {interfaces_text!r}",
                )
        node_ip = value("KPCAP_NODE_IP")
        if node_ip is not None:
            try:
                ipaddress.ip_address(node_ip)
            except ValueError:
                raise SamplerEnvError(
                    "KPCAP_NODE_IP",
                    f"must be the node's IP address (downward API status.hostIP), got {node_ip!r}",
                ) from None
        ca_dir = value("KPCAP_SAMPLER_CA_DIR")
        ca = None if ca_dir is None else _checked_ca(_ca_files(Path(ca_dir)))
        return cls(
            node_name=node_name,
            sampler=sampler,
            client=client,
            audience=audience,
            host=host,
            port=port,
            interfaces=interfaces,
            node_ip=node_ip,
            ca=ca,
            ca_dir=None if ca_dir is None else Path(ca_dir),
        )


def _ca_files(directory: Path) -> tuple[bytes, bytes]:
    """ca.crt and ca.key of the chart's sampler CA Secret, as they are (see ``_checked_ca``)."""
    try:
        return (directory / "ca.crt").read_bytes(), (directory / "ca.key").read_bytes()
    except OSError as err:
        raise _ca_error(err) from None


def _checked_ca(ca: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
    """``ca`` if it is a CA that can issue certificates (key and certificate belong together)."""
    try:
        load_ca(ca_certificate_pem=ca[0], ca_key_pem=ca[1])
    except (ValueError, TypeError) as err:
        raise _ca_error(err) from None
    return ca


def _ca_error(err: Exception) -> SamplerEnvError:
    return SamplerEnvError(
        "KPCAP_SAMPLER_CA_DIR",
        f"must hold ca.crt and ca.key of a CA that can issue certificates (the chart's Secret "
        f"<release>-sampler-ca): {err}",
    )


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


# --- authorisation --------------------------------------------------------------------------------


class Refused(Exception):  # noqa: N818 -- the name reads as the verdict
    """A request refused with an HTTP ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        self.message = message
        super().__init__(f"{status}: {message}")


class Authoriser(Protocol):
    def authorise(self, token: str) -> str:
        """The username of the allowed client holding ``token``; raises :class:`Refused` otherwise
        (401 not authenticated or wrong audience, 403 someone else, 503 cannot tell)."""
        ...


class TokenReviewAuthoriser:
    """Checks tokens with TokenReviews for ``audience``; only ``allowed_user`` passes (module doc)."""

    def __init__(
        self,
        *,
        api_client: Any,  # kubernetes.client.ApiClient, with the sampler's own credentials
        audience: str,
        allowed_user: str,
        cache_seconds: float = AUTH_CACHE_SECONDS,
        cache_entries: int = AUTH_CACHE_ENTRIES,
        timeout_seconds: float = TOKEN_REVIEW_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        from kubernetes import client

        self._api = client.AuthenticationV1Api(api_client)
        self.audience = audience
        self.allowed_user = allowed_user
        self._cache_seconds = cache_seconds
        self._cache_entries = cache_entries
        self._timeout = timeout_seconds
        self._clock = clock
        self._cache: OrderedDict[str, float] = OrderedDict()  # token digest -> expiry
        self._lock = threading.Lock()
        self._reviews = threading.BoundedSemaphore(MAX_CONCURRENT_REVIEWS)
        self.reviews_made = 0

    @classmethod
    def in_cluster(cls, *, audience: str, allowed_user: str) -> TokenReviewAuthoriser:
        """With the pod's ServiceAccount (or the local kubeconfig outside a cluster), as report.py."""
        from kubernetes import client, config

        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
        return cls(api_client=client.ApiClient(), audience=audience, allowed_user=allowed_user)

    def authorise(self, token: str) -> str:
        digest = hashlib.sha256(token.encode()).hexdigest()
        now = self._clock()
        with self._lock:
            expiry = self._cache.get(digest)
            if expiry is not None and expiry > now:
                return self.allowed_user
            self._cache.pop(digest, None)
        self._review(token)
        with self._lock:
            self._cache[digest] = now + self._cache_seconds
            self._cache.move_to_end(digest)
            while len(self._cache) > self._cache_entries:
                self._cache.popitem(last=False)
        return self.allowed_user

    def _review(self, token: str) -> None:
        import urllib3
        from kubernetes import client
        from kubernetes.client.rest import ApiException

        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[self.audience]))
        if not self._reviews.acquire(timeout=self._timeout):
            raise Refused(503, "too many token reviews in flight; retry shortly")
        try:
            self.reviews_made += 1
            review = self._api.create_token_review(body, _request_timeout=self._timeout)
        except ApiException as err:
            log.error("TokenReview refused by the apiserver: %s %s", err.status, err.reason)  # noqa: TRY400
            raise Refused(
                503, f"cannot check the token: the apiserver answered the TokenReview with {err.status}"
            ) from None
        except (urllib3.exceptions.HTTPError, OSError) as err:
            log.error("TokenReview failed: %s: %s", type(err).__name__, err)  # noqa: TRY400
            raise Refused(503, "cannot check the token: the apiserver is unreachable") from None
        finally:
            self._reviews.release()
        status = review.status
        if status is None or not status.authenticated:
            reason = status.error if status is not None and status.error else "not authenticated"
            log.info("token refused by TokenReview: %s", reason)
            raise Refused(
                401,
                f"token not valid for audience {self.audience!r} (forged, expired, or issued for "
                "another audience)",
            )
        if self.audience not in (status.audiences or []):
            log.info("token authenticated for audiences %s, not %r", status.audiences, self.audience)
            raise Refused(401, f"token not issued for audience {self.audience!r}")
        username = status.user.username if status.user is not None else None
        if username != self.allowed_user:
            log.warning("refused a query from %s: only %s may query the sampler", username, self.allowed_user)
            raise Refused(403, f"{username} may not query the sampler")


# --- queries and responses --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SampleQuery:
    spec: CaptureSpec
    since_ns: int
    until_ns: int


_QUERY_FIELDS: Final = ("spec", "sinceNs", "untilNs")


def parse_query(body: bytes) -> SampleQuery:
    """Check a ``POST /v1/samples`` body; raises :class:`Refused` (400) naming the field."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as err:
        raise Refused(400, f"body: not valid JSON ({err})") from None
    if not isinstance(document, dict):
        raise Refused(400, "body: must be a JSON object with spec, sinceNs and untilNs")
    unknown = sorted(set(document) - set(_QUERY_FIELDS))
    if unknown:
        raise Refused(
            400, f"body: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(_QUERY_FIELDS)}"
        )
    bounds: dict[str, int] = {}
    for name in ("sinceNs", "untilNs"):
        given = document.get(name)
        if given is None:
            raise Refused(400, f"{name}: required, an integer from 0 to {_MAX_NS} (ns since the epoch)")
        if isinstance(given, bool) or not isinstance(given, int) or not 0 <= given <= _MAX_NS:
            shown = json.dumps(given)[:40]
            raise Refused(
                400, f"{name}: must be an integer from 0 to {_MAX_NS} (ns since the epoch), got {shown}"
            )
        bounds[name] = given
    if bounds["sinceNs"] > bounds["untilNs"]:
        raise Refused(400, f"untilNs: must be >= sinceNs, got {bounds['untilNs']} < {bounds['sinceNs']}")
    if "spec" not in document:
        raise Refused(400, "spec: required, the PacketCapture's spec")
    try:
        spec = parse_spec(document["spec"], now=None)  # the agent trusts nothing it did not check
    except SpecInvalid as err:
        raise Refused(400, str(err)) from None
    if spec.type is not CaptureType.SIMPLE:
        raise Refused(400, f"spec.type: must be 'simple' for a sample query, got {spec.type.value!r}")
    return SampleQuery(spec=spec, since_ns=bounds["sinceNs"], until_ns=bounds["untilNs"])


def encode_pcap(records: Iterable[SampledPacket], *, snap_length: int) -> bytes:
    """A classic PCAP: nanosecond magic, little endian, Ethernet, ``snap_length``; one record each."""
    parts = [global_header(nanosecond=True, snaplen=snap_length, linktype=LINKTYPE_ETHERNET)]
    parts.extend(
        record_bytes(
            Record(record.timestamp_ns, len(record.data), record.original_length, record.data),
            nanosecond=True,
        )
        for record in records
    )
    return b"".join(parts)


# --- the HTTPS server ----------------------------------------------------------------------------


def _tls_context(certificate_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server context holding the key; the PEM is handed to OpenSSL through a memfd (nothing on
    disk), or a private temporary directory deleted at once where memfd is unavailable."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    chain = key_pem + certificate_pem
    try:
        descriptor = os.memfd_create("kpcap-sampler-tls", os.MFD_CLOEXEC)
    except (AttributeError, OSError):
        with tempfile.TemporaryDirectory(prefix="kpcap-sampler-tls-") as directory:
            path = Path(directory) / "chain.pem"
            path.touch(mode=0o600)
            path.write_bytes(chain)
            context.load_cert_chain(str(path))
        return context
    try:
        os.write(descriptor, chain)
        context.load_cert_chain(f"/proc/self/fd/{descriptor}")
    finally:
        os.close(descriptor)
    return context


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], *, service: SamplerService, tls: ssl.SSLContext) -> None:
        if ipaddress.ip_address(address[0]).version == 6:
            self.address_family = socket.AF_INET6
        self.service = service
        self.tls = tls
        self.slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind resolves the host's FQDN (a DNS lookup at start): not wanted.
        socketserver.TCPServer.server_bind(self)
        self.server_name = self.service.config.node_name
        self.server_port = self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            log.warning("refusing a connection from %s: %d already open", client_address[0], MAX_CONNECTIONS)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        # The TLS handshake happens here, in the connection's own thread (not in accept(), where a
        # silent client would hold up every other one), with a timeout.
        request.settimeout(CONNECTION_TIMEOUT_SECONDS)
        with self.tls.wrap_socket(request, server_side=True) as connection:
            _Handler(connection, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:  # noqa: ARG002
        error = sys.exc_info()[1]
        if isinstance(error, ssl.SSLError | ConnectionError | TimeoutError):
            log.info("connection from %s ended: %s", client_address[0], error)
        else:
            log.exception("error serving %s", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server_version = "kpcap-sampler"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection
    timeout = CONNECTION_TIMEOUT_SECONDS
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:  # noqa: ARG002
        # Errors the base class detects itself (bad request line, oversized headers) as JSON too.
        self.close_connection = True
        self._send_json(code, {"error": message or HTTPStatus(code).phrase})

    def _send_json(
        self, status: int, document: Mapping[str, Any], headers: Mapping[str, str] | None = None
    ) -> None:
        body = (json.dumps(document) + "\n").encode()
        self._send(status, body, "application/json", headers or {})

    def _send(self, status: int, body: bytes, content_type: str, headers: Mapping[str, str]) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _route(self) -> None:
        path = self.path.split("?", 1)[0]
        routes: dict[str, dict[str, Callable[[], None]]] = {
            "/healthz": {"GET": self._healthz},
            "/v1/samples": {"POST": self._samples},
        }
        methods = routes.get(path)
        if methods is None or self.command not in methods:
            self._drain_body()
        if methods is None:
            self._send_json(404, {"error": f"no such path: {path[:100]}"})
            return
        action = methods.get(self.command)
        if action is None:
            allowed = ", ".join(methods)
            self._send_json(
                405, {"error": f"{self.command} not allowed on {path}; use {allowed}"}, {"Allow": allowed}
            )
            return
        try:
            action()
        except Refused as refused:
            headers = {"WWW-Authenticate": "Bearer"} if refused.status == 401 else {}
            self._send_json(refused.status, {"error": refused.message}, headers)
        except (ConnectionError, TimeoutError, ssl.SSLError):
            raise
        except Exception:
            log.exception("error answering %s %s", self.command, path)
            self._send_json(500, {"error": "internal error; see the sampler's log"})

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _route  # noqa: N815

    def _drain_body(self) -> None:
        """Read (and drop) a body that will not be used, up to a bound: unread data makes the kernel
        reset the connection when it closes, and the client may lose the answer."""
        length = self.headers.get("Content-Length", "0").strip()
        if length.isascii() and length.isdigit() and 0 < int(length) <= _DRAIN_LIMIT:
            with contextlib.suppress(OSError):
                self.rfile.read(int(length))
        else:
            self.close_connection = True

    def _healthz(self) -> None:
        self._send(200, b"ok", "text/plain", {})

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise Refused(411, "send the body with a Content-Length (chunked bodies are not accepted)")
        length_text = self.headers.get("Content-Length")
        if length_text is None:
            raise Refused(411, "Content-Length: required")
        digits = length_text.strip()
        length = int(digits) if digits.isascii() and digits.isdigit() else -1
        if length < 0:
            raise Refused(400, f"Content-Length: not a byte count: {length_text[:40]!r}")
        if length > MAX_BODY_BYTES:
            self._drain_body()
            raise Refused(413, f"body: {length} bytes, at most {MAX_BODY_BYTES}")
        body = self.rfile.read(length)
        if len(body) != length:
            raise Refused(400, f"body: {len(body)} bytes received, Content-Length said {length}")
        return body

    def _samples(self) -> None:
        started = time.monotonic()
        service = self.server.service
        # The body is read first (bounded) so that a refusal reaches the client (unread data
        # makes the kernel reset the connection), then the token is checked, then the body.
        body = self._read_body()
        authorization = self.headers.get("Authorization", "")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Refused(401, "Authorization: required, 'Bearer <token>' for audience " + service.audience)
        user = service.authoriser.authorise(token)
        query = parse_query(body)
        ring = service.ring
        records = ring.query(
            since_ns=query.since_ns,
            until_ns=query.until_ns,
            accept=compile_matcher(query.spec.filter),
            limit=query.spec.packet_limit,
        )
        held = ring.stats().held_records
        payload = encode_pcap(records, snap_length=ring.config.snap_length)
        self._send(
            200,
            payload,
            PCAP_CONTENT_TYPE,
            {
                "X-Kpcap-Node": service.config.node_name,
                "X-Kpcap-Sample-Rate": str(service.config.sampler.sample_rate),
                "X-Kpcap-Held-Records": str(held),
            },
        )
        log.info(
            "query from %s (%s): window %s..%s (%.1f s), filter %s, limit %d -> %d packets, %d bytes, "
            "%d held, %.1f ms",
            user,
            self.client_address[0],
            query.since_ns,
            query.until_ns,
            (query.until_ns - query.since_ns) / _NS_PER_SECOND,
            json.dumps(filter_to_dict(query.spec.filter), sort_keys=True),
            query.spec.packet_limit,
            len(records),
            len(payload),
            held,
            (time.monotonic() - started) * 1000,
        )


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
        addresses = ["127.0.0.1", "::1"]
        if not ipaddress.ip_address(config.host).is_unspecified:
            addresses.append(config.host)
        if config.node_ip is not None:
            addresses.append(config.node_ip)
        self._addresses = sorted(set(addresses))
        self._ca = config.ca
        self.certificate_pem, key_pem = self._issue(config.ca)
        self._server = _Server(
            (config.host, config.port), service=self, tls=_tls_context(self.certificate_pem, key_pem)
        )

    def _issue(self, ca: tuple[bytes, bytes] | None) -> tuple[bytes, bytes]:
        """A serving certificate for this node's names and addresses: from the CA, else self-signed."""
        names = [self.config.node_name, "localhost"]
        if ca is None:
            return self_signed_certificate(
                common_name=self.config.node_name, dns_names=names, ip_addresses=self._addresses
            )
        # The operator verifies this chain against the CA and the node's address (samples.py).
        return issued_certificate(
            ca_certificate_pem=ca[0],
            ca_key_pem=ca[1],
            common_name=self.config.node_name,
            dns_names=names,
            ip_addresses=self._addresses,
        )

    def refresh_certificate(self) -> bool:
        """Issue a new serving certificate if the CA in ``config.ca_dir`` changed (a rotated Secret is
        updated in the mounted volume); True if it did. Checked with the stats, every minute."""
        if self.config.ca_dir is None:
            return False
        try:
            ca = _ca_files(self.config.ca_dir)
            if ca == self._ca:
                return False
            _checked_ca(ca)
        except SamplerEnvError as err:
            log.warning("keeping the current serving certificate: %s", err)
            return False
        certificate, key = self._issue(ca)
        self._server.tls = _tls_context(certificate, key)
        self._ca, self.certificate_pem = ca, certificate
        log.info(
            "the sampler CA in %s changed: new connections get a certificate it issued", self.config.ca_dir
        )
        return True

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def start(self) -> None:
        for name, target in (
            ("sampler-capture", self._capture),
            ("sampler-stats", self._log_stats_periodically),
            ("sampler-https", self._server.serve_forever),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("serving HTTPS on %s:%d", *self.address)

    def stop(self, *, timeout: float = 10.0) -> None:
        if self._stop.is_set() and not self._threads:
            return
        self._stop.set()
        if self._threads:
            self._server.shutdown()
        self._server.server_close()
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
        drops = self.source.kernel_drops()
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
    except SamplerEnvError as err:
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
