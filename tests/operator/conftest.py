"""Fixtures of the operator tests (helpers live in ``tests.support``; the operator runs as a process
through ``tests.support.operator.operator_fixture``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.install import Samplers, deploy_samplers
from tests.support.kpcap_install import OPERATOR_NAMESPACE, SAMPLER_VALUES, sampler_ca_file


@pytest.fixture(scope="module")
def samplers(kpcap_installed: LocalCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Samplers]:
    """The chart's sampler DaemonSet (pods on every node), for one test module, then removed."""
    deployed = deploy_samplers(kpcap_installed, namespace=OPERATOR_NAMESPACE, sampler_values=SAMPLER_VALUES)
    # Where operator processes look for it (KPCAP_SAMPLER_CA_FILE): they verify the samplers.
    sampler_ca_file(tmp_path_factory).write_bytes(deployed.ca_certificate())
    try:
        yield deployed
    finally:
        deployed.remove()
