"""The fan-out benchmark's scale runs, once each (``benchmarks/fanout.py`` runs them many times).

Each test starts and stops its own cluster: 20 real nodes with a capture on the 18 of ``colo-b``,
and 2 real + 2,000 light nodes with a capture on the light ones (issue 17's acceptance).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from kpcap_localcluster.cluster import LocalCluster
from tests.support.fanout import FanoutBench, Fleet, LightNodes, RealNodes, Run, table

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TIME_LIMIT = 5
PACKETS = 100


def _one_run(fleet: Fleet, work: Path) -> Run:
    cluster: LocalCluster = fleet.cluster
    title = f"{len(cluster.nodes)} real + {len(cluster.light_nodes)} light nodes"
    try:
        bench = FanoutBench.open(fleet, work=work)
        try:
            run = bench.run(time_limit=TIME_LIMIT, packets=PACKETS)
        finally:
            bench.close()
    finally:
        fleet.stop()
    print(table([run], title=title))
    assert not any(cluster.leftovers().values()), cluster.leftovers()
    return run


def test_a_capture_on_18_real_nodes_succeeds_with_a_file_from_each(tmp_path: Path) -> None:
    run = _one_run(RealNodes.start(count=20), tmp_path)
    assert run.targets == 18
    assert run.result == "success", run.error
    assert run.files == run.bucket_objects == 18


def test_a_capture_on_2000_light_nodes_ends_in_time_small_and_in_3_writes_per_node(tmp_path: Path) -> None:
    run = _one_run(LightNodes.start(count=2000), tmp_path)
    assert run.targets == 2000
    assert run.result == "success", run.error
    assert run.files == run.bucket_objects == 2000
    assert run.limit_to_end_s is not None
    assert run.limit_to_end_s <= 30
    assert run.object_bytes < 256 * 1024
    # By the audit log: each node writes its first and its terminal report only (no progress report:
    # its interval at 2,000 targets is 400 s, and the uploading step is reported only where progress
    # is); the operator's writes are per reconcile, not per node: at most 3 kpcap writes per node.
    assert run.writes.agent == 2 * run.targets
    assert run.writes.operator < 0.1 * run.targets
    assert run.writes.agent + run.writes.operator <= 3 * run.targets
    assert run.operator_peak_mib > 0
