"""One instance of ``benchmarks/latency.py`` (which runs ten): a full capture on the two ``colo-a``
nodes of the session's cluster, every start-up and finish step measured from the audit log and the
agents' logs. Its times are printed, not held to the benchmark's targets: CI machines vary."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kpcap_localcluster.cluster import LocalCluster
from tests.support.latency import END_STEPS, START_STEPS, ColoANodes, LatencyBench, table

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def bench(
    storage_credentials: LocalCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LatencyBench]:
    opened = LatencyBench.open(ColoANodes(storage_credentials), work=tmp_path_factory.mktemp("latency"))
    try:
        yield opened
    finally:
        opened.close()


def test_a_full_capture_is_timed_at_every_step_from_apply_to_success(bench: LatencyBench) -> None:
    run = bench.run(time_limit=2)
    print(table([run]))
    assert run.result == "success", run.error
    assert run.targets == 2
    missing = [key for key, _ in START_STEPS if run.start.get(key) is None]
    missing += [key for key, _ in END_STEPS if run.end.get(key) is None]
    assert not missing, f"steps not found in the audit log or the agents' logs: {missing}"
    assert run.apply_to_capturing is not None
    assert 0 < run.apply_to_capturing < 60
    assert run.limit_to_success is not None
    assert run.limit_to_success < 60
