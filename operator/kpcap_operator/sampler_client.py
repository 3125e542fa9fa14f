"""Asking the nodes' samplers for a past window: an aiohttp client of :mod:`kpcap.sampleprotocol`.

The operator POSTs the query to ``https://<node address>:<port>/v1/samples`` on every target node at
once, with a bearer token of its own ServiceAccount bound to the samplers' audience (TokenRequest
API): the sampler checks it by TokenReview, and the token is useless against the apiserver itself.
An answer must start (status and PCAP header) within the timeout and end within twice it; one that
breaks off keeps the packets it brought and says why (``cut_short``). A sampler that does not answer
within the timeout, or answers an error, is named.

Answers stream: :meth:`Samplers.ask` returns once every answer has started, and each answer's
records are read as the caller iterates them (the merge holds only the newest packetLimit), so the
operator's memory is bounded by the capture's packetLimit, not by the number of nodes. Each call
runs its own event loop in the calling thread (Kopf's handler thread), kept until the last
streaming answer is closed.

Each sampler's serving certificate is issued for its node's address by the chart's CA; the operator
verifies it against that CA (``KPCAP_SAMPLER_CA_FILE``), so its token only goes to a real sampler.
Without a CA file the certificates are self-signed and not verified: encrypted, not authenticated
(what a man in the middle could learn is the audience-bound token, valid for minutes and only
towards samplers).
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import threading
import time
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, TypeVar

import aiohttp

from kpcap.model import CaptureSpec
from kpcap.pcap import GLOBAL_HEADER_SIZE, PcapFormatError, PcapRecords
from kpcap.sampleprotocol import (
    MAX_ANSWER_BYTES,
    QUERY_MEDIA_TYPE,
    SAMPLES_PATH,
    SampleQuery,
    encode_query,
    error_message,
)

log = logging.getLogger(__name__)

TOKEN_SECONDS: Final = 600
_ERROR_BODY_BYTES: Final = 4096
T = TypeVar("T")


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


# --- one call: its loop, its session, its answers -----------------------------------------------


class _Call:
    """The event loop and HTTP session of one :meth:`Samplers.ask`, open while an answer streams."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.streaming = 0
        self.session: aiohttp.ClientSession | None = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    async def open_session(self) -> aiohttp.ClientSession:
        # One connection per request, none kept: each sampler is asked once per capture.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None),
            auto_decompress=False,
        )
        return self.session

    def release(self) -> None:
        """One streaming answer is closed; the last one closes the session and the loop."""
        self.streaming -= 1
        if self.streaming <= 0:
            self.finish()

    def finish(self) -> None:
        if self.loop.is_closed():
            return
        if self.session is not None:
            self.run(self.session.close())
        self.loop.close()


@dataclass(slots=True)
class _Started:
    """An answer whose status was 200 and whose first bytes (the PCAP header) are in."""

    node: str
    response: aiohttp.ClientResponse
    prefix: bytes
    seconds: float


def _connection_error(err: BaseException) -> str:
    if isinstance(err, aiohttp.ClientConnectorError) and not isinstance(
        err, aiohttp.ClientConnectorCertificateError | aiohttp.ClientConnectorSSLError
    ):
        number = err.os_error.errno
        if number:
            return f"[Errno {number}] {os.strerror(number)}"
    return str(err) or type(err).__name__


async def _start(
    session: aiohttp.ClientSession,
    *,
    node: str,
    address: str,
    port: int,
    body: bytes,
    token: str,
    tls: ssl.SSLContext,
) -> _Started | SamplerAnswer:
    """Send the query; return once the answer's status and PCAP header are in (the body streams)."""
    started = time.monotonic()
    host = f"[{address}]" if ":" in address else address
    try:
        response = await session.post(
            f"https://{host}:{port}{SAMPLES_PATH}",
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": QUERY_MEDIA_TYPE},
            ssl=tls,
        )
        if response.status != 200:
            data = await response.content.read(_ERROR_BODY_BYTES)
            response.close()
            reason = error_message(data)
            return SamplerAnswer(
                node, None, f"sampler answered {response.status}: {reason}", time.monotonic() - started
            )
        prefix = bytearray()
        try:
            while len(prefix) < GLOBAL_HEADER_SIZE:
                chunk = await response.content.readany()
                if not chunk:
                    break
                prefix += chunk
        except aiohttp.ClientPayloadError:
            pass  # a body cut inside its header: the PCAP check names it
    except (aiohttp.ClientError, OSError) as err:
        return SamplerAnswer(node, None, f"sampler at {address}:{port}: {_connection_error(err)}", 0.0)
    return _Started(node, response, bytes(prefix), time.monotonic() - started)


