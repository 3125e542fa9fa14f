"""Simple captures: ask the target nodes' samplers for a past window, merge, keep the PCAP.

Each node runs a sampler (``python -m kpcap_agent sample``, the chart's sampler DaemonSet) holding 1 in
N recent packets. For a simple capture the operator POSTs ``{"spec", "sinceNs", "untilNs"}`` to
``https://<node address>:<port>/v1/samples`` on every target node at once, with a bearer token of its
own ServiceAccount bound to the samplers' audience (TokenRequest API): the sampler checks it by
TokenReview, and the token is useless against the apiserver itself. Each answer is a PCAP of at most
``packetLimit`` packets (the newest in the window, matching the filter); the answers are merged by
timestamp as they stream in and only the newest ``packetLimit`` are held, so the operator's memory for
a simple capture is bounded by its packetLimit (times the samplers' snap length), not by the number of
nodes, and the file never holds more. An answer must start within the timeout and end within twice it;
one that breaks off keeps the packets it brought and its node is named.

Each sampler makes its serving certificate at start, issued for its node's address by the CA the
chart generates; the operator verifies it against that CA (``KPCAP_SAMPLER_CA_FILE``), so its token
only goes to a real sampler. Without a CA file the certificates are self-signed and not verified:
encrypted, not authenticated (what a man in the middle could learn is the audience-bound token,
valid for minutes and only towards samplers).

A sampler that does not answer within ``timeout`` (or answers an error) is named; the capture
succeeds with the others' packets if any answered.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import logging
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any, Final

from kpcap.destinations import parse_destination
from kpcap.errors import SpecInvalid
from kpcap.model import CaptureSpec, spec_to_dict
from kpcap.pcap import CHUNK_SIZE, PcapFormatError, PcapRecords, merged_header, merged_records, record_bytes
from kpcap.storage import ObjectStore, open_store
from kpcap.storage.directory import DirectoryStore
from kpcap_operator.kube import Kube
from kpcap_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

SAMPLES_PATH: Final = "/v1/samples"
MAX_ANSWER_BYTES: Final = 10000 * (65535 + 16) + 24  # packetLimit records of the largest snap length
TOKEN_SECONDS: Final = 600
_NS: Final = 1_000_000_000


# --- where the PCAPs are kept ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SampleStore:
    """The operator's own store of simple captures' PCAPs: a directory, or a bucket with a prefix."""

    store: ObjectStore
    prefix: str

    def key(self, *, namespace: str, capture_id: str) -> str:
        """Derived from the capture's namespace and id only, never from user-written fields."""
        parts = [self.prefix] if self.prefix else []
        return "/".join([*parts, namespace, f"pcap_{capture_id}.pcap"])


def open_sample_store(location: str) -> SampleStore:
    """``location``: an absolute directory path, or ``s3://bucket/prefix?region=...`` / ``gs://bucket/prefix``.

    Raises ValueError naming KPCAP_SAMPLE_STORE and what is allowed.
    """
    if "://" in location:
        try:
            destination = parse_destination(location, field="KPCAP_SAMPLE_STORE")
        except SpecInvalid as invalid:
            raise ValueError(str(invalid)) from None
        return SampleStore(store=open_store(destination), prefix=destination.prefix)
    path = Path(location)
    if not path.is_absolute():
        raise ValueError(
            f"KPCAP_SAMPLE_STORE: must be an absolute directory path or an s3:// or gs:// bucket URI, "
            f"got {location!r}"
        )
    return SampleStore(store=DirectoryStore(path), prefix="")


# --- finding and asking the samplers -----------------------------------------------------------


