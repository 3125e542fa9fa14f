"""The local cluster against its promises: real apiserver, real pods as processes, real packets."""

from __future__ import annotations

import base64
import json
import os
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from kpcap_localcluster import network
from kpcap_localcluster.cluster import LocalCluster, NodeSpec
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

TESTBOX = "registry.example/kpcap/kpcap-testbox:test"


def _pod(name: str, *, args: list[str], restart: str = "Never", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": restart,
            "containers": [{"name": "box", "image": TESTBOX, "args": args}],
            **spec,
        },
    }


def _logs_with(cluster: LocalCluster, namespace: str, pod: str, text: str) -> str | None:
    logs = cluster.pod_logs(namespace=namespace, pod=pod)
    return logs if text in logs else None


def test_crd_schema_validates_objects(local_cluster: LocalCluster, namespace: str) -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.test.kpcap.io"},
        "spec": {
            "group": "test.kpcap.io",
            "scope": "Namespaced",
            "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "properties": {"size": {"type": "integer", "minimum": 1, "maximum": 10}},
                                }
                            },
                        }
                    },
                }
            ],
        },
    }
    local_cluster.kubectl("apply", "-f", "-", stdin=json.dumps(crd))
    local_cluster.kubectl("wait", "--for=condition=Established", "crd/widgets.test.kpcap.io", "--timeout=30s")
    custom = client.CustomObjectsApi(local_cluster.api_client())

    def widget(size: int) -> dict[str, Any]:
        return {
            "apiVersion": "test.kpcap.io/v1",
            "kind": "Widget",
            "metadata": {"name": f"w{size}"},
            "spec": {"size": size},
        }

    created = custom.create_namespaced_custom_object("test.kpcap.io", "v1", namespace, "widgets", widget(5))
    assert created["spec"]["size"] == 5
    with pytest.raises(client.ApiException) as refused:
        custom.create_namespaced_custom_object("test.kpcap.io", "v1", namespace, "widgets", widget(11))
    assert refused.value.status == 422
    body = json.loads(refused.value.body)
    assert "spec.size" in body["message"]
    assert "less than or equal to 10" in body["message"]
    local_cluster.kubectl("delete", "crd", "widgets.test.kpcap.io", "--wait=false")


def test_daemonset_pods_run_in_each_nodes_namespace(
    local_cluster: LocalCluster, apps: client.AppsV1Api, core: client.CoreV1Api, namespace: str
) -> None:
    apps.create_namespaced_daemon_set(
        namespace,
        {
            "metadata": {"name": "ifaces"},
            "spec": {
                "selector": {"matchLabels": {"app": "ifaces"}},
                "template": {
                    "metadata": {"labels": {"app": "ifaces"}},
                    "spec": {
                        "hostNetwork": True,
                        "containers": [{"name": "box", "image": TESTBOX, "args": ["interfaces"]}],
                    },
                },
            },
        },
    )

    def all_running() -> list[Any] | None:
        pods = core.list_namespaced_pod(namespace, label_selector="app=ifaces").items
        running = [p for p in pods if p.status.phase == "Running"]
        return running if len(running) == len(local_cluster.nodes) else None

    try:
        pods = wait_for(all_running, timeout=90, what="a running DaemonSet pod on every node")
    except BaseException:
        for pod in core.list_namespaced_pod(namespace, label_selector="app=ifaces").items:
            print(pod.metadata.name, pod.spec.node_name, pod.status.phase, pod.status.container_statuses)
        print(local_cluster.kubectl("get", "nodes", "-o", "wide").stdout)
        raise
    assert {p.spec.node_name for p in pods} == {n.name for n in local_cluster.nodes}
    for pod in pods:
        node = local_cluster.node(pod.spec.node_name)
        assert pod.status.pod_ip == node.address
        logs = wait_for(
            lambda p=pod: _logs_with(local_cluster, namespace, p.metadata.name, "READY"),
            timeout=30,
            what=f"{pod.metadata.name} to list its interfaces",
        )
        seen = json.loads(next(line for line in logs.splitlines() if line.startswith('{"interfaces"')))
        interfaces = seen["interfaces"]
        assert set(interfaces) == {"lo", "eth0"}, "a pod sees only its own node's interfaces"
        assert node.address in interfaces["eth0"]
        others = {n.address for n in local_cluster.nodes} - {node.address}
        assert not others & set(interfaces["eth0"])


