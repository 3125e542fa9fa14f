"""One full capture fanned out over many nodes: how long, how many writes, how big, what it costs.

    sudo .venv/bin/python benchmarks/fanout.py [--nodes 20 | --light 2000] [--runs 10] \
        [--time-limit 5] [--packets 100]

``--nodes N``: a local cluster (``kpcap_localcluster``) of N simulated nodes (``kpcap-node-1..N``, one
process kubelet each, real agent processes: 1 and 2 in ``colo-a``, the rest in ``colo-b``).
``--light N``: 2 real nodes (``colo-a``) plus N light nodes in ``colo-b`` (one hollow process keeps
them Ready and runs a light agent, which reports as the real one does, for each capture pod).
kpcap is installed as the e2e tests install it (the CRDs, the agent's RBAC, the storage
credentials; the operator as a process with the real agent image and the chart's report grace of
60 s). Then ``--runs`` full captures in a row, one at a time, each on the nodes of ``colo-b`` (no
filter, ``--time-limit`` s, ``--packets`` per node, to the local S3 server). Per run
(``tests.support.fanout``):

- apply -> every node capturing: from the create until the last target's agent created its
  PacketCaptureReport (its first ``running`` report), by the apiserver's audit log;
- limit -> end: from the last node's time limit (every node capturing + timeLimit) until the
  capture is ``success`` or ``failed`` (the object polled every 0.2 s); the result, and files:
  ``status.filesTotal`` (else ``status.files``) and the objects under the capture's prefix in the
  bucket, against targets;
- apiserver writes (audit log, successful ones): kpcap's per node, that is the agents'
  (``system:serviceaccount:kpcap-system:kpcap-agent``) plus the operator's (``kpcap-admin`` with
  any user agent but the benchmark's own, whose one write is the capture's create), over the
  targets; the agents' refused writes (422: a stale report dropped); listed apart, the nodes' own
  writes (``system:node:*``: Leases, pod status, pod deletions, token requests) and the control
  plane's (controllers, scheduler);
- the capture object's size (its JSON from the apiserver once finished) and the number and mean
  size of its PacketCaptureReports;
- the operator's CPU seconds during the run (utime + stime of ``/proc/PID/stat``) and its peak RSS
  so far (``VmHWM``).

Before the next run the capture's pods are waited for to be gone. Root is needed (the local cluster).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from tests.support.fanout import FanoutBench, Fleet, LightNodes, RealNodes, table


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="fanout.py", description=__doc__.split("\n\n")[0])
    fleets = parser.add_mutually_exclusive_group()
    fleets.add_argument("--nodes", type=int, default=20, help="real simulated nodes (targets: all but 2)")
    fleets.add_argument("--light", type=int, default=0, help="light nodes (the targets) next to 2 real ones")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--time-limit", type=int, default=5)
    parser.add_argument("--packets", type=int, default=100)
    args = parser.parse_args(argv)
    if not args.light and args.nodes < 3:
        parser.error("--nodes: at least 3 (nodes 1 and 2 are colo-a, the targets colo-b)")

    started = time.monotonic()
    fleet: Fleet = LightNodes.start(count=args.light) if args.light else RealNodes.start(count=args.nodes)
    title = f"2 real + {args.light} light nodes" if args.light else f"{args.nodes} nodes"
    print(f"cluster of {title} ready in {time.monotonic() - started:.1f} s", flush=True)
    bench = None
    try:
        work = Path(tempfile.mkdtemp(prefix="kpcap-fanout-"))
        bench = FanoutBench.open(fleet, work=work)
        print(f"operator pid {bench.operator.pid}, log {work / 'operator.log'}", flush=True)
        for _ in range(args.runs):
            run = bench.run(time_limit=args.time_limit, packets=args.packets)
            print(f"{datetime.now(UTC):%H:%M:%S} run {run.index}: {run}", flush=True)
            if run.result != "success" and fleet.cluster.hollow is not None:
                print(fleet.cluster.hollow.log_tail(lines=60))
            elif run.result != "success":
                print(fleet.cluster.pod_logs(namespace="kpcap-system", pod="kpcap-capture-*")[-20000:])
    finally:
        if bench is not None:
            bench.close()
        fleet.stop()
    runs = bench.runs if bench is not None else []
    print(table(runs, title=title))
    ok = [r for r in runs if r.result == "success" and r.files == r.targets == r.bucket_objects]
    return 0 if runs and len(ok) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