def _body(
    call: _Call, started: _Started, *, cut: list[str], deadline: float, timeout: float
) -> Iterator[bytes]:
    """The answer's body in chunks, ending (and saying why in ``cut``) at the deadline, on a
    transport error or beyond MAX_ANSWER_BYTES."""
    response = started.response
    received = len(started.prefix)
    if started.prefix:
        yield started.prefix

    def ended_early(err: BaseException | None) -> None:
        expected = response.content_length
        if expected is not None and received < expected:
            cut.append(f"answer cut short: ended {expected - received} bytes early")
        elif err is not None:
            cut.append(f"answer cut short: {err!r}")

    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            cut.append(f"answer not complete within {timeout:g} s")
            return
        try:
            chunk = call.run(asyncio.wait_for(response.content.readany(), remaining))
        except TimeoutError:
            cut.append(f"answer not complete within {timeout:g} s")
            return
        except (aiohttp.ClientError, OSError) as err:
            ended_early(err)
            return
        if not chunk:
            ended_early(None)
            return
        received += len(chunk)
        if received > MAX_ANSWER_BYTES:
            cut.append(f"answer larger than {MAX_ANSWER_BYTES} bytes")
            return
        yield chunk


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
        """One answer per target node, in the order given, each started within ``timeout`` seconds.
        Blocking (call it from a thread with no running event loop); close every answer."""
        deadline = time.monotonic() + self._timeout
        addresses = sampler_addresses(self._list_pods())
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
            query = SampleQuery(spec=spec, since_ns=since_ns, until_ns=until_ns)
            answers.update(
                self._ask_all(
                    {node: addresses[node] for node in asked},
                    body=encode_query(query),
                    token=token,
                    tls=tls,
                    deadline=deadline,
                )
            )
        return [answers[node] for node in targets]

    def _ask_all(
        self, addresses: Mapping[str, str], *, body: bytes, token: str, tls: ssl.SSLContext, deadline: float
    ) -> dict[str, SamplerAnswer]:
        call = _Call()
        try:
            started = call.run(
                self._start_all(call, addresses, body=body, token=token, tls=tls, deadline=deadline)
            )
        except BaseException:
            call.finish()
            raise
        answers: dict[str, SamplerAnswer] = {}
        for node, outcome in started.items():
            if isinstance(outcome, SamplerAnswer):
                answers[node] = outcome
                continue
            answer = SamplerAnswer(node, None, None, outcome.seconds)
            try:
                # The body gets as long again as the answer had to start.
                answer.records = PcapRecords(
                    _body(
                        call,
                        outcome,
                        cut=answer.cut_short,
                        deadline=deadline + self._timeout,
                        timeout=2 * self._timeout,
                    )
                )
            except PcapFormatError as err:
                outcome.response.close()
                answers[node] = SamplerAnswer(
                    node, None, f"sampler answered an unreadable PCAP: {err}", outcome.seconds
                )
                continue
            call.streaming += 1
            answer.close = _closer(call, outcome.response)
            answers[node] = answer
        if call.streaming == 0:
            call.finish()
        return answers

    async def _start_all(
        self,
        call: _Call,
        addresses: Mapping[str, str],
        *,
        body: bytes,
        token: str,
        tls: ssl.SSLContext,
        deadline: float,
    ) -> dict[str, _Started | SamplerAnswer]:
        session = await call.open_session()
        tasks = {
            node: asyncio.ensure_future(
                _start(session, node=node, address=address, port=self._port, body=body, token=token, tls=tls)
            )
            for node, address in addresses.items()
        }
        if tasks:
            await asyncio.wait(tasks.values(), timeout=max(0.0, deadline - time.monotonic()))
        outcomes: dict[str, _Started | SamplerAnswer] = {}
        for node, task in tasks.items():
            if task.done():
                outcomes[node] = task.result()
            else:
                task.cancel()  # its connection is closed unread
                outcomes[node] = SamplerAnswer(
                    node, None, f"sampler did not answer within {self._timeout:g} s", self._timeout
                )
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        return outcomes

    def close(self) -> None:
        """Nothing is held between calls (each call's connections go with its answers)."""


def _closer(call: _Call, response: aiohttp.ClientResponse) -> Callable[[], None]:
    closed = False

    def close() -> None:
        nonlocal closed
        if closed:
            return
        closed = True
        response.close()
        call.release()

    return close