def test_pod_uses_its_service_account_token_and_rbac(
    local_cluster: LocalCluster, core: client.CoreV1Api, namespace: str
) -> None:
    rbac = client.RbacAuthorizationV1Api(local_cluster.api_client())
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "reader"}})
    rbac.create_namespaced_role(
        namespace,
        {
            "metadata": {"name": "configmap-reader"},
            "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
        },
    )
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": "reader"},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "configmap-reader"},
            "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": namespace}],
        },
    )
    base = f"/api/v1/namespaces/{namespace}"
    calls = [
        f"GET:{base}/configmaps",
        f"GET:{base}/secrets",
        f"GET:{base}/pods",
        "GET:/api/v1/nodes",
        f"POST:{base}/configmaps",
    ]
    core.create_namespaced_pod(
        namespace, _pod("access", args=["kube-access", *calls], serviceAccountName="reader")
    )
    logs = wait_for(
        lambda: _logs_with(local_cluster, namespace, "access", "READY"),
        timeout=60,
        what="the pod's API calls",
    )
    records = [json.loads(line) for line in logs.splitlines() if line.startswith('{"verb"')]
    results = {(r["verb"], r["path"]): r["status"] for r in records}
    assert results == {
        ("GET", f"{base}/configmaps"): 200,
        ("GET", f"{base}/secrets"): 403,
        ("GET", f"{base}/pods"): 403,
        ("GET", "/api/v1/nodes"): 403,
        ("POST", f"{base}/configmaps"): 403,
    }
    claims = next(json.loads(line)["claims"] for line in logs.splitlines() if line.startswith('{"claims"'))
    assert claims["sub"] == f"system:serviceaccount:{namespace}:reader"
    assert claims["kubernetes.io"]["pod"]["name"] == "access", "a bound token from the TokenRequest API"


def test_packet_from_node_a_is_seen_by_a_raw_socket_on_node_b(
    local_cluster: LocalCluster, tmp_path: Path
) -> None:
    a, b = local_cluster.nodes[0], local_cluster.nodes[1]
    marker = f"kpcap-{secrets.token_hex(6)}"
    ready = tmp_path / "ready"
    listener = local_cluster.popen_in_node(
        b.name,
        [
            sys.executable,
            "-m",
            "kpcap_localcluster.traffic",
            "listen",
            "--seconds",
            "4",
            "--marker",
            marker,
            "--ready-file",
            str(ready),
        ],
    )
    wait_for(ready.exists, timeout=10, what="the raw-socket listener")
    local_cluster.send_udp(src=a.name, dst=b.name, port=9999, count=3, payload=marker)
    out, err = listener.communicate(timeout=20)
    assert listener.returncode == 0, err
    frames = [json.loads(line) for line in out.splitlines()][:-1]
    # PACKET_HOST (0): addressed to B. B's ICMP port-unreachable replies quote the payload too and
    # show up as PACKET_OUTGOING (4).
    incoming = [f for f in frames if f["packet_type"] == 0]
    assert len(incoming) == 3
    assert {f["interface"] for f in incoming} == {"eth0"}
    # Node C, on the same bridge, is not the destination: the unicast frames never reach it.
    c = local_cluster.nodes[2]
    listen_c = local_cluster.popen_in_node(
        c.name,
        [sys.executable, "-m", "kpcap_localcluster.traffic", "listen", "--seconds", "2", "--marker", marker],
    )
    time.sleep(0.5)
    local_cluster.send_udp(src=a.name, dst=b.name, port=9999, count=3, payload=marker)
    out_c, _ = listen_c.communicate(timeout=20)
    assert json.loads(out_c.splitlines()[-1]) == {"matched": 0}


def _pid_of(cluster: LocalCluster, namespace: str, pod: str) -> int:
    logs = wait_for(lambda: _logs_with(cluster, namespace, pod, "READY"), timeout=30, what=f"{pod} to start")
    line = next(line for line in logs.splitlines() if line.startswith("testbox"))
    return int(line.split("pid=")[1].split()[0])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"


@pytest.mark.parametrize(
    ("ignore_sigterm", "grace", "min_s", "max_s"), [(False, 5, 0.0, 3.0), (True, 3, 2.5, 6.0)]
)
def test_deleting_a_pod_stops_its_process_within_the_grace_period(
    local_cluster: LocalCluster,
    core: client.CoreV1Api,
    namespace: str,
    ignore_sigterm: bool,
    grace: int,
    min_s: float,
    max_s: float,
) -> None:
    args = ["idle", "--ignore-sigterm"] if ignore_sigterm else ["idle"]
    core.create_namespaced_pod(namespace, _pod("sleeper", args=args, terminationGracePeriodSeconds=grace))
    pid = _pid_of(local_cluster, namespace, "sleeper")
    assert _alive(pid)
    started = time.monotonic()
    core.delete_namespaced_pod("sleeper", namespace)
    wait_for(lambda: not _alive(pid), timeout=grace + 5, what=f"process {pid} to end", interval=0.05)
    took = time.monotonic() - started
    assert min_s <= took <= max_s, f"the process ended after {took:.1f}s (grace {grace}s)"
    if not ignore_sigterm:
        assert "got SIGTERM" in local_cluster.pod_logs(namespace=namespace, pod="sleeper")

    def pod_gone() -> bool:
        try:
            core.read_namespaced_pod("sleeper", namespace)
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for(pod_gone, timeout=10, what="the kubelet to remove the pod")


