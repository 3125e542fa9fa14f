"""Hollow nodes: many Nodes kept Ready by one process, for control-plane scale (as kubemark's are).

    python -m kpcap_localcluster.hollow <config.json>     (started by ``LocalCluster``)

Each node authenticates as ``system:node:<name>`` with a token of its own, so the Node authoriser
and NodeRestriction limit it as they limit the process kubelet; all of them share one connection
pool (``hollow_runtime``). A node is created with its status (Ready=True, as a kubelet posts it)
and keeps its Lease in ``kube-node-lease`` renewed every ``lease_interval`` seconds, renewals
spread over the interval (the controller-manager's node-monitor grace period is raised to match in
light mode). One watch of all bound pods serves every node: a pod whose images are known is
reported Running and Ready (nothing runs, except a capture agent pod, which runs in-process as a
``light_agent.LightAgent``); an unknown image stays Pending with reason ``ImageNotKnown``; a
terminating pod is deleted (grace 0) once its container has ended.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from kpcap.kubeapi import request_json, status_time
from kpcap_localcluster import podspec
from kpcap_localcluster.hollow_runtime import (
    STRATEGIC_MERGE_PATCH,
    Json,
    Timers,
    shared_client,
    token_view,
)
from kpcap_localcluster.kubelet import now_micro, ready_node_status
from kpcap_localcluster.light_agent import LightAgent, LightAgents, is_capture_agent

log = logging.getLogger("hollow")

VERSION = "v1.20.2-kpcap-hollow"


@dataclass(frozen=True, slots=True, kw_only=True)
class HollowNodeSpec:
    name: str
    token: str
    address: str
    labels: Mapping[str, str]


@dataclass(frozen=True, slots=True, kw_only=True)
class HollowConfig:
    server: str
    ca_file: str
    run_id: str
    images: Mapping[str, tuple[str, ...]]
    nodes: tuple[HollowNodeSpec, ...]
    lease_interval: float
    lease_seconds: int
    workers: int = 32

    @staticmethod
    def load(path: Path) -> HollowConfig:
        raw = json.loads(path.read_text())
        raw["images"] = {k: tuple(v) for k, v in raw["images"].items()}
        raw["nodes"] = tuple(HollowNodeSpec(**n) for n in raw["nodes"])
        return HollowConfig(**raw)


def node_body(spec: HollowNodeSpec, *, boot_id: str) -> Json:
    """The Node as registered, status included (a Node's create keeps the status it is given)."""
    labels = {
        "kubernetes.io/hostname": spec.name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        **spec.labels,
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": spec.name, "labels": labels},
        "spec": {},
        "status": ready_node_status(
            name=spec.name,
            address=spec.address,
            kubelet_version=VERSION,
            runtime="hollow://local",
            os_image="kpcap hollow node",
            kernel="hollow",
            boot_id=boot_id,
        ),
    }


def pod_status(*, pod: Json, address: str, running: bool, reason: str = "", message: str = "") -> Json:
    """A pod's status as a kubelet reports it: Running and Ready, or Pending and waiting (``reason``)."""
    now = status_time()
    containers = pod["spec"]["containers"]

    def cond(kind: str, ok: bool) -> Json:
        return {"type": kind, "status": "True" if ok else "False", "lastTransitionTime": now}

    state: Json = (
        {"running": {"startedAt": now}} if running else {"waiting": {"reason": reason, "message": message}}
    )
    return {
        "phase": "Running" if running else "Pending",
        "hostIP": address,
        "podIP": address,
        "podIPs": [{"ip": address}],
        "startTime": now,
        "conditions": [
            cond("PodScheduled", True),
            cond("Initialized", running),
            cond("ContainersReady", running),
            cond("Ready", running),
        ],
        "containerStatuses": [
            {
                "name": c["name"],
                "image": c.get("image", ""),
                "imageID": "",
                "ready": running,
                "started": running,
                "restartCount": 0,
                "state": state,
                "lastState": {},
            }
            for c in containers
        ],
        "reason": None if running else reason,
        "message": None if running else message,
    }


def first_unknown_image(pod: Json, images: Mapping[str, tuple[str, ...]]) -> str | None:
    """The message about the pod's first container whose image the cluster cannot run, or None."""
    spec = pod["spec"]
    for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
        try:
            podspec.resolve_argv(container=container, images=images)
        except podspec.PodSpecError as err:
            return str(err)
    return None


@dataclass(slots=True)
class HollowNode:
    spec: HollowNodeSpec
    api: client.ApiClient
    lease_created: bool = False


@dataclass(slots=True)
class HollowPod:
    uid: str
    node: HollowNode
    pod: Json
    terminating: bool = False
    agent: LightAgent | None = None
    deleted: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def path(self) -> str:
        meta = self.pod["metadata"]
        return f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}"


