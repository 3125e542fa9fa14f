"""The main job, end to end on a local cluster: ``python -m kpcap_localcluster.demo [--keep]``.

1. starts a local cluster (control plane, 3 simulated nodes, S3 and GCS servers);
2. installs kpcap from its Helm chart;
3. ``kubectl apply -f`` a full capture of UDP port 7777 on the two nodes of colo ``colo-a``, into a
   bucket on the local S3 server;
4. sends matching (port 7777) and non-matching (port 8888) traffic from the third node;
5. follows ``kubectl get pcaps`` to success, downloads the per-node PCAPs, merges them with mergecap
   and prints what was captured;
6. ``kubectl apply -f`` a simple capture of the same traffic, now past: every node's sampler answers
   at once; downloads its PCAP through the REST API (PCAPs-compatible) with a ServiceAccount token;
7. tears everything down, unless ``--keep`` (then it waits for Ctrl-C with the cluster up).
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import logging
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kpcap.model import capture_id
from kpcap_localcluster.cluster import LocalCluster, default_nodes
from kpcap_localcluster.install import Installation, install, write_manifest

BUCKET = "kpcap-demo"
MATCHING_PORT, OTHER_PORT = 7777, 8888
PACKETS_PER_NODE = 20


def say(text: str) -> None:
    print(f"\n== {text}", flush=True)


def capture_manifest(*, s3_endpoint: str) -> dict[str, Any]:
    return {
        "apiVersion": "kpcap.io/v1alpha1",
        "kind": "PacketCapture",
        "metadata": {"name": "demo", "namespace": "default"},
        "spec": {
            "type": "full",
            "colo": "colo-a",
            "timeLimit": 10,
            "packetLimit": 1000,
            "filter": {"protocol": 17, "destinationPort": MATCHING_PORT},
            "destinationConf": f"s3://{BUCKET}/captures?region=us-east-1&endpoint={s3_endpoint}",
        },
    }


def follow(cluster: LocalCluster, *, send_traffic: Any, timeout: float = 120) -> dict[str, Any]:
    """Print `kubectl get pcaps` whenever it changes; send traffic once both agents capture."""
    last, sent = "", False
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = cluster.kubectl("get", "pcaps", "-n", "default").stdout.rstrip()
        if table != last:
            print(table if not last else table.splitlines()[-1], flush=True)
            last = table
        body: dict[str, Any] = json.loads(
            cluster.kubectl("get", "pcap", "demo", "-n", "default", "-o", "json").stdout
        )
        status = body.get("status") or {}
        if status.get("status") in {"success", "failed"}:
            return body
        if not sent and len(status.get("nodes") or {}) == len(status.get("targetNodes") or [0, 0]):
            send_traffic()
            sent = True
        time.sleep(0.5)
    raise TimeoutError(f"the capture did not finish within {timeout:.0f}s")


def simple_capture(cluster: LocalCluster, *, installation: Installation, output: Path) -> None:
    """A simple capture of the traffic sent above, then its PCAP through the REST API."""
    body = {
        "apiVersion": "kpcap.io/v1alpha1",
        "kind": "PacketCapture",
        "metadata": {"name": "demo-simple", "namespace": "default"},
        "spec": {
            "type": "simple",
            "timeLimit": 120,
            "packetLimit": 1000,
            "filter": {"protocol": 17, "destinationPort": MATCHING_PORT},
        },
    }
    manifest = write_manifest(output, body)
    say(f"a simple capture of the last 2 minutes, from the samplers: kubectl apply -f {manifest}")
    requested = time.monotonic()
    cluster.kubectl("apply", "-f", str(manifest))
    deadline = requested + 30
    while True:
        captured = json.loads(
            cluster.kubectl("get", "pcap", "demo-simple", "-n", "default", "-o", "json").stdout
        )
        status = captured.get("status") or {}
        if status.get("status") in {"success", "failed"}:
            break
        if time.monotonic() > deadline:
            raise TimeoutError("the simple capture did not finish within 30s")
        time.sleep(0.1)
    print(f"{status['status']} {time.monotonic() - requested:.1f}s after kubectl apply", flush=True)
    print(cluster.kubectl("get", "pcaps", "-n", "default", "demo-simple").stdout, flush=True)
    for node, entry in sorted(status.get("nodes", {}).items()):
        print(f"  {node}: {entry.get('packets', 0)} packets {entry.get('error', '')}")
    if status["status"] != "success":
        raise RuntimeError(f"simple capture failed: {status.get('errorMessage')}")

    # A user of namespace "default" allowed to read captures there, and nothing else.
    user = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": "demo-user", "namespace": "default"},
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": {"name": "pcap-reader", "namespace": "default"},
        "rules": [{"apiGroups": ["kpcap.io"], "resources": ["packetcaptures"], "verbs": ["get", "list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "demo-user-reads-pcaps", "namespace": "default"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "pcap-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "demo-user", "namespace": "default"}],
    }
    listing = {"apiVersion": "v1", "kind": "List", "items": [user, role, binding]}
    cluster.kubectl("apply", "-f", "-", stdin=json.dumps(listing))
    token = cluster.kubectl("create", "token", "demo-user", "-n", "default").stdout.strip()
    address = installation.operator_pods()[0]["status"]["podIP"]
    pcap_id = capture_id(captured["metadata"]["uid"])
    path = f"/client/v4/accounts/default/pcaps/{pcap_id}/download"
    # The API serves HTTPS with the chart's CA, for its Service's name: the demo reaches the pod's
    # address (no cluster DNS here) and checks the certificate against that name.
    service = f"{installation.release}-api.{installation.namespace}.svc"
    ca = cluster.kubectl(
        "get", "secret", f"{installation.release}-ca", "-n", installation.namespace,
        "-o", "jsonpath={.data.ca\\.crt}",
    ).stdout  # fmt: skip
    context = ssl.create_default_context(cadata=base64.b64decode(ca).decode())
    say(f"GET https://{address}:8000{path} (TLS as {service}; Authorization: Bearer <demo-user's token>)")
    connection = http.client.HTTPSConnection(address, 8000, timeout=30, context=context)
    connection.sock = context.wrap_socket(
        socket.create_connection((address, 8000), timeout=30), server_hostname=service
    )
    connection.request("GET", path, headers={"Authorization": f"Bearer {token}"})
    answer = connection.getresponse()
    data = answer.read()
    connection.close()
    if answer.status != 200:
        raise RuntimeError(f"download answered {answer.status}: {data[:300]!r}")
    downloaded = output / f"pcap_{pcap_id}.pcap"
    downloaded.write_bytes(data)
    decoded = subprocess.run(
        ["tshark", "-n", "-r", str(downloaded)], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    print(f"{downloaded}: {len(decoded)} packets; first ones (tshark):", flush=True)
    print("\n".join(decoded[:4]), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="kpcap-demo", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", action="store_true", help="keep the cluster running for kubectl")
    parser.add_argument("--output", type=Path, default=Path("kpcap-demo-output"), help="where PCAPs go")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    started = time.monotonic()

    say("starting a local cluster: etcd, kube-apiserver, controller manager, scheduler, 3 nodes, S3, GCS")
    cluster = LocalCluster.start(nodes=default_nodes(3))
    try:
        assert cluster.s3 is not None  # noqa: S101 - started with storage
        print(cluster.kubectl("get", "nodes", "-L", "topology.kubernetes.io/zone").stdout, flush=True)

        say("installing kpcap from charts/kpcap (helm template | kubectl apply)")
        # The REST API on, and every packet sampled (the chart's default is 1 in 100) so the simple
        # capture below has something to show from a few dozen packets.
        installation = install(cluster, values={"api": {"enabled": True}, "sampler": {"samplingRate": 1}})
        print(cluster.kubectl("get", "deploy,svc,sa", "-n", installation.namespace).stdout, flush=True)

        s3 = cluster.s3.s3_client()
        s3.create_bucket(Bucket=BUCKET)
        args.output.mkdir(parents=True, exist_ok=True)
        manifest = write_manifest(args.output, capture_manifest(s3_endpoint=cluster.s3.endpoint))
        say(f"kubectl apply -f {manifest}")
        print(manifest.read_text(), flush=True)
        cluster.kubectl("apply", "-f", str(manifest))

        def send_traffic() -> None:
            say(
                f"sending {PACKETS_PER_NODE} UDP packets to port {MATCHING_PORT} (captured) and "
                f"{PACKETS_PER_NODE} to port {OTHER_PORT} (filtered out) from kpcap-node-3 to each of colo-a"
            )
            for dst in ("kpcap-node-1", "kpcap-node-2"):
                for port in (MATCHING_PORT, OTHER_PORT):
                    cluster.send_udp(
                        src="kpcap-node-3",
                        dst=dst,
                        port=port,
                        count=PACKETS_PER_NODE,
                        payload=f"hello {dst} on {port}",
                    )

        say("kubectl get pcaps (following)")
        body = follow(cluster, send_traffic=send_traffic)
        status = body["status"]
        if status["status"] != "success":
            print(f"capture failed: {status.get('errorMessage')}", file=sys.stderr)
            return 1

        say("downloading the per-node PCAPs")
        files = []
        for uri in status["files"]:
            key = uri.removeprefix(f"s3://{BUCKET}/")
            local = args.output / Path(key).name
            s3.download_file(BUCKET, key, str(local))
            files.append(local)
            node = local.stem
            print(f"{uri} -> {local}: {status['nodes'][node]['packets']} packets")
        merged = args.output / "merged.pcap"
        subprocess.run(["mergecap", "-F", "pcap", "-w", str(merged), *map(str, files)], check=True)
        say(f"merged with mergecap into {merged}; first packets (tshark):")
        decoded = subprocess.run(
            ["tshark", "-n", "-r", str(merged), "-c", "6"], capture_output=True, text=True, check=True
        )
        print(decoded.stdout, flush=True)
        count = subprocess.run(
            ["tshark", "-n", "-r", str(merged)], capture_output=True, text=True, check=True
        )
        print(
            f"{len(count.stdout.splitlines())} packets in total, all UDP to port {MATCHING_PORT}; "
            f"{status['packetsCaptured']} reported in status"
        )

        simple_capture(cluster, installation=installation, output=args.output)
        print(f"done in {time.monotonic() - started:.0f}s", flush=True)

        if args.keep:
            say("cluster kept. In another shell:")
            for key, value in cluster.env().items():
                print(f"  export {key}={value}")
            print("  kubectl get pcaps -A\nCtrl-C tears it down.", flush=True)
            stop = threading.Event()
            signal.signal(signal.SIGINT, lambda *_: stop.set())
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            stop.wait()
    finally:
        say("tearing down")
        cluster.stop()
    return 0


if __name__ == "__main__":
    if shutil.which("mergecap") is None:
        sys.exit("mergecap not found: run hack/bootstrap.sh (it installs tshark and mergecap)")
    sys.exit(main())
