"""A whole local cluster: control plane, simulated nodes and storage servers, started and stopped as one.

    with LocalCluster.start(nodes=default_nodes(3)) as cluster:
        core = kubernetes.client.CoreV1Api(cluster.api_client())
        ...

Teardown is thorough by construction: kubelets stop their containers, the control plane stops,
every namespace and link of the run is deleted, and a sweep kills any process still tagged with the
run id. ``leftovers()`` reports what survived, for the leak test and for ``kpcap-localcluster down``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

from kubernetes import client, config

from kpcap_localcluster import light_nodes as light_nodes_module
from kpcap_localcluster import network, processes
from kpcap_localcluster.binaries import ensure_binaries, tool
from kpcap_localcluster.controlplane import (
    APISERVER_PORT,
    KUBERNETES_SERVICE_IP,
    ControlPlane,
    start_control_plane,
    write_kubeconfig,
)
from kpcap_localcluster.pki import Identity, create_pki, new_identity, write_token_file
from kpcap_localcluster.processes import ManagedProcess, spawn
from kpcap_localcluster.storage import StorageServer, start_gcs, start_s3

log = logging.getLogger(__name__)

ZONE_LABEL = "topology.kubernetes.io/zone"
# Mount points containers had to create on the host, shared by every local cluster on the machine:
# removing one while another cluster's container has a volume there would detach that volume
# (Linux lets rmdir take a mount point that lives in another mount namespace).
MOUNTPOINTS_LOG = Path("/run/kpcap-localcluster/mountpoints.log")

# Images the process kubelet can "run": the last path component of the image, tag dropped.
KNOWN_IMAGES: Mapping[str, tuple[str, ...]] = {
    "kpcap-operator": ("python", "-m", "kpcap_operator"),
    "kpcap-agent": ("python", "-m", "kpcap_agent"),
    "kpcap-testbox": ("python", "-m", "kpcap_localcluster.testbox"),
}


@dataclass(frozen=True, slots=True)
class NodeSpec:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    taints: tuple[Mapping[str, str], ...] = ()


def default_nodes(count: int = 3) -> list[NodeSpec]:
    """``kpcap-node-1..N``; the first two in zone ``colo-a``, the rest in ``colo-b``."""
    return [
        NodeSpec(name=f"kpcap-node-{i}", labels={ZONE_LABEL: "colo-a" if i <= 2 else "colo-b"})
        for i in range(1, count + 1)
    ]


@dataclass(slots=True)
class Node:
    spec: NodeSpec
    net: network.NodeNetwork
    kubelet: ManagedProcess
    state_dir: Path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def address(self) -> str:
        return self.net.address

    @property
    def netns(self) -> str:
        return self.net.netns


def remove_mountpoints_if_idle() -> list[str]:
    """Remove the logged mount points once no local cluster runs; returns those still present."""
    if any(True for _ in processes.processes_of_run(None)):
        return []
    try:
        created = set(MOUNTPOINTS_LOG.read_text().split())
    except FileNotFoundError:
        return []
    for path in sorted(created, key=lambda p: p.count("/"), reverse=True):
        with contextlib.suppress(OSError):
            Path(path).rmdir()  # only if empty: never anything a user put there
    left = sorted(p for p in created if Path(p).exists())
    MOUNTPOINTS_LOG.write_text("".join(f"{p}\n" for p in left))
    return left


@dataclass(slots=True)
class LocalCluster:
    run_id: str
    state_dir: Path
    net: network.ClusterNetwork
    control_plane: ControlPlane | None = None
    nodes: list[Node] = field(default_factory=list)
    s3: StorageServer | None = None
    gcs: StorageServer | None = None
    owns_state_dir: bool = True
    light_nodes: list[str] = field(default_factory=list)  # names of the hollow process's nodes
    hollow: ManagedProcess | None = None
    restart_backoff: float | None = None  # the kubelets' first restart delay; None: theirs (1 s)

    # --- lifecycle ------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        nodes: Sequence[NodeSpec] | None = None,
        storage: bool = True,
        state_dir: Path | None = None,
        build: bool = True,
        timeout: float = 120.0,
        light_nodes: int = 0,
        light_zone: str = light_nodes_module.DEFAULT_ZONE,
        restart_backoff: float | None = None,
    ) -> LocalCluster:
        """``light_nodes``: that many more Nodes (``kpcap-light-<i>`` in ``light_zone``) kept by one
        hollow process (``kpcap_localcluster.hollow``), the control plane sized for them.
        ``restart_backoff``: the process kubelets' first container restart delay (a real kubelet's
        CrashLoopBackOff starts at 10 s; the harness's default is 1 s)."""
        node_specs = list(nodes) if nodes is not None else default_nodes()
        light_names = light_nodes_module.light_node_names(light_nodes)
        binaries = ensure_binaries(build=build)
        run_id = secrets.token_hex(3)
        owns = state_dir is None
        directory = state_dir or Path(tempfile.mkdtemp(prefix=f"kpcap-{run_id}-"))
        directory.mkdir(parents=True, exist_ok=True)
        net = network.create_bridge(run_id=run_id)
        cluster = cls(
            run_id=run_id, state_dir=directory, net=net, owns_state_dir=owns, restart_backoff=restart_backoff
        )
        try:
            cluster._write_state()
            pki = create_pki(
                directory=directory / "pki",
                server_ips=[net.gateway, "127.0.0.1", KUBERNETES_SERVICE_IP],
                server_dns_names=[
                    "localhost",
                    "kubernetes",
                    "kubernetes.default",
                    "kubernetes.default.svc",
                    "kubernetes.default.svc.cluster.local",
                ],
            )
            identities: dict[str, Identity] = {
                "admin": new_identity(user="kpcap-admin", groups=["system:masters"]),
                "kube-controller-manager": new_identity(user="system:kube-controller-manager"),
                "kube-scheduler": new_identity(user="system:kube-scheduler"),
            }
            for spec in node_specs:
                identities[f"node:{spec.name}"] = new_identity(
                    user=f"system:node:{spec.name}", groups=["system:nodes"]
                )
            identities.update(light_nodes_module.light_identities(light_names))
            write_token_file(path=pki.token_file, identities=list(identities.values()))
            started = time.monotonic()
            cluster.control_plane = start_control_plane(
                binaries=binaries,
                pki=pki,
                identities=identities,
                bind_address=net.gateway,
                state_dir=directory,
                run_id=run_id,
                timeout=timeout,
                light=bool(light_names),
            )
            log.info("control plane ready in %.1fs at %s", time.monotonic() - started, net.gateway)
            if storage:
                cluster.s3 = start_s3(host=net.gateway, log_dir=directory / "logs", run_id=run_id)
                cluster.gcs = start_gcs(host=net.gateway, log_dir=directory / "logs", run_id=run_id)
            for index, spec in enumerate(node_specs, start=1):
                cluster.nodes.append(cluster._start_node(index, spec, identities[f"node:{spec.name}"]))
            if light_names:
                cluster.light_nodes = light_names
                cluster.hollow = light_nodes_module.start_hollow(
                    config=light_nodes_module.hollow_config(
                        server=cluster.server,
                        ca_file=pki.ca_cert,
                        run_id=run_id,
                        images=KNOWN_IMAGES,
                        identities=identities,
                        names=light_names,
                        labels={ZONE_LABEL: light_zone},
                    ),
                    state_dir=directory,
                    run_id=run_id,
                )
            cluster.wait_nodes_ready(timeout=timeout + 0.1 * len(light_names))
            cluster._write_state()
        except BaseException:
            cluster.stop()
            raise
        return cluster

    def _start_node(self, index: int, spec: NodeSpec, identity: Identity) -> Node:
        assert self.control_plane is not None  # noqa: S101 - started before nodes
        node_net = network.add_node(net=self.net, index=index, node_name=spec.name)
        node_dir = self.state_dir / "nodes" / spec.name
        node_dir.mkdir(parents=True, exist_ok=True)
        kubeconfig = write_kubeconfig(
            path=node_dir / "kubelet.kubeconfig",
            server=self.control_plane.server,
            ca_pem=self.control_plane.pki.ca_pem,
            identity=identity,
        )
        (node_dir / "ca.crt").write_bytes(self.control_plane.pki.ca_pem)
        kubelet_config = node_dir / "kubelet.json"
        kubelet_config.write_text(
            json.dumps(
                {
                    "node_name": spec.name,
                    "node_ip": node_net.address,
                    "kubeconfig": str(kubeconfig),
                    "state_dir": str(node_dir),
                    "api_host": self.net.gateway,
                    "api_port": APISERVER_PORT,
                    "labels": dict(spec.labels),
                    "taints": [dict(t) for t in spec.taints],
                    "images": {k: list(v) for k, v in KNOWN_IMAGES.items()},
                    "run_id": self.run_id,
                    "mountpoints_log": str(self.mountpoints_log),
                    **({"restart_backoff_base": self.restart_backoff} if self.restart_backoff else {}),
                }
            )
        )
        kubelet = spawn(
            name=f"kubelet-{spec.name}",
            argv=[
                "ip",
                "netns",
                "exec",
                node_net.netns,
                sys.executable,
                "-m",
                "kpcap_localcluster.kubelet",
                str(kubelet_config),
            ],
            log_path=node_dir / "kubelet.log",
            run_id=self.run_id,
        )
        return Node(spec=spec, net=node_net, kubelet=kubelet, state_dir=node_dir)

    def wait_nodes_ready(self, *, timeout: float) -> None:
        core = client.CoreV1Api(self.api_client())
        deadline = time.monotonic() + timeout
        pending = {n.name for n in self.nodes} | set(self.light_nodes)
        while pending and time.monotonic() < deadline:
            for node in self.nodes:
                if not node.kubelet.alive():
                    raise RuntimeError(f"kubelet of {node.name} exited:\n{node.kubelet.log_tail()}")
            if self.hollow is not None and not self.hollow.alive():
                raise RuntimeError(f"the hollow nodes' process exited:\n{self.hollow.log_tail()}")
            for item in core.list_node().items:
                ready = any(c.type == "Ready" and c.status == "True" for c in item.status.conditions or [])
                if ready:
                    pending.discard(item.metadata.name)
            time.sleep(0.25 if len(pending) < 100 else 2.0)  # a list of 2,000 Nodes costs the apiserver
        if pending:
            raise TimeoutError(f"nodes not Ready after {timeout:.0f}s: {sorted(pending)}")

    def stop(self) -> None:
        """Stop everything this run started; safe to call twice and after a failed start."""
        if self.hollow is not None:
            with contextlib.suppress(Exception):
                self.hollow.stop(grace=10)
        for node in self.nodes:
            with contextlib.suppress(Exception):
                node.kubelet.stop(grace=15)
        for server in (self.s3, self.gcs):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        if self.control_plane is not None:
            with contextlib.suppress(Exception):
                self.control_plane.stop()
        survivors = processes.sweep(self.run_id)
        if survivors:
            log.warning("killed %d leftover processes of run %s: %s", len(survivors), self.run_id, survivors)
        for node in self.nodes:
            for pid in network.netns_pids(node.netns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            network.remove_node(node.net)
        network.remove_bridge(self.net)
        network.remove_leftovers(run_id=self.run_id)
        self._remove_mountpoints()
        self.nodes.clear()
        if self.owns_state_dir:
            shutil.rmtree(self.state_dir, ignore_errors=True)

    @property
    def mountpoints_log(self) -> Path:
        return MOUNTPOINTS_LOG

    def _remove_mountpoints(self) -> None:
        remove_mountpoints_if_idle()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def leftovers(self) -> dict[str, list[str]]:
        found = network.leftovers(run_id=self.run_id)
        found["processes"] = [cmd for _, cmd in processes.processes_of_run(self.run_id)]
        return found

    def _write_state(self) -> None:
        (self.state_dir / "cluster.json").write_text(
            json.dumps({"run_id": self.run_id, "gateway": self.net.gateway, "bridge": self.net.bridge})
        )

    # --- access ---------------------------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        assert self.control_plane is not None  # noqa: S101
        return self.control_plane.admin_kubeconfig

    @property
    def server(self) -> str:
        assert self.control_plane is not None  # noqa: S101
        return self.control_plane.server

    @property
    def ca_cert(self) -> Path:
        assert self.control_plane is not None  # noqa: S101
        return self.control_plane.pki.ca_cert

    @property
    def audit_log(self) -> Path:
        """The apiserver's audit log of write requests (see ``controlplane.AUDIT_POLICY``)."""
        assert self.control_plane is not None  # noqa: S101
        return self.control_plane.audit_log

    def api_client(self) -> client.ApiClient:
        return config.new_client_from_config(config_file=str(self.kubeconfig))

    def token_client(self, token: str) -> client.ApiClient:
        """An API client that authenticates with ``token`` (e.g. a ServiceAccount's)."""
        configuration = client.Configuration()
        configuration.host = self.server
        configuration.ssl_ca_cert = str(self.ca_cert)
        configuration.api_key = {"authorization": f"Bearer {token}"}
        return client.ApiClient(configuration)

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r} (nodes: {[n.name for n in self.nodes]})")

    def kubectl(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            # A cache of this cluster's own: kubectl keys its discovery cache by host:port, which
            # every local cluster on the machine shares, so another's stale API list could answer.
            [
                tool("kubectl"),
                f"--kubeconfig={self.kubeconfig}",
                f"--cache-dir={self.kubeconfig.parent / 'kubectl-cache'}",
                *args,
            ],
            input=stdin,
            capture_output=True,
            text=True,
            check=check,
        )

    def run_in_node(
        self, node: str, argv: Sequence[str], *, timeout: float = 60, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in ``node``'s network namespace (as the host's root), wait for it."""
        return subprocess.run(
            ["ip", "netns", "exec", self.node(node).netns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
        )

    def send_udp(
        self, *, src: str, dst: str, port: int, count: int, payload: str, interval: float = 0.002
    ) -> None:
        """``count`` UDP datagrams from node ``src`` to node ``dst``'s address, ``payload`` in each."""
        self.run_in_node(
            src,
            [
                sys.executable,
                "-m",
                "kpcap_localcluster.traffic",
                "send",
                "--dst",
                self.node(dst).address,
                "--port",
                str(port),
                "--count",
                str(count),
                "--payload",
                payload,
                "--interval",
                str(interval),
            ],
        )

    def popen_in_node(self, node: str, argv: Sequence[str]) -> subprocess.Popen[str]:
        return subprocess.Popen(
            ["ip", "netns", "exec", self.node(node).netns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, processes.RUN_MARKER: self.run_id},
        )

    def pod_logs(self, *, namespace: str, pod: str, container: str | None = None) -> str:
        """A container's output, as the process kubelet of the pod's node kept it."""
        pattern = f"{namespace}_{pod}_*/{container or '*'}.log"
        texts = []
        for node in self.nodes:
            texts += [p.read_text(errors="replace") for p in sorted((node.state_dir / "pods").glob(pattern))]
        return "\n".join(texts)

    def env(self) -> dict[str, str]:
        """Variables for a shell that should talk to this cluster (KUBECONFIG, storage endpoints)."""
        out = {"KUBECONFIG": str(self.kubeconfig)}
        if self.s3:
            out["KPCAP_TEST_S3_ENDPOINT"] = self.s3.endpoint
        if self.gcs:
            out["KPCAP_TEST_GCS_ENDPOINT"] = self.gcs.endpoint
        return out
