"""The process kubelet: keeps one simulated Node Ready and runs its pods as local processes.

Runs inside the node's network namespace (``ip netns exec``), so every container it starts has
hostNetwork semantics: it sees the node's interfaces and address. It authenticates as
``system:node:<name>``, so the Node authoriser and NodeRestriction limit it as they limit a real
kubelet (its own Node and Lease, pods bound to it, their Secrets, ConfigMaps and tokens).

What it does: registers the Node (labels, taints), renews its Lease and Ready condition, watches
pods bound to the node, prepares volumes (emptyDir, Secret, ConfigMap, downward API, hostPath and a
ServiceAccount token from the TokenRequest API), starts containers whose image it knows, restarts
them per restartPolicy with back-off, reports pod status, and on deletion sends SIGTERM, then
SIGKILL after the grace period, then removes the pod. Images it does not know leave the pod Pending
with reason ``ImageNotKnown``. Each container's output goes to ``<pod dir>/<container>.log``.
This module keeps the Node (registration, status, Lease) and the pod watch; each pod is run by a
``pod_worker.PodWorker``, each of its containers by a ``pod_container.Container``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException

from kpcap.kubeapi import status_time
from kpcap_localcluster.pod_worker import PodWorker
from kpcap_localcluster.podspec import Json

log = logging.getLogger("kubelet")

LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 5.0
KUBELET_VERSION = "v1.20.2-kpcap-process"


def now_micro() -> str:
    # The Lease's renewTime is a MicroTime: the apiserver wants the microseconds (status_time's
    # whole seconds are for metav1.Time fields).
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def ready_node_status(
    *, name: str, address: str, kubelet_version: str, runtime: str, os_image: str, kernel: str, boot_id: str
) -> Json:
    """A Ready node's ``status`` as a kubelet posts it: the process kubelet's and the hollow nodes'."""
    now = status_time()

    def cond(kind: str, status: str, reason: str) -> Json:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": reason,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    capacity = {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"}
    return {
        "conditions": [
            cond("Ready", "True", "KubeletReady"),
            cond("MemoryPressure", "False", "KubeletHasSufficientMemory"),
            cond("DiskPressure", "False", "KubeletHasNoDiskPressure"),
            cond("PIDPressure", "False", "KubeletHasSufficientPID"),
        ],
        "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
        "capacity": capacity,
        "allocatable": capacity,
        "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
        "nodeInfo": {
            "kubeletVersion": kubelet_version,
            "kubeProxyVersion": kubelet_version,
            "operatingSystem": "linux",
            "architecture": "amd64",
            "containerRuntimeVersion": runtime,
            "osImage": os_image,
            "kernelVersion": kernel,
            "machineID": name,
            "systemUUID": name,
            "bootID": boot_id,
        },
    }


@dataclass(frozen=True, slots=True)
class KubeletConfig:
    node_name: str
    node_ip: str
    kubeconfig: str
    state_dir: str
    api_host: str
    api_port: int
    labels: Mapping[str, str]
    taints: tuple[Json, ...]
    images: Mapping[str, tuple[str, ...]]
    run_id: str
    mountpoints_log: str
    restart_backoff_base: float = 1.0
    restart_backoff_max: float = 16.0

    @staticmethod
    def load(path: Path) -> KubeletConfig:
        raw = json.loads(path.read_text())
        raw["taints"] = tuple(raw.get("taints", ()))
        raw["images"] = {k: tuple(v) for k, v in raw["images"].items()}
        return KubeletConfig(**raw)


class Api:
    """The kubelet's view of the apiserver (as system:node:<name>)."""

    def __init__(self, cfg: KubeletConfig) -> None:
        api_client = config.new_client_from_config(config_file=cfg.kubeconfig)
        self.client = api_client
        self.core = client.CoreV1Api(api_client)
        self.coordination = client.CoordinationV1Api(api_client)

    def to_json(self, obj: Any) -> Json:
        data: Json = self.client.sanitize_for_serialization(obj)
        return data