def sampler_addresses(pods: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Node name -> the address its sampler listens on, for Running pods (hostNetwork: the node's IP).

    When a node has several (a rolling update), a Ready one wins, then the newest.
    """
    best: dict[str, tuple[bool, str, str]] = {}
    for pod in pods:
        status = pod.get("status") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        address = status.get("podIP") or status.get("hostIP")
        if not node or not address or status.get("phase") != "Running":
            continue
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
        )
        created = str((pod.get("metadata") or {}).get("creationTimestamp") or "")
        candidate = (ready, created, str(address))
        if node not in best or candidate > best[node]:
            best[node] = candidate
    return {node: address for node, (_, _, address) in best.items()}


def sample_window(*, spec: CaptureSpec, now: datetime) -> tuple[int, int]:
    """[offsetTime - timeLimit, offsetTime] in ns since the epoch; offsetTime defaults to ``now``."""
    until = spec.offset_time or now
    since = until - timedelta(seconds=spec.time_limit)
    return round(since.timestamp() * _NS), round(until.timestamp() * _NS)


def _nothing() -> None:
    """Nothing to release."""


@dataclass(slots=True)
class SamplerAnswer:
    """One node's answer: ``records`` is its PCAP as it arrives (header already read and checked), or
    None and ``error`` says why. A body that ends early (a reset, the deadline, too large) keeps the
    records read so far and says why in ``cut_short``. ``close`` releases the connection."""

    node: str
    records: PcapRecords | None
    error: str | None
    seconds: float
    close: Callable[[], None] = _nothing
    cut_short: list[str] = field(default_factory=list)


class SamplerTls:
    """The client TLS context for the samplers (see the module docstring).

    With a CA file: certificates must chain to it and name the node's address. The file is read again
    when it changes (a rotated CA Secret is updated in the mounted volume without a restart); an
    unreadable file makes ``context()`` raise OSError or ssl.SSLError. Without: encrypted, unverified.
    """

    def __init__(self, ca_file: str) -> None:
        self._ca_file = ca_file
        self._loaded: tuple[float, ssl.SSLContext] | None = None
        self._lock = threading.Lock()

    @property
    def verifies(self) -> bool:
        return bool(self._ca_file)

    def context(self) -> ssl.SSLContext:
        if not self._ca_file:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return context
        with self._lock:
            changed = Path(self._ca_file).stat().st_mtime
            if self._loaded is None or self._loaded[0] != changed:
                self._loaded = (changed, ssl.create_default_context(cafile=self._ca_file))
            return self._loaded[1]


def _body(
    response: http.client.HTTPResponse,
    *,
    sock: socket.socket | None,
    answer_cut: list[str],
    deadline: float,
    timeout: float,
) -> Iterator[bytes]:
    """The answer's body in chunks, ending (and saying why in ``answer_cut``) at the deadline, on a
    transport error or beyond MAX_ANSWER_BYTES."""
    received = 0
    while not response.isclosed():  # closed once the whole body is read
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            answer_cut.append(f"answer not complete within {timeout:g} s")
            return
        if sock is not None:
            sock.settimeout(remaining)  # the response reads from this socket: bounds each read
        try:
            chunk = response.read1(CHUNK_SIZE)  # what has arrived, without waiting for a full chunk
        except TimeoutError:
            answer_cut.append(f"answer not complete within {timeout:g} s")
            return
        except (OSError, http.client.HTTPException) as err:
            answer_cut.append(f"answer cut short: {err!r}")
            return
        if not chunk:
            if response.length:  # the connection ended before the promised Content-Length
                answer_cut.append(f"answer cut short: ended {response.length} bytes early")
            return
        received += len(chunk)
        if received > MAX_ANSWER_BYTES:
            answer_cut.append(f"answer larger than {MAX_ANSWER_BYTES} bytes")
            return
        yield chunk


def _ask(
    *,
    node: str,
    address: str,
    port: int,
    body: bytes,
    token: str,
    timeout: float,
    deadline: float,
    tls: ssl.SSLContext,
) -> SamplerAnswer:
    """Send the query; return once the answer's status and PCAP header are in (the body streams)."""
    started = time.monotonic()
    host = f"[{address}]" if ":" in address else address
    connection = http.client.HTTPSConnection(host, port, timeout=timeout, context=tls)
    try:
        connection.request(
            "POST",
            SAMPLES_PATH,
            body=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        sock = connection.sock  # getresponse() forgets it when the server closes after the answer
        response = connection.getresponse()
        if response.status != 200:
            data = response.read(4096)
            try:
                reason = str(json.loads(data)["error"])
            except (ValueError, KeyError, TypeError):
                reason = data[:200].decode("utf-8", "replace")
            connection.close()
            return SamplerAnswer(
                node, None, f"sampler answered {response.status}: {reason}", time.monotonic() - started
            )
        answer = SamplerAnswer(node, None, None, 0.0, close=connection.close)
        answer.records = PcapRecords(
            # The answer must start within the timeout; its body gets as long again to arrive.
            _body(
                response,
                sock=sock,
                answer_cut=answer.cut_short,
                deadline=deadline + timeout,
                timeout=2 * timeout,
            )
        )
    except PcapFormatError as err:
        connection.close()
        return SamplerAnswer(
            node, None, f"sampler answered an unreadable PCAP: {err}", time.monotonic() - started
        )
    except (OSError, http.client.HTTPException) as err:
        connection.close()
        return SamplerAnswer(node, None, f"sampler at {address}:{port}: {err or type(err).__name__}", 0.0)
    answer.seconds = time.monotonic() - started
    return answer


class Samplers:
    """Asks samplers for samples with a cached, audience-bound token of the operator's ServiceAccount."""

    def __init__(
        self,
        *,
        request_token: Callable[..., tuple[str, float]],
        list_sampler_pods: Callable[[], list[dict[str, Any]]],
        port: int,
        timeout: float,
        tls: SamplerTls,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._tls = tls
        self._request_token = request_token
        self._list_pods = list_sampler_pods
        self._port = port
        self._timeout = timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._token: tuple[str, float] | None = None  # (token, expiry on clock)
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=32, thread_name_prefix="sampler-query")

    def token(self) -> str:
        """A token valid for at least a few more minutes (renewed at 80 % of its life)."""
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._token[1]:
                token, lifetime = self._request_token(seconds=TOKEN_SECONDS)
                self._token = (token, now + 0.8 * lifetime)
            return self._token[0]

    def ask(
        self, *, targets: Sequence[str], spec: CaptureSpec, since_ns: int, until_ns: int
    ) -> list[SamplerAnswer]:
        """One answer per target node, in the order given, within ``timeout`` seconds overall."""
        deadline = time.monotonic() + self._timeout
        addresses = sampler_addresses(self._list_pods())
        body = json.dumps({"spec": spec_to_dict(spec), "sinceNs": since_ns, "untilNs": until_ns}).encode()
        futures: dict[str, concurrent.futures.Future[SamplerAnswer]] = {}
        answers = {
            node: SamplerAnswer(node, None, "no running sampler pod on this node", 0.0)
            for node in targets
            if node not in addresses
        }
        asked = [node for node in targets if node in addresses]
        token, tls = None, None
        if asked:
            try:
                tls = self._tls.context()
                token = self.token()
            except (OSError, ssl.SSLError) as err:
                log.warning("cannot verify the samplers: %s", err)
                reason = f"the operator cannot verify samplers: CA file {err}"
                answers.update({node: SamplerAnswer(node, None, reason, 0.0) for node in asked})
            except Exception as err:  # the apiserver's refusal or absence: every sampler is then out of reach
                log.warning("no token for the samplers", exc_info=True)
                reason = f"the operator could not get its token for the samplers: {err}".splitlines()[0]
                answers.update({node: SamplerAnswer(node, None, reason, 0.0) for node in asked})
        if token is not None and tls is not None:
            for node in asked:
                futures[node] = self._pool.submit(
                    _ask,
                    node=node,
                    address=addresses[node],
                    port=self._port,
                    body=body,
                    token=token,
                    timeout=self._timeout,
                    deadline=deadline,
                    tls=tls,
                )
        done, _ = concurrent.futures.wait(futures.values(), timeout=max(0.0, deadline - time.monotonic()))
        for node, future in futures.items():
            if future in done:
                answers[node] = future.result()
            else:
                # Whenever it does answer, its connection is closed unread.
                future.add_done_callback(lambda late: late.result().close())
                answers[node] = SamplerAnswer(
                    node, None, f"sampler did not answer within {self._timeout:g} s", self._timeout
                )
        return [answers[node] for node in targets]

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


@dataclass(frozen=True, slots=True)
class Sampling:
    """What simple captures need: the samplers to ask and the store to keep the result in."""

    samplers: Samplers
    store: SampleStore


def open_sampling(*, settings: OperatorSettings, kube: Kube) -> Sampling:
    """The operator's samplers and sample store, from its settings (ValueError names a bad setting)."""
    samplers = Samplers(
        request_token=partial(
            kube.request_token, service_account=settings.service_account, audience=settings.sampler_audience
        ),
        list_sampler_pods=partial(kube.list_pods, settings.sampler_selector),
        port=settings.sampler_port,
        timeout=settings.sampler_timeout_seconds,
        tls=SamplerTls(settings.sampler_ca_file),
    )
    return Sampling(samplers=samplers, store=open_sample_store(settings.sample_store))


# --- merging -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MergedSample:
    pcap: bytes
    packets: int
    packet_bytes: int  # captured packet data (sum of incl_len)
    per_node: dict[str, int]  # packets each node contributed to the file


def merge_newest(answers: Sequence[SamplerAnswer], *, limit: int) -> MergedSample:
    """The answers' records merged by timestamp as they stream in; only the newest ``limit`` are
    held, so memory is bounded by the capture's packetLimit, whatever the number of nodes."""
    given = [a for a in answers if a.records is not None]
    inputs = [a.records for a in given if a.records is not None]
    header = merged_header([i.header for i in inputs])
    nanosecond = any(i.header.nanosecond for i in inputs)
    newest = deque(merged_records(inputs), maxlen=limit)
    per_node = dict.fromkeys((a.node for a in given), 0)
    chunks = [header]
    packet_bytes = 0
    for index, record in newest:
        per_node[given[index].node] += 1
        packet_bytes += record.captured_length
        chunks.append(record_bytes(record, nanosecond=nanosecond))
    return MergedSample(b"".join(chunks), len(newest), packet_bytes, per_node)
