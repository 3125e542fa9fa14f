"""The operator leader killed mid-capture, ten times in a row: failover time, and every capture right.

    sudo .venv/bin/python benchmarks/failover.py [--runs 10] [--time-limit 25]

A local cluster of 3 simulated nodes; the chart installed with ``operator.replicas: 2`` (leader
election on the Lease ``kpcap-ha-operator-leader``), as the e2e tests install it. Each run
(``tests.support.ha.run_failover``): a full capture on the two ``colo-a`` nodes to a fresh bucket;
packets sent, the leader's process SIGKILLed (its pod's container process group, by the id the
process kubelet reports), more packets sent while no replica leads and after the standby took over;
then the capture's end, its two files read back (exactly the 25 matching packets each) and the
capture's DaemonSets counted every 0.2 s (never more than one). Failover: from the kill to the
Lease's new holder (read every 0.1 s). The killed container is restarted by its kubelet and stands
by for the next run. Prints each run, then p50 and max of the failover times. Root is needed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from kpcap_localcluster.cluster import LocalCluster, default_nodes
from kpcap_localcluster.install import install
from tests.support.ha import FailoverRun, lease_holder, run_failover, serving_replicas
from tests.support.waiting import wait_for


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="failover.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--time-limit", type=int, default=25)
    args = parser.parse_args(argv)
    cluster = LocalCluster.start(nodes=default_nodes(3))
    runs: list[FailoverRun] = []
    try:
        installation = install(
            cluster,
            release="kpcap-ha",
            namespace="kpcap-ha",
            values={"operator": {"replicas": 2, "reportGraceSeconds": 10}, "sampler": {"enabled": False}},
            timeout=180,
        )
        cluster.kubectl("create", "namespace", "failover")
        for index in range(1, args.runs + 1):
            wait_for(
                lambda: serving_replicas(installation, count=2), timeout=120, what="both replicas serving"
            )
            wait_for(lambda: lease_holder(installation), timeout=30, what="a leader")
            started = time.monotonic()
            run = run_failover(
                installation, namespace="failover", name=f"failover-{index}", time_limit=args.time_limit
            )
            runs.append(run)
            print(f"run {index}: {run} ({time.monotonic() - started:.0f}s)", flush=True)
            cluster.kubectl(
                "delete", "pcaps", "--all", "-n", "failover", "--wait=true", "--timeout=60s", check=False
            )
    finally:
        cluster.stop()
    times = [r.failover_seconds for r in runs]
    if times:
        right = sum(r.ok for r in runs)
        print(
            f"{len(runs)} runs, {right} right;"
            f" failover p50 {statistics.median(times):.1f}s, max {max(times):.1f}s"
        )
    return 0 if runs and all(r.ok for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
