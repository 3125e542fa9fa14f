"""etcd, kube-apiserver, kube-controller-manager and kube-scheduler as local processes.

The apiserver serves HTTPS on the cluster bridge's address (nodes reach it there; a loopback
advertise address is refused for the ``kubernetes`` Service's endpoints), authenticates static
tokens and ServiceAccount tokens, authorises with Node and RBAC, issues bound ServiceAccount tokens,
and resolves admission webhooks' Services through their Endpoints (there is no kube-proxy here).
Every write request (create, update, patch, delete) is audit-logged at Metadata level (who, verb,
resource, response code; no bodies) so tests can count what a client wrote.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from kpcap_localcluster.binaries import ControlPlaneBinaries
from kpcap_localcluster.pki import ClusterPki, Identity
from kpcap_localcluster.ports import free_port
from kpcap_localcluster.processes import ManagedProcess, respawn, spawn

log = logging.getLogger(__name__)

SERVICE_CIDR = "198.19.0.0/16"  # never routed: Service IPs exist only as API objects here
SERVICE_ACCOUNT_ISSUER = "https://kubernetes.default.svc.cluster.local"
KUBERNETES_SERVICE_IP = "198.19.0.1"
APISERVER_PORT = 6443

# Writes only, one line per request (at ResponseComplete): reads and watches would drown them.
AUDIT_POLICY = {
    "apiVersion": "audit.k8s.io/v1",
    "kind": "Policy",
    "omitStages": ["RequestReceived"],
    "rules": [
        {"level": "Metadata", "verbs": ["create", "update", "patch", "delete", "deletecollection"]},
        {"level": "None"},
    ],
}
AUDIT_LOG_MAX_MB = 200  # a whole test session fits: tests read one file, not rotated backups

# Light mode (hollow nodes, ``LocalCluster.start(light_nodes=N)``): hundreds to thousands of Nodes.
# A hollow node renews its Lease every 10-120 s (``hollow.lease_interval``), so the node controller
# waits longer than that before calling a node NotReady (the default grace is 40 s).
LIGHT_NODE_MONITOR_GRACE_SECONDS = 400
# The DaemonSet controller creates a pod per node and the scheduler binds each: at the clients'
# default 20 (controller-manager) and 50 (scheduler) QPS, 2,000 nodes would take 100 s and 40 s.
LIGHT_CLIENT_QPS = ("--kube-api-qps=500", "--kube-api-burst=1000")
# Thousands of pod status writes and Lease renewals at once: the default 400/200 in flight is the
# whole budget the priority-and-fairness levels share.
LIGHT_APISERVER_FLAGS = ("--max-requests-inflight=1000", "--max-mutating-requests-inflight=500")


def write_kubeconfig(*, path: Path, server: str, ca_pem: bytes, identity: Identity) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "kpcap-local",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "users": [{"name": identity.user, "user": {"token": identity.token}}],
        "contexts": [{"name": "kpcap-local", "context": {"cluster": "kpcap-local", "user": identity.user}}],
        "current-context": "kpcap-local",
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@dataclass(slots=True)
class ControlPlane:
    """The running control-plane processes and how to reach the apiserver."""

    server: str
    admin_kubeconfig: Path
    admin: Identity
    pki: ClusterPki
    audit_log: Path  # JSON lines, one audit.k8s.io/v1 Event per write request
    processes: list[ManagedProcess] = field(default_factory=list)
    run_id: str = ""

    def restart_apiserver(self, *, down_seconds: float = 0.0, timeout: float = 120.0) -> None:
        """Stop kube-apiserver (SIGTERM, as a rolling upgrade does), keep it down ``down_seconds``,
        start it again with the same flags and etcd; returns once it is ready (fault tests)."""
        index = next(i for i, p in enumerate(self.processes) if p.name == "kube-apiserver")
        old = self.processes[index]
        began = time.monotonic()
        old.stop(grace=3)  # SIGTERM, then SIGKILL: a 1.20 apiserver may take 10 s to drain its watches
        log.info("kube-apiserver stopped in %.1f s", time.monotonic() - began)
        time.sleep(down_seconds)
        self.processes[index] = respawn(old, run_id=self.run_id)
        began = time.monotonic()
        _wait(
            "kube-apiserver /readyz after a restart",
            lambda: _get(f"{self.server}/readyz", token=self.admin.token, ca_file=self.pki.ca_cert)[0] == 200,
            timeout=timeout,
            procs=self.processes,
        )
        log.info("kube-apiserver ready again in %.1f s", time.monotonic() - began)

    def stop(self) -> None:
        # Reverse start order: clients of the apiserver first, etcd last.
        for proc in reversed(self.processes):
            proc.stop(grace=10)
        self.processes.clear()

    def assert_running(self) -> None:
        for proc in self.processes:
            if not proc.alive():
                raise RuntimeError(
                    f"{proc.name} exited with {proc.popen.returncode}; last lines of {proc.log_path}:\n"
                    f"{proc.log_tail()}"
                )


def _get(url: str, *, token: str, ca_file: Path, timeout: float = 2.0) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(ca_file))
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as resp:  # noqa: S310
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode(errors="replace")


def _wait(what: str, check: Callable[[], bool], *, timeout: float, procs: Sequence[ManagedProcess]) -> None:
    deadline = time.monotonic() + timeout
    last_error = ""
    while time.monotonic() < deadline:
        for proc in procs:
            if not proc.alive():
                raise RuntimeError(
                    f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}; "
                    f"last lines of {proc.log_path}:\n{proc.log_tail()}"
                )
        try:
            if check():
                return
        except (OSError, ValueError) as err:
            last_error = str(err)
        time.sleep(0.25)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} {last_error}".strip())


def start_control_plane(
    *,
    binaries: ControlPlaneBinaries,
    pki: ClusterPki,
    identities: dict[str, Identity],
    bind_address: str,
    state_dir: Path,
    run_id: str,
    timeout: float = 120.0,
    light: bool = False,
) -> ControlPlane:
    """Start etcd and the three Kubernetes components; returns when the apiserver is ready.

    ``light``: sized for many hollow nodes (the ``LIGHT_*`` flags above); real-node runs keep the
    defaults."""
    logs = state_dir / "logs"
    etcd_port, etcd_peer_port = free_port(), free_port()
    etcd = spawn(
        name="etcd",
        argv=[
            str(binaries.etcd),
            f"--data-dir={state_dir / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{etcd_port}",
            f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
            f"--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}",
            f"--initial-cluster=default=http://127.0.0.1:{etcd_peer_port}",
            "--unsafe-no-fsync",  # test data: durability across power loss is not needed
            "--log-level=warn",
        ],
        log_path=logs / "etcd.log",
        run_id=run_id,
    )
    server = f"https://{bind_address}:{APISERVER_PORT}"
    plane = ControlPlane(
        server=server,
        admin_kubeconfig=state_dir / "admin.kubeconfig",
        admin=identities["admin"],
        pki=pki,
        audit_log=logs / "kube-apiserver-audit.log",
        processes=[etcd],
        run_id=run_id,
    )
    audit_policy = state_dir / "audit-policy.yaml"
    audit_policy.write_text(yaml.safe_dump(AUDIT_POLICY))
    try:
        apiserver = spawn(
            name="kube-apiserver",
            argv=[
                str(binaries.kube_apiserver),
                f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                f"--bind-address={bind_address}",
                f"--advertise-address={bind_address}",
                f"--secure-port={APISERVER_PORT}",
                "--insecure-port=0",
                f"--cert-dir={state_dir / 'apiserver-certs'}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--token-auth-file={pki.token_file}",
                "--authorization-mode=Node,RBAC",
                "--enable-admission-plugins=NodeRestriction",
                f"--service-account-issuer={SERVICE_ACCOUNT_ISSUER}",
                f"--service-account-key-file={pki.sa_public_key}",
                f"--service-account-signing-key-file={pki.sa_private_key}",
                f"--api-audiences={SERVICE_ACCOUNT_ISSUER}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Webhook Services resolve to their endpoints' IPs: no kube-proxy, no ClusterIP routing.
                "--enable-aggregator-routing=true",
                "--allow-privileged=true",
                f"--audit-policy-file={audit_policy}",
                f"--audit-log-path={plane.audit_log}",
                f"--audit-log-maxsize={AUDIT_LOG_MAX_MB}",
                "--audit-log-maxbackup=1",
                "--profiling=false",
                "--v=1",
                *(LIGHT_APISERVER_FLAGS if light else ()),
            ],
            log_path=logs / "kube-apiserver.log",
            run_id=run_id,
        )
        plane.processes.append(apiserver)
        admin = identities["admin"]
        _wait(
            "kube-apiserver /readyz",
            lambda: _get(f"{server}/readyz", token=admin.token, ca_file=pki.ca_cert)[0] == 200,
            timeout=timeout,
            procs=plane.processes,
        )
        write_kubeconfig(path=plane.admin_kubeconfig, server=server, ca_pem=pki.ca_pem, identity=admin)

        def start_client_component(name: str, binary: Path, flags: list[str]) -> None:
            # Each component talks to the apiserver with its own identity, not as leader of a HA set.
            kubeconfig = write_kubeconfig(
                path=state_dir / f"{name}.kubeconfig",
                server=server,
                ca_pem=pki.ca_pem,
                identity=identities[name],
            )
            argv = [
                str(binary),
                f"--kubeconfig={kubeconfig}",
                "--leader-elect=false",
                "--port=0",
                "--secure-port=0",
                "--v=1",
                *flags,
            ]
            plane.processes.append(spawn(name=name, argv=argv, log_path=logs / f"{name}.log", run_id=run_id))

        start_client_component(
            "kube-controller-manager",
            binaries.kube_controller_manager,
            [
                "--use-service-account-credentials=true",
                f"--service-account-private-key-file={pki.sa_private_key}",
                f"--root-ca-file={pki.ca_cert}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                # Pods of a deleted node are evicted promptly; the default (5 min) outlasts tests.
                "--pod-eviction-timeout=30s",
                *(
                    (*LIGHT_CLIENT_QPS, f"--node-monitor-grace-period={LIGHT_NODE_MONITOR_GRACE_SECONDS}s")
                    if light
                    else ()
                ),
            ],
        )
        start_client_component(
            "kube-scheduler", binaries.kube_scheduler, list(LIGHT_CLIENT_QPS) if light else []
        )

        def default_service_account_ready() -> bool:
            # The token controller has run once the default ServiceAccount has its token secret.
            status, body = _get(
                f"{server}/api/v1/namespaces/default/serviceaccounts/default",
                token=admin.token,
                ca_file=pki.ca_cert,
            )
            return status == 200 and bool(json.loads(body).get("secrets"))

        _wait(
            "the controller manager (default ServiceAccount token)",
            default_service_account_ready,
            timeout=timeout,
            procs=plane.processes,
        )
    except BaseException:
        with contextlib.suppress(Exception):
            plane.stop()
        raise
    return plane
