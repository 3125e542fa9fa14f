"""Start-up and finish latency of full captures on the local cluster, step by step.

    sudo .venv/bin/python benchmarks/latency.py [--nodes 2] [--runs 10] [--time-limit 5]

A local cluster (``kpcap_localcluster``) of ``--nodes`` simulated nodes (process kubelets, real
agent processes); kpcap installed as the e2e tests install it; then ``--runs`` full captures in a
row, one at a time, on the two ``colo-a`` nodes (``--time-limit`` s, to the local S3 server). Per
run: apply -> every target node capturing, and the last node's time limit -> ``success``, with
each step between them from the audit log and the agents' logs (``tests.support.latency``); then
p50/p90 over the runs. Root is needed (the local cluster). Exit status 1 when a run failed or a
p50 misses its target (1.0 s each).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run from anywhere

from tests.support.latency import ColoANodes, LatencyBench, p50, table

TARGET_SECONDS = 1.0


def main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="latency.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=2, help="simulated nodes (targets: the 2 of colo-a)")
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--time-limit", type=int, default=5)
    args = parser.parse_args(argv)
    if args.nodes < 2:
        parser.error("--nodes: at least 2 (nodes 1 and 2 are colo-a, the targets)")
    started = time.monotonic()
    fleet = ColoANodes.start(count=args.nodes)
    print(f"cluster of {args.nodes} nodes ready in {time.monotonic() - started:.1f} s", flush=True)
    bench = None
    try:
        bench = LatencyBench.open(fleet, work=Path(tempfile.mkdtemp(prefix="kpcap-latency-")))
        for _ in range(args.runs):
            run = bench.run(time_limit=args.time_limit)
            print(
                f"run {run.index}: {run.result}, apply -> capturing {run.apply_to_capturing} s, "
                f"limit -> success {run.limit_to_success} s (load {run.load}) {run.error}",
                flush=True,
            )
    finally:
        if bench is not None:
            bench.close()
        fleet.stop()
    runs = bench.runs if bench is not None else []
    print(table(runs))
    ok = runs and all(r.result == "success" for r in runs)
    start, end = p50(runs, "apply_to_capturing"), p50(runs, "limit_to_success")
    met = start is not None and end is not None and start <= TARGET_SECONDS and end <= TARGET_SECONDS
    return 0 if ok and met else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
