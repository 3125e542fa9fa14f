"""Entry point of the ``kpcap-testbox`` image: small behaviours the harness tests run as pods.

    interfaces             print this namespace's interfaces and addresses as JSON, then idle
    kube-access V:PATH...  call the apiserver with the pod's ServiceAccount (in-cluster config) and
                           print one JSON line per call ({"verb", "path", "status"}), then idle
    exit CODE [SECONDS]    exit with CODE after SECONDS
    idle [--ignore-sigterm]  idle until signalled (optionally ignoring SIGTERM, to test SIGKILL)

Each command prints a line ``READY`` when its output is complete, so tests can poll the log.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

SA_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def _idle() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    stop.wait()
    print("got SIGTERM, exiting", flush=True)


def interfaces() -> None:
    links = json.loads(
        subprocess.run(["ip", "-j", "addr"], capture_output=True, text=True, check=True).stdout
    )
    print(
        json.dumps(
            {"interfaces": {link["ifname"]: [a["local"] for a in link["addr_info"]] for link in links}}
        )
    )
    print("READY", flush=True)
    _idle()


def kube_access(calls: list[str]) -> None:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ["KUBERNETES_SERVICE_PORT"]
    token = (SA_DIR / "token").read_text()
    # The claims (not the signature) show whether the token is a bound one from the TokenRequest API.
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    print(json.dumps({"claims": claims}), flush=True)
    context = ssl.create_default_context(cafile=str(SA_DIR / "ca.crt"))
    for call in calls:
        verb, _, path = call.partition(":")
        body = json.dumps({}).encode() if verb in ("POST", "PUT") else None
        request = urllib.request.Request(
            f"https://{host}:{port}{path}",
            method=verb,
            data=body,
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=10) as resp:  # noqa: S310
                status = resp.status
        except urllib.error.HTTPError as err:
            status = err.code
        print(json.dumps({"verb": verb, "path": path, "status": status}), flush=True)
    print("READY", flush=True)
    _idle()


def main() -> None:
    parser = argparse.ArgumentParser(prog="kpcap-testbox")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("interfaces")
    access = sub.add_parser("kube-access")
    access.add_argument("calls", nargs="+")
    exit_cmd = sub.add_parser("exit")
    exit_cmd.add_argument("code", type=int)
    exit_cmd.add_argument("seconds", type=float, nargs="?", default=0.0)
    # Stands in for the capture agent in operator tests: the operator's DaemonSet passes "capture".
    sub.add_parser("capture")
    idle = sub.add_parser("idle")
    idle.add_argument("--ignore-sigterm", action="store_true")
    args = parser.parse_args()
    print(f"testbox {args.command} pid={os.getpid()} uid={os.getuid()}", flush=True)
    if args.command == "interfaces":
        interfaces()
    elif args.command == "kube-access":
        kube_access(args.calls)
    elif args.command == "exit":
        time.sleep(args.seconds)
        print("READY", flush=True)
        sys.exit(args.code)
    elif args.command == "capture" or not args.ignore_sigterm:
        print("READY", flush=True)
        _idle()
    else:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("READY", flush=True)
        while True:
            time.sleep(1)


if __name__ == "__main__":
    main()
