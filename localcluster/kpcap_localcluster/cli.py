"""``kpcap-localcluster``: start a local cluster for exploring, or clean up after a crashed one.

kpcap-localcluster up [--nodes 3] [--light-nodes N]
                                    start, print how to reach it, run until Ctrl-C, then tear down
                                    (--light-nodes: N more Nodes kept by one hollow process)
kpcap-localcluster leftovers        list namespaces, links and processes of any run (exit 1 if any)
kpcap-localcluster down             remove everything any run left behind
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading

from kpcap_localcluster import network, processes
from kpcap_localcluster.cluster import LocalCluster, default_nodes


def _all_leftovers() -> dict[str, list[str]]:
    found = network.leftovers()
    found["processes"] = [cmd for _, cmd in processes.processes_of_run()]
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kpcap-localcluster", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start a cluster and keep it until interrupted")
    up.add_argument("--nodes", type=int, default=3, help="simulated nodes (default 3)")
    up.add_argument(
        "--light-nodes", type=int, default=0, help="hollow nodes for control-plane scale (default 0)"
    )
    sub.add_parser("leftovers", help="list what earlier runs left behind")
    sub.add_parser("down", help="remove what earlier runs left behind")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    if args.command == "leftovers":
        found = _all_leftovers()
        print(json.dumps(found, indent=2))
        return 1 if any(found.values()) else 0
    if args.command == "down":
        killed = processes.sweep(None)
        removed = network.remove_leftovers()
        print(json.dumps({"processes": killed, **removed}, indent=2))
        return 0

    cluster = LocalCluster.start(nodes=default_nodes(args.nodes), light_nodes=args.light_nodes)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        print("\nlocal cluster ready. In another shell:\n")
        for key, value in cluster.env().items():
            print(f"  export {key}={value}")
        print("  kubectl get nodes -o wide\n\nCtrl-C tears it down.", flush=True)
        stop.wait()
    finally:
        cluster.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
