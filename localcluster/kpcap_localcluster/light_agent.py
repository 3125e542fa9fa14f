"""A light capture agent: a capture DaemonSet pod on a hollow node, run in the hollow process.

It reports as the real agent does and through the real agent's code (``AgentConfig.from_env`` on
the pod's environment, ``kpcap_agent.report.CaptureApi`` with the pod's own ServiceAccount token,
from the TokenRequest API as a kubelet gets it, so its writes are the agent's in the audit log):
``running``, progress while the time limit runs (or until its pod is deleted or the capture is
stopped), ``uploading``, then ``done`` with the URI of a small valid PCAP (a few synthetic UDP
records, at most the packet limit) it uploaded, or ``failed``. Nothing is captured. Every wait is a
timer and every call a task on the hollow process's pool; one store serves each destination.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kpcap.destinations import object_key
from kpcap.kubeapi import request_json
from kpcap.model import TERMINAL, NodePhase
from kpcap.pcap import DEFAULT_SNAPLEN, Record, pcap_bytes
from kpcap.storage import StorageError, open_store
from kpcap_localcluster import podspec
from kpcap_localcluster.hollow_runtime import Json, Timer, Timers, token_view

if TYPE_CHECKING:
    from kpcap.destinations import Destination
    from kpcap.storage.base import ObjectStore
    from kpcap_agent.agent_config import AgentConfig
    from kpcap_agent.report import CaptureApi

log = logging.getLogger("hollow.agent")

AGENT_IMAGE = "kpcap-agent"
SYNTHETIC_PACKETS = 4
TOKEN_SECONDS = 3600
# The environment the storage SDKs read their credentials from (the pod's, from its Secret).
STORAGE_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION")


def is_capture_agent(pod: Json) -> bool:
    """A capture DaemonSet's pod: the agent image, run as ``capture`` (its default mode)."""
    containers = pod["spec"]["containers"]
    if len(containers) != 1 or podspec.image_name(containers[0].get("image", "")) != AGENT_IMAGE:
        return False
    args = containers[0].get("args") or ["capture"]
    return bool(args) and args[0] == "capture"


def synthetic_pcap(*, node_address: str, count: int, snaplen: int = DEFAULT_SNAPLEN) -> bytes:
    """A classic PCAP of ``count`` UDP/IPv4 datagrams from ``node_address`` (a valid file to upload)."""
    src = bytes(int(p) for p in node_address.split("."))
    now = time.time_ns()
    records = []
    for index in range(count):
        payload = f"kpcap light agent {index}".encode()
        udp = struct.pack("!HHHH", 40000, 7777, 8 + len(payload), 0) + payload
        header = struct.pack(
            "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), index, 0, 64, 17, 0, src, bytes([198, 18, 255, 1])
        )
        header = header[:10] + struct.pack("!H", _ip_checksum(header)) + header[12:]
        frame = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + header + udp
        stamp = now + index * 1000
        records.append(
            Record(
                seconds=stamp // 10**9,
                nanoseconds=stamp % 10**9,
                data=frame[:snaplen],
                original_length=len(frame),
            )
        )
    return pcap_bytes(records, snaplen=snaplen)


def _ip_checksum(header: bytes) -> int:
    total: int = sum(struct.unpack(f"!{len(header) // 2}H", header))
    while total > 0xFFFF:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


class LightAgents:
    """What every light agent of the process shares: the API connection pool, the timers, the stores."""

    def __init__(self, *, shared: client.ApiClient, timers: Timers) -> None:
        self.shared, self.timers = shared, timers
        self._stores: dict[tuple[Destination, tuple[tuple[str, str], ...]], ObjectStore] = {}
        self._stores_lock = threading.Lock()

    def start(
        self, *, pod: Json, node_api: client.ApiClient, address: str, on_end: Callable[[], None]
    ) -> LightAgent:
        agent = LightAgent(agents=self, pod=pod, node_api=node_api, address=address, on_end=on_end)
        self.timers.submit(agent.begin, what=f"light agent of {pod['spec']['nodeName']}")
        return agent

    def store(self, destination: Destination, env: Mapping[str, str]) -> ObjectStore:
        """One store per destination and credentials (a boto3 client costs ~50 ms of CPU)."""
        credentials = tuple((k, env[k]) for k in STORAGE_ENV if k in env)
        key = (destination, credentials)
        with self._stores_lock:
            found = self._stores.get(key)
            if found is None:
                with _environment(dict(credentials)):
                    found = open_store(destination, gcs_emulator_endpoint=env.get("STORAGE_EMULATOR_HOST"))
                self._stores[key] = found
            return found