@pytest.mark.parametrize(
    ("policy", "code", "phase", "restarts"),
    [
        ("Always", 3, "Running", True),
        ("OnFailure", 3, "Running", True),
        ("OnFailure", 0, "Succeeded", False),
        ("Never", 3, "Failed", False),
    ],
)
def test_restart_policy(
    core: client.CoreV1Api, namespace: str, policy: str, code: int, phase: str, restarts: bool
) -> None:
    core.create_namespaced_pod(namespace, _pod("crasher", args=["exit", str(code), "0.2"], restart=policy))

    def settled() -> client.V1Pod | None:
        pod = core.read_namespaced_pod("crasher", namespace)
        statuses = pod.status.container_statuses or []
        if restarts:
            return pod if statuses and statuses[0].restart_count >= 2 else None
        return pod if pod.status.phase == phase else None

    pod = wait_for(settled, timeout=60, what=f"restartPolicy {policy} with exit {code}")
    status = pod.status.container_statuses[0]
    if restarts:
        assert status.last_state.terminated.exit_code == code
    else:
        time.sleep(1.5)  # long enough for a (wrong) restart to have happened
        status = core.read_namespaced_pod("crasher", namespace).status.container_statuses[0]
        assert status.restart_count == 0
        assert status.state.terminated.exit_code == code


def test_unknown_image_stays_pending_with_a_reason(core: client.CoreV1Api, namespace: str) -> None:
    pod = _pod("nginx", args=[])
    pod["spec"]["containers"][0]["image"] = "docker.io/library/nginx:1.27"
    core.create_namespaced_pod(namespace, pod)

    def waiting() -> Any:
        statuses = core.read_namespaced_pod("nginx", namespace).status.container_statuses or []
        return statuses[0].state.waiting if statuses and statuses[0].state.waiting else None

    state = wait_for(waiting, timeout=30, what="the unknown image to be reported")
    assert state.reason == "ImageNotKnown"
    assert "nginx" in state.message
    assert "kpcap-testbox" in state.message
    assert core.read_namespaced_pod("nginx", namespace).status.phase == "Pending"


def test_storage_servers_answer_the_real_clients_from_a_node(local_cluster: LocalCluster) -> None:
    assert local_cluster.s3 is not None
    assert local_cluster.gcs is not None
    bucket = f"kpcap-{secrets.token_hex(4)}"
    script = (
        "import boto3,sys;"
        "s3=boto3.client('s3',endpoint_url=sys.argv[1],region_name='us-east-1',"
        "aws_access_key_id='test',aws_secret_access_key='test');"
        "s3.create_bucket(Bucket=sys.argv[2]);s3.put_object(Bucket=sys.argv[2],Key='k',Body=b'from-node')"
    )
    local_cluster.run_in_node(
        local_cluster.nodes[0].name, [sys.executable, "-c", script, local_cluster.s3.endpoint, bucket]
    )
    s3 = local_cluster.s3.s3_client()
    assert s3.get_object(Bucket=bucket, Key="k")["Body"].read() == b"from-node"

    gcs_client = local_cluster.gcs.gcs_client()
    gcs_client.create_bucket(bucket).blob("k").upload_from_string(b"to-gcs")
    assert gcs_client.bucket(bucket).blob("k").download_as_bytes() == b"to-gcs"


def test_teardown_leaves_no_namespace_link_or_process() -> None:
    """A second, small cluster is started, used and stopped; nothing of it may survive."""
    cluster = LocalCluster.start(nodes=[NodeSpec(name="lonely-node")], storage=True)
    core = client.CoreV1Api(cluster.api_client())
    core.create_namespaced_pod("default", _pod("sleeper", args=["idle"]))
    wait_for(lambda: _logs_with(cluster, "default", "sleeper", "READY"), timeout=30, what="a pod to run")
    run_id, netns = cluster.run_id, cluster.nodes[0].netns
    assert cluster.leftovers()["processes"], "the running cluster's processes are tagged and found"
    cluster.stop()
    assert cluster.leftovers() == {"netns": [], "links": [], "processes": []}
    assert netns not in network.ip("netns", "list")
    assert not [line for line in network.ip("-br", "link").splitlines() if run_id in line]
    assert not cluster.state_dir.exists()


