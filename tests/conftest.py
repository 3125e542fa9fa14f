"""Fixtures shared by every test package (helpers live in ``tests.support``).

The local cluster is session-scoped (it takes ~15 s to start) and only started when an ``e2e``
test asks for it, so ``pytest -m "not e2e"`` needs neither root nor a cluster. At the end of the
session the cluster is stopped and the teardown itself is checked: a leftover namespace, link or
process is an error.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import pytest
from kubernetes import client

from kpcap_localcluster.cluster import LocalCluster, default_nodes, remove_mountpoints_if_idle
from tests.support.kpcap_install import apply_storage_credentials, install_kpcap_objects
from tests.support.waiting import wait_for


@pytest.fixture(scope="session")
def local_cluster() -> Iterator[LocalCluster]:
    cluster = LocalCluster.start(nodes=default_nodes(3))
    try:
        yield cluster
    finally:
        cluster.stop()
        left = cluster.leftovers()
        assert not any(left.values()), f"the local cluster's teardown left {left}"
        # Mount points go with the last cluster on the machine (another may still use them).
        assert remove_mountpoints_if_idle() == [], "mount points created for containers were not removed"


@pytest.fixture(scope="session")
def api(local_cluster: LocalCluster) -> client.ApiClient:
    return local_cluster.api_client()


@pytest.fixture(scope="session")
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture(scope="session")
def apps(api: client.ApiClient) -> client.AppsV1Api:
    return client.AppsV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    """A fresh namespace with its default ServiceAccount ready; deleted (and waited for) afterwards."""
    name = f"t-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": name}})

    def default_sa_has_token() -> bool:
        try:
            return bool(core.read_namespaced_service_account("default", name).secrets)
        except client.ApiException:
            return False

    wait_for(default_sa_has_token, timeout=30, what=f"default ServiceAccount in {name}")
    yield name
    core.delete_namespace(name)


@pytest.fixture(scope="session")
def kpcap_installed(local_cluster: LocalCluster) -> LocalCluster:
    """The CRD (without CEL: the test apiserver is 1.20), the operator namespace, the agent's RBAC."""
    install_kpcap_objects(local_cluster)
    return local_cluster


@pytest.fixture(scope="session")
def storage_credentials(kpcap_installed: LocalCluster) -> LocalCluster:
    """The Secret whose keys the operator passes to capture agents: the local S3/GCS servers' access."""
    apply_storage_credentials(kpcap_installed)
    return kpcap_installed
