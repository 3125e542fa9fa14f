"""The operator's metrics: agent metrics ports per capture, refusals, capture durations, nodes by
phase and the uploads seen in the agents' reports (the default registry, read by sample value)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from prometheus_client import REGISTRY, generate_latest

from kpcap.kubeapi import status_time
from kpcap.model import capture_id, parse_spec
from kpcap_operator import full_capture, manifests, metrics
from kpcap_operator.settings import OperatorSettings, SettingsError
from tests.support.captures import full_spec
from tests.support.cluster_in_memory import InMemoryCluster, capture
from tests.support.metrics import promtool_check

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
REQUIRED = {"KPCAP_NAMESPACE": "kpcap-system", "KPCAP_AGENT_IMAGE": "kpcap-agent:test"}


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- agent metrics ports -------------------------------------------------------------------------


def test_a_port_per_live_capture_from_a_start_given_by_its_id() -> None:
    ports = (9460, 9469)
    first = manifests.agent_metrics_port(capture_id="a" * 32, ports=ports, taken=set())
    assert first is not None
    assert 9460 <= first <= 9469
    assert manifests.agent_metrics_port(capture_id="a" * 32, ports=ports, taken=set()) == first
    second = manifests.agent_metrics_port(capture_id="a" * 32, ports=ports, taken={first})
    assert second == (9460 if first == 9469 else first + 1)  # the next free one, wrapping
    assert (
        manifests.agent_metrics_port(capture_id="a" * 32, ports=ports, taken=set(range(9460, 9470))) is None
    )


def test_two_live_captures_get_two_ports_and_a_full_range_gets_none() -> None:
    settings = OperatorSettings(
        namespace="kpcap-system", agent_image="kpcap-agent:test", agent_metrics_ports=(9460, 9461)
    )
    cluster = InMemoryCluster()
    given = []
    for name in ("one", "two", "three"):
        body = cluster.add(capture(name, full_spec(), created=T0, namespace=f"ns-{name}"))
        spec = parse_spec(body["spec"], now=None)
        full_capture.ensure_daemonset(
            body=body, spec=spec, targets=["n1"], settings=settings, cluster=cluster
        )
        ds = cluster.daemonsets[manifests.daemonset_name(capture_id(body["metadata"]["uid"]))]
        env = {e["name"]: e.get("value") for e in ds["spec"]["template"]["spec"]["containers"][0]["env"]}
        annotation = ds["spec"]["template"]["metadata"]["annotations"].get(manifests.ANNOTATION_METRICS_PORT)
        assert env.get("KPCAP_METRICS_PORT") == annotation
        # Never a containerPort: with hostNetwork a clash would make the pod unschedulable.
        assert "ports" not in ds["spec"]["template"]["spec"]["containers"][0]
        given.append(annotation)
    assert sorted(given[:2]) == ["9460", "9461"]
    assert given[2] is None  # every port taken: that capture's agents serve no metrics


def test_the_agent_ports_setting_names_the_variable() -> None:
    env = {**REQUIRED, "KPCAP_AGENT_METRICS_PORTS": "9460-9659"}
    assert OperatorSettings.from_env(env).agent_metrics_ports == (9460, 9659)
    assert OperatorSettings.from_env(REQUIRED).agent_metrics_ports is None
    for bad in ("9460", "9660-9460", "0-10", "a-b"):
        with pytest.raises(SettingsError, match=r"KPCAP_AGENT_METRICS_PORTS.*FIRST-LAST"):
            OperatorSettings.from_env({**REQUIRED, "KPCAP_AGENT_METRICS_PORTS": bad})


# --- operator metrics ----------------------------------------------------------------------------


def test_a_finished_capture_is_counted_timed_and_its_gauges_removed() -> None:
    before = sample("kpcap_capture_duration_seconds_count", type="full", status="success")
    metrics.capture_progress(
        namespace="ns", name="c1", reporting=1, counts={"pending": 1, "running": 1, "done": 0}
    )
    assert sample("kpcap_capture_nodes", namespace="ns", capture="c1", phase="pending") == 1
    metrics.capture_finished(
        namespace="ns",
        name="c1",
        capture_type="full",
        status="success",
        started=status_time(T0),
        now=T0 + timedelta(seconds=12),
    )
    assert sample("kpcap_capture_duration_seconds_count", type="full", status="success") == before + 1
    assert (
        REGISTRY.get_sample_value(
            "kpcap_capture_nodes", {"namespace": "ns", "capture": "c1", "phase": "pending"}
        )
        is None
    )
    assert (
        REGISTRY.get_sample_value("kpcap_capture_nodes_reporting", {"namespace": "ns", "capture": "c1"})
        is None
    )


def test_uploads_are_counted_once_from_the_reports_and_timed_from_uploading() -> None:
    done = sample("kpcap_reported_uploads_total", result="done")
    timed = sample("kpcap_reported_upload_duration_seconds_count", result="done")
    uploading = {"phase": "uploading", "updated": status_time(T0)}
    finished = {"phase": "done", "updated": status_time(T0 + timedelta(seconds=3))}
    metrics.report_changed(before={"phase": "running"}, after=uploading)
    metrics.report_changed(before=uploading, after=finished)
    metrics.report_changed(before=finished, after=finished)  # the same terminal report seen again
    metrics.report_changed(before=None, after=finished)  # first seen terminal (a listing): not counted
    assert sample("kpcap_reported_uploads_total", result="done") == done + 1
    assert sample("kpcap_reported_upload_duration_seconds_count", result="done") == timed + 1
    metrics.report_changed(before={"phase": "running"}, after={"phase": "failed"})  # no uploading step
    assert sample("kpcap_reported_uploads_total", result="failed") >= 1
    assert sample("kpcap_reported_upload_duration_seconds_count", result="done") == timed + 1


def test_refusals_by_source_and_reason_and_the_exposition_passes_promtool() -> None:
    before = sample("kpcap_admission_refusals_total", source="webhook", reason="FullCaptureAlreadyActive")
    metrics.refused(source="webhook", reason="FullCaptureAlreadyActive")
    assert (
        sample("kpcap_admission_refusals_total", source="webhook", reason="FullCaptureAlreadyActive")
        == before + 1
    )
    promtool_check(generate_latest(REGISTRY).decode())