class Hollow:
    def __init__(self, cfg: HollowConfig) -> None:
        self.cfg = cfg
        self.shared = shared_client(server=cfg.server, ca_file=cfg.ca_file, pool_size=cfg.workers + 8)
        self.timers = Timers(workers=cfg.workers)
        self.nodes = {n.name: HollowNode(spec=n, api=token_view(self.shared, n.token)) for n in cfg.nodes}
        self.pods: dict[str, HollowPod] = {}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.agents = LightAgents(shared=self.shared, timers=self.timers)

    # --- nodes ----------------------------------------------------------------------------------

    def register(self, node: HollowNode) -> None:
        try:
            body = node_body(node.spec, boot_id=self.cfg.run_id)
            request_json(node.api, "POST", "/api/v1/nodes", body=body)
        except ApiException as err:
            if err.status != 409:
                raise
            status = node_body(node.spec, boot_id=self.cfg.run_id)["status"]
            request_json(
                node.api,
                "PATCH",
                f"/api/v1/nodes/{node.spec.name}/status",
                body={"status": status},
                content_type=STRATEGIC_MERGE_PATCH,
            )

    def renew_lease(self, node: HollowNode) -> None:
        if self.stopping.is_set():
            return
        name = node.spec.name
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": name,
                "leaseDurationSeconds": self.cfg.lease_seconds,
                "renewTime": now_micro(),
            },
        }
        next_in = self.cfg.lease_interval
        try:
            if node.lease_created:
                request_json(
                    node.api,
                    "PATCH",
                    f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{name}",
                    body={"spec": body["spec"]},
                    content_type="application/merge-patch+json",
                )
            else:
                request_json(
                    node.api,
                    "POST",
                    "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases",
                    body=body,
                )
                node.lease_created = True
        except ApiException as err:
            if err.status == 409:
                node.lease_created, next_in = True, 0.0  # it exists (a restarted process): patch it now
            else:
                log.warning("lease of %s not renewed: %s %s", name, err.status, err.reason)
        except Exception as err:  # noqa: BLE001 - a dropped connection: the next renewal retries
            log.warning("lease of %s not renewed: %s", name, err)
        self.timers.after(next_in, lambda: self.renew_lease(node), what=f"lease of {name}")

    def start_nodes(self) -> None:
        done = threading.Semaphore(0)
        nodes = list(self.nodes.values())

        def register(node: HollowNode) -> None:
            # Retried: thousands of creates at once can meet a dropped connection or a 429.
            try:
                for attempt in range(8):
                    try:
                        self.register(node)
                    except Exception as err:  # noqa: BLE001 - retried, then logged
                        log.warning(
                            "registration of %s failed (try %d): %s", node.spec.name, attempt + 1, err
                        )
                        time.sleep(min(8.0, 0.5 * 2**attempt))
                    else:
                        return
            finally:
                done.release()

        for node in nodes:
            self.timers.submit(lambda node=node: register(node), what=f"registration of {node.spec.name}")  # type: ignore[misc]
        for _ in nodes:
            done.acquire()
        # First renewals (the Lease's creation) spread over one interval, as later ones are.
        for index, node in enumerate(nodes):
            delay = self.cfg.lease_interval * index / len(nodes)
            self.timers.after(delay, lambda node=node: self.renew_lease(node), what="lease")  # type: ignore[misc]
        log.info("%d hollow nodes registered", len(nodes))

    # --- pods -----------------------------------------------------------------------------------

    def on_pod(self, event_type: str, pod: Json) -> None:
        node = self.nodes.get((pod.get("spec") or {}).get("nodeName") or "")
        if node is None:
            return
        uid = pod["metadata"]["uid"]
        with self.lock:
            if event_type == "DELETED":
                gone = self.pods.pop(uid, None)
                if gone is not None and gone.agent is not None:
                    gone.agent.cancel()
                return
            state = self.pods.get(uid)
            terminating = bool(pod["metadata"].get("deletionTimestamp"))
            if state is None:
                state = HollowPod(uid=uid, node=node, pod=pod, terminating=terminating)
                self.pods[uid] = state
                if terminating:
                    self.timers.submit(lambda: self.delete_pod(state), what="pod deletion")
                else:
                    self.timers.submit(lambda: self.start_pod(state), what="pod start")
                return
            state.pod["metadata"] = pod["metadata"]
            if not terminating or state.terminating:
                return
            state.terminating = True
        agent = state.agent
        if agent is not None and not agent.ended:
            agent.stop("its pod is being deleted")  # it deletes the pod once it has reported
        else:
            self.timers.submit(lambda: self.delete_pod(state), what="pod deletion")

    def start_pod(self, state: HollowPod) -> None:
        unknown = first_unknown_image(state.pod, self.cfg.images)
        if unknown is not None:
            log.warning("%s waiting: ImageNotKnown: %s", state.path, unknown)
            self.patch_status(state, running=False, reason="ImageNotKnown", message=unknown)
            return
        self.patch_status(state, running=True)
        if is_capture_agent(state.pod):
            with self.lock:
                if state.terminating or state.deleted:
                    self.timers.submit(lambda: self.delete_pod(state), what="pod deletion")
                    return
                state.agent = self.agents.start(
                    pod=state.pod,
                    node_api=state.node.api,
                    address=state.node.spec.address,
                    on_end=lambda: self._agent_ended(state),
                )

    def _agent_ended(self, state: HollowPod) -> None:
        if state.terminating:
            self.delete_pod(state)

    def patch_status(self, state: HollowPod, *, running: bool, reason: str = "", message: str = "") -> None:
        status = pod_status(
            pod=state.pod, address=state.node.spec.address, running=running, reason=reason, message=message
        )
        try:
            request_json(
                state.node.api,
                "PATCH",
                f"{state.path}/status",
                body={"status": status},
                content_type=STRATEGIC_MERGE_PATCH,
            )
        except ApiException as err:
            if err.status != 404:
                log.warning("status of %s not reported: %s %s", state.path, err.status, err.reason)

    def delete_pod(self, state: HollowPod) -> None:
        with state.lock:
            if state.deleted:
                return
            state.deleted = True
        try:
            request_json(
                state.node.api,
                "DELETE",
                state.path,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": state.uid}},
            )
        except ApiException as err:
            if err.status not in (404, 409):
                log.warning("%s not deleted: %s %s", state.path, err.status, err.reason)

    def watch_pods(self) -> None:
        """One list-then-watch of every bound pod, for all nodes (as the first node: the Node
        authoriser lets any node read pods)."""
        reader = client.CoreV1Api(next(iter(self.nodes.values())).api)
        selector = "spec.nodeName!="
        while not self.stopping.is_set():
            try:
                listing = reader.list_pod_for_all_namespaces(field_selector=selector, _preload_content=False)
                raw: dict[str, Any] = json.loads(listing.data)
                items = raw.get("items") or []
                listed = {item["metadata"]["uid"] for item in items}
                for gone in [s.pod for uid, s in list(self.pods.items()) if uid not in listed]:
                    self.on_pod("DELETED", gone)  # deleted while no watch was open
                for item in items:
                    self.on_pod("ADDED", item)
                stream = watch.Watch().stream(
                    reader.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=raw["metadata"]["resourceVersion"],
                    timeout_seconds=300,
                    _request_timeout=330,
                    deserialize=False,
                )
                for event in stream:
                    if self.stopping.is_set():
                        return
                    obj = event["object"]
                    if isinstance(obj, dict) and obj.get("kind") != "Status":
                        self.on_pod(event["type"], obj)
            except Exception:
                if not self.stopping.is_set():
                    log.warning("pod watch interrupted, relisting", exc_info=True)
                    time.sleep(1)

    def run(self) -> None:
        self.start_nodes()
        threading.Thread(target=self.watch_pods, name="pod-watch", daemon=True).start()
        self.stopping.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="kpcap hollow nodes (many simulated Nodes, one process)")
    parser.add_argument("config", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    # Each request's details would be most of the log at this scale.
    logging.getLogger("kpcap_agent.report").setLevel(logging.WARNING)
    hollow = Hollow(HollowConfig.load(args.config))
    signal.signal(signal.SIGTERM, lambda *_: hollow.stopping.set())
    signal.signal(signal.SIGINT, lambda *_: hollow.stopping.set())
    try:
        hollow.run()
    finally:
        hollow.timers.close()


if __name__ == "__main__":
    main()