@contextlib.contextmanager
def _environment(values: Mapping[str, str]) -> Iterator[None]:
    # The SDKs read credentials from the environment when a client is made; the caller's lock keeps
    # this process-wide change to one store's construction.
    saved = {k: os.environ.get(k) for k in STORAGE_ENV}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class LightAgent:
    """One node's part of a full capture, as a few timed steps on the shared pool."""

    def __init__(
        self,
        *,
        agents: LightAgents,
        pod: Json,
        node_api: client.ApiClient,
        address: str,
        on_end: Callable[[], None],
    ) -> None:
        self.agents, self.pod, self.node_api, self.on_end = agents, pod, node_api, on_end
        self.node: str = pod["spec"]["nodeName"]
        self.address = address
        self.ended = False
        self._finishing = False
        self._lock = threading.Lock()
        self._timers: list[Timer] = []
        self._started = 0.0
        self.cfg: AgentConfig | None = None
        self.api: CaptureApi | None = None
        self.env: dict[str, str] = {}

    # --- steps ----------------------------------------------------------------------------------

    def begin(self) -> None:
        from kpcap.kubeapi import ClientTransport
        from kpcap_agent.agent_config import AgentConfig
        from kpcap_agent.report import CaptureApi, CaptureNotFoundError, NodeReport

        if self._finishing:
            return  # its pod was deleted before it began
        try:
            token = self._service_account_token()
            self.env = self._environment()
            self.cfg = cfg = AgentConfig.from_env(self.env)
            self.api = api = CaptureApi(
                ClientTransport(token_view(self.agents.shared, token)),
                namespace=cfg.namespace,
                name=cfg.name,
                node=cfg.node,
            )
            try:
                body = api.read()
            except CaptureNotFoundError:
                self._end()
                return
            if (body.get("status") or {}).get("status") in TERMINAL:
                self._end()
                return
            api.report(NodeReport(phase=NodePhase.RUNNING))
        except Exception as err:  # noqa: BLE001 - reported as the node's failure, as the agent's main does
            self._fail(err)
            return
        self._started = time.monotonic()
        timers = self.agents.timers
        progress = _seconds(self.env, "KPCAP_PROGRESS_INTERVAL_SECONDS", 2.0)
        poll = _seconds(self.env, "KPCAP_STOP_POLL_SECONDS", 1.0)
        with self._lock:
            self._timers.append(timers.after(cfg.spec.time_limit, lambda: self.stop("time limit")))
            if progress < cfg.spec.time_limit:
                self._every(progress, self._progress)
            self._every(poll, self._poll_stop)

    def _every(self, interval: float, action: Callable[[], None]) -> None:
        def tick() -> None:
            if self._finishing:
                return
            action()
            with self._lock:
                if not self._finishing:
                    self._timers.append(self.agents.timers.after(interval, tick))

        self._timers.append(self.agents.timers.after(interval, tick))

    def _packets(self) -> int:
        assert self.cfg is not None  # noqa: S101 - set by begin
        count = min(SYNTHETIC_PACKETS, self.cfg.spec.packet_limit)
        share = (time.monotonic() - self._started) / max(1.0, float(self.cfg.spec.time_limit))
        return min(count, int(count * share))

    def _progress(self) -> None:
        from kpcap_agent.report import NodeReport

        assert self.api is not None  # noqa: S101 - set by begin
        packets = self._packets()
        self.api.report(
            NodeReport(phase=NodePhase.RUNNING, packets=packets, bytes=packets * 70),
            moving_from=NodePhase.RUNNING,
        )

    def _poll_stop(self) -> None:
        from kpcap_agent.report import CaptureNotFoundError

        assert self.api is not None  # noqa: S101 - set by begin
        try:
            body = self.api.read()
        except CaptureNotFoundError:
            self.cancel()
            self.on_end()
            return
        if (body.get("spec") or {}).get("stop") or (body.get("status") or {}).get("status") in TERMINAL:
            self.stop("capture stopped by request")

    def stop(self, why: str) -> None:
        """End the capture now (time limit, stop, pod deletion): upload, report, end."""
        with self._lock:
            if self._finishing or self.ended:
                return
            self._finishing = True
            for timer in self._timers:
                timer.cancel()
        if self.api is None:
            self._end()  # not begun (or failed before reporting): nothing to upload
            return
        log.info("%s: capture ends (%s)", self.node, why)
        self.agents.timers.submit(self._upload, what=f"upload of {self.node}")

    def _upload(self) -> None:
        from kpcap_agent.agent import begin_upload
        from kpcap_agent.report import NodeReport

        assert self.api is not None  # noqa: S101 - set by begin
        assert self.cfg is not None  # noqa: S101 - set by begin
        spec = self.cfg.spec
        assert spec.destination is not None  # noqa: S101 - checked by AgentConfig.from_env
        count = min(SYNTHETIC_PACKETS, spec.packet_limit)
        data = synthetic_pcap(node_address=self.address, count=count)
        size = len(data)
        try:
            uploading = NodeReport(phase=NodePhase.UPLOADING, packets=count, bytes=size)
            running = NodePhase.RUNNING
            if not begin_upload(cfg=self.cfg, api=self.api, uploading=uploading, moving_from=running):
                self._end()
                return
            key = object_key(spec.destination, capture_id=self.cfg.capture_id, node_name=self.node)
            try:
                uploaded = self.agents.store(spec.destination, self.env).put_bytes(key=key, data=data)
                final = NodeReport(phase=NodePhase.DONE, packets=count, bytes=size, object_uri=uploaded.uri)
            except StorageError as err:
                final = NodeReport(phase=NodePhase.FAILED, packets=count, bytes=size, error=str(err))
            self.api.report(final)
        except Exception as err:  # noqa: BLE001 - reported as the node's failure, as the agent's main does
            self._fail(err)
            return
        self._end()

    def cancel(self) -> None:
        """The pod is gone: stop without reporting."""
        with self._lock:
            self._finishing = True
            self.ended = True
            for timer in self._timers:
                timer.cancel()

    def _end(self) -> None:
        with self._lock:
            self._finishing = True
            self.ended = True
        self.on_end()

    def _fail(self, err: Exception) -> None:
        from kpcap_agent.report import NodeReport

        log.warning("light agent of %s failed: %s", self.node, err, exc_info=True)
        if self.api is not None:
            with contextlib.suppress(Exception):
                self.api.report(
                    NodeReport(
                        phase=NodePhase.FAILED, error=f"light agent error: {type(err).__name__}: {err}"
                    )
                )
        self._end()

    # --- what a kubelet gives the container -----------------------------------------------------

    def _service_account_token(self) -> str:
        meta, spec = self.pod["metadata"], self.pod["spec"]
        account = spec.get("serviceAccountName") or "default"
        body = {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "spec": {
                "audiences": [],
                "expirationSeconds": TOKEN_SECONDS,
                "boundObjectRef": {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "name": meta["name"],
                    "uid": meta["uid"],
                },
            },
        }
        path = f"/api/v1/namespaces/{meta['namespace']}/serviceaccounts/{account}/token"
        # The Node authoriser learns of a freshly bound pod (and so of its token) a moment later.
        for attempt in range(6):
            try:
                token: str = request_json(self.node_api, "POST", path, body=body)["status"]["token"]
            except ApiException as err:
                if err.status != 403 or attempt == 5:
                    raise
                time.sleep(0.5 * 2**attempt)
            else:
                return token
        raise AssertionError("unreachable")  # pragma: no cover

    def _environment(self) -> dict[str, str]:
        namespace = self.pod["metadata"]["namespace"]

        def lookup(kind: str, name: str) -> dict[str, str] | None:
            plural = "secrets" if kind == "Secret" else "configmaps"
            try:
                found = request_json(self.node_api, "GET", f"/api/v1/namespaces/{namespace}/{plural}/{name}")
            except ApiException as err:
                if err.status == 404:
                    return None
                raise
            data: dict[str, Any] = found.get("data") or {}
            if kind == "Secret":
                return {k: base64.b64decode(v).decode() for k, v in data.items()}
            return {k: str(v) for k, v in data.items()}

        env: dict[str, str] = podspec.resolve_env(
            container=self.pod["spec"]["containers"][0], pod=self.pod, lookup=lookup, base={}
        )
        return env


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        return max(0.5, float(env.get(name, default)))
    except ValueError:
        return default