def test_volumes_mount_in_the_container_only(
    local_cluster: LocalCluster, core: client.CoreV1Api, namespace: str
) -> None:
    """An emptyDir over the directory that holds every pod's volume sources, and a ConfigMap beside it.

    Mounting it first would hide the other volumes' sources; the container's init holds them open.
    (The cluster's state directory: never where the interpreter lives, wherever the clone is.)
    """
    core.create_namespaced_config_map(
        namespace, {"metadata": {"name": "settings"}, "data": {"greeting": "hello"}}
    )
    # Multi-line and binary values (a PEM key, raw bytes) are written byte for byte.
    pem = "-----BEGIN KEY-----\nAAAA\nBBBB=\n-----END KEY-----\n"
    raw = bytes(range(256))
    core.create_namespaced_secret(
        namespace,
        {
            "metadata": {"name": "keys"},
            "data": {
                k: base64.b64encode(v).decode() for k, v in {"key.pem": pem.encode(), "raw": raw}.items()
            },
        },
    )
    scratch = local_cluster.state_dir
    marker = f"kpcap-volume-{secrets.token_hex(4)}"
    script = (
        "import pathlib, sys;"
        f"pathlib.Path('{scratch}/{marker}').write_text('private');"
        "print('greeting=' + pathlib.Path('/etc/kpcap-settings/greeting').read_text());"
        "print('pem=' + repr(pathlib.Path('/etc/kpcap-keys/key.pem').read_text()));"
        "print('raw=' + pathlib.Path('/etc/kpcap-keys/raw').read_bytes().hex());"
        "print('token=' + str(pathlib.Path('/var/run/secrets/kubernetes.io/serviceaccount/token').exists()));"
        "print('READY', flush=True)"
    )
    pod = _pod("volumes", args=[])
    pod["spec"]["containers"][0].update(
        command=["python3", "-c", script],
        volumeMounts=[
            {"name": "scratch", "mountPath": str(scratch)},
            {"name": "settings", "mountPath": "/etc/kpcap-settings", "readOnly": True},
            {"name": "keys", "mountPath": "/etc/kpcap-keys", "readOnly": True},
        ],
    )
    pod["spec"]["volumes"] = [
        {"name": "scratch", "emptyDir": {}},
        {"name": "settings", "configMap": {"name": "settings"}},
        {"name": "keys", "secret": {"secretName": "keys"}},
    ]
    core.create_namespaced_pod(namespace, pod)
    try:
        logs = wait_for(
            lambda: _logs_with(local_cluster, namespace, "volumes", "\ntoken="),
            timeout=30,
            what="the pod to read its volumes",
        )
    except BaseException:
        print(local_cluster.pod_logs(namespace=namespace, pod="volumes"))
        raise
    assert "greeting=hello" in logs
    assert f"pem={pem!r}" in logs
    assert f"raw={raw.hex()}" in logs
    assert "token=True" in logs
    assert not (scratch / marker).exists(), "the emptyDir, not the host's directory, took the write"


def test_a_pod_waits_for_a_configmap_created_after_it(
    local_cluster: LocalCluster, core: client.CoreV1Api, namespace: str
) -> None:
    """CreateContainerConfigError is retried, as a kubelet's sync loop does, not final."""
    pod = _pod("late-config", args=["idle"])
    pod["spec"]["containers"][0]["env"] = [
        {"name": "GREETING", "valueFrom": {"configMapKeyRef": {"name": "late", "key": "greeting"}}}
    ]
    core.create_namespaced_pod(namespace, pod)

    def waiting_reason() -> str | None:
        statuses = core.read_namespaced_pod("late-config", namespace).status.container_statuses or []
        waiting = statuses[0].state.waiting if statuses else None
        return waiting.reason if waiting else None

    assert wait_for(waiting_reason, timeout=30, what="the missing ConfigMap to be reported") == (
        "CreateContainerConfigError"
    )
    core.create_namespaced_config_map(namespace, {"metadata": {"name": "late"}, "data": {"greeting": "hi"}})
    wait_for(
        lambda: _logs_with(local_cluster, namespace, "late-config", "READY"),
        timeout=60,
        what="the pod to start once its ConfigMap exists",
    )
