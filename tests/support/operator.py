"""The operator under test as a real process against the local cluster, and fixtures that run it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from kpcap_localcluster.cluster import LocalCluster
from kpcap_localcluster.ports import free_port
from kpcap_localcluster.processes import ManagedProcess, spawn
from tests.support.kpcap_install import (
    AGENT_SA,
    OPERATOR_NAMESPACE,
    STAND_IN_AGENT_IMAGE,
    sampler_ca_file,
)
from tests.support.waiting import wait_for


@dataclass
class RunningOperator:
    cluster: LocalCluster
    process: ManagedProcess
    env: dict[str, str]
    log_path: Path

    def restart(self) -> None:
        self.process.stop(grace=10)
        self.process = start_operator(self.cluster, self.env, self.log_path)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_operator(cluster: LocalCluster, env: dict[str, str], log_path: Path) -> ManagedProcess:
    """``python -m kpcap_operator`` with ``env``; returns once Kopf has started its watch."""
    proc = spawn(
        name="kpcap-operator",
        argv=[sys.executable, "-m", "kpcap_operator"],
        log_path=log_path,
        run_id=cluster.run_id,
        env=env,
    )
    wait_for(
        lambda: (
            (proc.alive() and "Initial authentication has finished" in log_path.read_text(errors="replace"))
            or not proc.alive()
        ),
        timeout=30,
        what="the operator to start",
    )
    assert proc.alive(), log_path.read_text()
    time.sleep(1.0)  # Kopf has listed the captures and started its watch
    return proc


def operator_env(
    *,
    cluster: LocalCluster,
    tmp_path_factory: pytest.TempPathFactory,
    webhook: bool,
    agent_image: str = STAND_IN_AGENT_IMAGE,
    extra_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The operator process's environment: the admin kubeconfig, short report grace, local ports."""
    return {
        **os.environ,
        "KUBECONFIG": str(cluster.kubeconfig),
        "KPCAP_NAMESPACE": OPERATOR_NAMESPACE,
        "KPCAP_AGENT_IMAGE": agent_image,
        "KPCAP_AGENT_SERVICE_ACCOUNT": AGENT_SA,
        "KPCAP_REPORT_GRACE_SECONDS": "5",
        "KPCAP_WEBHOOK_ENABLED": "true" if webhook else "false",
        "KPCAP_WEBHOOK_HOST": cluster.net.gateway,
        "KPCAP_WEBHOOK_PORT": "9443",
        "KPCAP_METRICS_PORT": str(free_port()),
        "KPCAP_SAMPLE_STORE": str(tmp_path_factory.mktemp("samples")),
        "KPCAP_SAMPLER_CA_FILE": str(sampler_ca_file(tmp_path_factory)),
        **(extra_env or {}),
    }


def run_operator(
    *, cluster: LocalCluster, env: dict[str, str], tmp_path_factory: pytest.TempPathFactory, webhook: bool
) -> Iterator[RunningOperator]:
    """Start the operator, yield it, stop it (and remove its webhook configuration)."""
    log_path = tmp_path_factory.mktemp("operator") / "operator.log"
    running = RunningOperator(
        cluster=cluster, process=start_operator(cluster, env, log_path), env=env, log_path=log_path
    )
    if webhook:
        wait_for(
            lambda: "kpcap.io" in cluster.kubectl("get", "validatingwebhookconfigurations").stdout,
            timeout=30,
            what="the operator's ValidatingWebhookConfiguration",
        )
    try:
        yield running
    finally:
        running.process.stop(grace=10)
        if webhook:
            cluster.kubectl("delete", "validatingwebhookconfiguration", "kpcap.io", "--ignore-not-found")


def operator_fixture(
    *, webhook: bool, agent_image: str = STAND_IN_AGENT_IMAGE, extra_env: dict[str, str] | None = None
) -> Callable[..., Iterator[RunningOperator]]:
    """A fixture function (wrap it in ``pytest.fixture``) running one operator on ``kpcap_installed``."""

    def fixture(
        kpcap_installed: LocalCluster, tmp_path_factory: pytest.TempPathFactory
    ) -> Iterator[RunningOperator]:
        env = operator_env(
            cluster=kpcap_installed,
            tmp_path_factory=tmp_path_factory,
            webhook=webhook,
            agent_image=agent_image,
            extra_env=extra_env,
        )
        yield from run_operator(
            cluster=kpcap_installed, env=env, tmp_path_factory=tmp_path_factory, webhook=webhook
        )

    return fixture
