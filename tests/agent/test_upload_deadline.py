"""The agent's upload retries end inside the operator's report grace: the two are tied, not two numbers.

The operator derives the upload deadline from its grace and puts it into the capture DaemonSet's
environment; the agent reads it there and measures it from ``status.started``, as the operator
measures the grace. These tests go the real way: settings -> DaemonSet manifest -> agent config ->
the storage layer's retry loop.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from kpcap.model import parse_spec
from kpcap.storage import FailureReason, Retrier, StorageError
from kpcap_agent.agent import AgentConfig
from kpcap_operator.manifests import capture_daemonset
from kpcap_operator.settings import OperatorSettings

STARTED = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
SPEC = {
    "type": "full",
    "colo": "colo-a",
    "timeLimit": 30,
    "packetLimit": 100,
    "destinationConf": "s3://bucket/p?region=r",
}


def agent_env(settings: OperatorSettings) -> dict[str, str]:
    """The environment the operator's DaemonSet gives its agents (downward-API values filled in)."""
    manifest = capture_daemonset(
        settings=settings,
        capture_id="a" * 32,
        capture_name="c",
        capture_namespace="team-a",
        spec=parse_spec(SPEC, now=None),
        targets=["node-1"],
    )
    (container,) = manifest["spec"]["template"]["spec"]["containers"]
    env: dict[str, Any] = {e["name"]: e.get("value") for e in container["env"]}
    env.update(KPCAP_NODE_NAME="node-1", KPCAP_POD_NAME="pod-1")
    return env


def grace_ends(settings: OperatorSettings) -> datetime:
    """When the operator counts a node that has not reported as silent (decisions.aggregate)."""
    return STARTED + timedelta(seconds=SPEC["timeLimit"] + settings.report_grace_seconds)


@pytest.mark.parametrize("grace", [5, 60, 600, 3600])
def test_the_upload_deadline_the_agent_gets_ends_before_the_report_grace(grace: int) -> None:
    settings = OperatorSettings(namespace="kpcap-system", agent_image="agent:1", report_grace_seconds=grace)
    cfg = AgentConfig.from_env(agent_env(settings))
    assert cfg.upload_deadline_seconds == settings.upload_deadline_seconds
    assert 0 < settings.upload_deadline_seconds < grace
    # The capture ran its full timeLimit; the upload starts right after.
    now = STARTED + timedelta(seconds=SPEC["timeLimit"])
    policy = cfg.upload_retry(started=STARTED, now=now)
    assert policy is not None
    assert policy.deadline is not None
    assert now + timedelta(seconds=policy.deadline) < grace_ends(settings)
    assert policy.max_attempts >= 100  # the deadline ends the retries, not a count of tries


def test_retries_of_a_failing_upload_stop_inside_the_grace() -> None:
    """The storage layer's retry loop, driven by the policy the agent derives: no try starts after
    the deadline, so the failure is reported while the operator still waits for it."""
    settings = OperatorSettings(namespace="kpcap-system", agent_image="agent:1", report_grace_seconds=60)
    cfg = AgentConfig.from_env(agent_env(settings))
    late_start = STARTED + timedelta(seconds=SPEC["timeLimit"] + 5)  # a slow pod start ate 5 s
    policy = cfg.upload_retry(started=STARTED, now=late_start)
    assert policy is not None
    policy = type(policy)(max_attempts=1000, base_delay=1.0, max_delay=4.0, deadline=policy.deadline)
    clock = [late_start.timestamp()]
    tries: list[float] = []

    def slow_failing_upload() -> None:
        tries.append(clock[0])
        clock[0] += 7.0  # each try takes 7 s and fails transiently
        raise StorageError(
            bucket="bucket", key="k", uri="s3://bucket/k", reason=FailureReason.TIMEOUT, permanent=False
        )

    def sleep(seconds: float) -> None:
        clock[0] += seconds

    retrier = Retrier(policy=policy, sleep=sleep, clock=lambda: clock[0], jitter=lambda: 1.0)
    with pytest.raises(StorageError):
        retrier.call(slow_failing_upload, classify=lambda _: None, what="upload")
    assert len(tries) > 1  # it did retry
    assert max(tries) < grace_ends(settings).timestamp()


def test_a_resumed_upload_past_its_deadline_gets_one_try() -> None:
    settings = OperatorSettings(namespace="kpcap-system", agent_image="agent:1")
    cfg = AgentConfig.from_env(agent_env(settings))
    policy = cfg.upload_retry(started=STARTED, now=grace_ends(settings))
    assert policy is not None
    assert policy.max_attempts == 1


def test_without_a_deadline_in_the_environment_the_storage_default_applies() -> None:
    env = agent_env(OperatorSettings(namespace="kpcap-system", agent_image="agent:1"))
    del env["KPCAP_UPLOAD_DEADLINE_SECONDS"]
    assert AgentConfig.from_env(env).upload_retry(started=STARTED, now=STARTED) is None


def test_the_spec_in_the_environment_is_the_agents_spec() -> None:
    env = agent_env(OperatorSettings(namespace="kpcap-system", agent_image="agent:1"))
    assert json.loads(env["KPCAP_CAPTURE_SPEC"])["timeLimit"] == SPEC["timeLimit"]
    assert AgentConfig.from_env(env).spec.time_limit == SPEC["timeLimit"]


def test_the_agent_reads_the_intervals_and_the_uid_the_operator_sets() -> None:
    settings = OperatorSettings(namespace="kpcap-system", agent_image="agent:1")
    env = agent_env(settings) | {
        "KPCAP_PROGRESS_INTERVAL_SECONDS": "400.0",
        "KPCAP_STOP_POLL_SECONDS": "10.0",
        "KPCAP_CAPTURE_UID": "uid-1",
    }
    cfg = AgentConfig.from_env(env)
    assert (cfg.progress_interval, cfg.stop_poll_interval, cfg.capture_uid) == (400.0, 10.0, "uid-1")
    defaults = AgentConfig.from_env(agent_env(settings))
    assert (defaults.progress_interval, defaults.stop_poll_interval) == (2.0, 1.0)