class Kubelet:
    def __init__(self, cfg: KubeletConfig) -> None:
        self.cfg = cfg
        self.api = Api(cfg)
        self.workers: dict[str, PodWorker] = {}
        self.stopping = threading.Event()

    def register_node(self) -> None:
        labels = {
            "kubernetes.io/hostname": self.cfg.node_name,
            "kubernetes.io/os": "linux",
            "kubernetes.io/arch": "amd64",
            **self.cfg.labels,
        }
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {"name": self.cfg.node_name, "labels": labels},
            "spec": {"taints": list(self.cfg.taints)} if self.cfg.taints else {},
        }
        try:
            self.api.core.create_node(body)
        except ApiException as err:
            if err.status != 409:
                raise
        self.post_node_status()

    def post_node_status(self) -> None:
        status = ready_node_status(
            name=self.cfg.node_name,
            address=self.cfg.node_ip,
            kubelet_version=KUBELET_VERSION,
            runtime="process://local",
            os_image="kpcap process kubelet",
            kernel=os.uname().release,
            boot_id=self.cfg.run_id,
        )
        self.api.core.patch_node_status(self.cfg.node_name, {"status": status})

    def renew_lease(self) -> None:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.cfg.node_name, "namespace": "kube-node-lease"},
            "spec": {
                "holderIdentity": self.cfg.node_name,
                "leaseDurationSeconds": LEASE_SECONDS,
                "renewTime": now_micro(),
            },
        }
        try:
            self.api.coordination.patch_namespaced_lease(self.cfg.node_name, "kube-node-lease", body)
        except ApiException as err:
            if err.status != 404:
                raise
            self.api.coordination.create_namespaced_lease("kube-node-lease", body)

    def heartbeat_loop(self) -> None:
        beats = 0
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.renew_lease()
                beats += 1
                if beats % 4 == 0:
                    self.post_node_status()
            except Exception:
                log.exception("heartbeat failed")

    def on_pod(self, event_type: str, pod: Json) -> None:
        uid = pod["metadata"]["uid"]
        worker = self.workers.get(uid)
        if event_type == "DELETED":
            if worker is not None:
                worker.gone.set()
            return
        if worker is None or (not worker.is_alive() and worker.gone.is_set()):
            if pod["metadata"].get("deletionTimestamp") and worker is None:
                # Never started here: nothing to stop, finish the deletion.
                worker = PodWorker(self, pod)
                worker.terminate_at = time.monotonic()
                worker._delete_pod()
                return
            if worker is not None:
                return
            worker = PodWorker(self, pod)
            self.workers[uid] = worker
            worker.start()
            return
        worker.pod["metadata"] = pod["metadata"]
        if pod["metadata"].get("deletionTimestamp") and worker.terminate_at is None:
            worker.terminate_at = time.monotonic()

    def watch_pods(self) -> None:
        selector = f"spec.nodeName={self.cfg.node_name}"
        while not self.stopping.is_set():
            try:
                listing = self.api.core.list_pod_for_all_namespaces(field_selector=selector)
                for pod in listing.items:
                    self.on_pod("ADDED", self.api.to_json(pod))
                stream = watch.Watch().stream(
                    self.api.core.list_pod_for_all_namespaces,
                    field_selector=selector,
                    resource_version=listing.metadata.resource_version,
                    timeout_seconds=60,
                    _request_timeout=90,
                )
                for event in stream:
                    if self.stopping.is_set():
                        return
                    self.on_pod(event["type"], self.api.to_json(event["object"]))
            except Exception:
                if not self.stopping.is_set():
                    log.warning("pod watch interrupted, relisting", exc_info=True)
                    time.sleep(1)

    def shutdown(self) -> None:
        self.stopping.set()
        threads = []
        for worker in list(self.workers.values()):
            t = threading.Thread(target=worker.kill_now)
            t.start()
            threads.append(t)
        for t in threads:
            t.join(timeout=10)
        for worker in list(self.workers.values()):
            worker.cleanup()

    def run(self) -> None:
        self.register_node()
        self.renew_lease()
        threading.Thread(target=self.heartbeat_loop, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.watch_pods, name="pod-watch", daemon=True).start()
        log.info("node %s ready at %s", self.cfg.node_name, self.cfg.node_ip)
        self.stopping.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description="kpcap process kubelet (one simulated node)")
    parser.add_argument("config", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    cfg = KubeletConfig.load(args.config)
    kubelet = Kubelet(cfg)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal %d: stopping every container, then exiting", signum)
        kubelet.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        kubelet.run()
    finally:
        kubelet.shutdown()
        shutil.rmtree(Path(cfg.state_dir) / "tmp", ignore_errors=True)


if __name__ == "__main__":
    main()
