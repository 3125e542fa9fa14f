"""The admission webhook's decision, without the apiserver: the cluster is a plain in-memory object.

tests/operator/test_webhook.py proves the same through the real apiserver and Kopf's server.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
import pytest

from kpcap_operator.settings import OperatorSettings
from kpcap_operator.webhook import validate_admission
from tests.support.captures import full_spec
from tests.support.cluster_in_memory import InMemoryCluster, capture

T0 = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)
SETTINGS = OperatorSettings(namespace="kpcap-system", agent_image="kpcap-agent:test")
FULL = full_spec()
SIMPLE: dict[str, Any] = {"type": "simple", "timeLimit": 10, "packetLimit": 100}


def request(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """What the apiserver sends for a CREATE: no uid or creationTimestamp yet."""
    return {"metadata": {"name": name, "namespace": "team-a"}, "spec": spec}


def denied(cluster: InMemoryCluster, body: dict[str, Any], **kwargs: Any) -> kopf.AdmissionError:
    kwargs.setdefault("operation", "CREATE")
    with pytest.raises(kopf.AdmissionError) as caught:
        validate_admission(body=body, settings=SETTINGS, cluster=cluster, now=T0, **kwargs)
    return caught.value


def allowed(cluster: InMemoryCluster, body: dict[str, Any], **kwargs: Any) -> None:
    kwargs.setdefault("operation", "CREATE")
    validate_admission(body=body, settings=SETTINGS, cluster=cluster, now=T0, **kwargs)


def test_a_valid_capture_is_allowed() -> None:
    allowed(InMemoryCluster(), request("valid", FULL))


def test_an_invalid_spec_is_refused_with_422_naming_the_field() -> None:
    error = denied(InMemoryCluster(), request("bad", {**SIMPLE, "byteLimit": 1000}))
    assert error.code == 422
    assert str(error).startswith("spec.byteLimit: only allowed when spec.type is 'full'")


def test_a_snap_length_out_of_range_is_refused_naming_the_range() -> None:
    error = denied(InMemoryCluster(), request("bad", {**FULL, "snapLength": 262_145}))
    assert error.code == 422
    assert str(error) == "spec.snapLength: must be an integer from 1 to 262144 (bytes), got 262145"


def test_a_second_full_capture_is_refused_with_429_while_one_is_active() -> None:
    cluster = InMemoryCluster()
    first = cluster.add(
        capture("first", FULL, created=T0 - timedelta(seconds=5), status={"status": "running"})
    )
    error = denied(cluster, request("second", FULL))
    assert error.code == 429
    assert "only one pending or running full capture is allowed per namespace" in str(error)
    assert first["metadata"]["uid"].replace("-", "") in str(error)
    assert "first" in str(error)


def test_an_undecided_older_full_capture_blocks_a_new_one() -> None:
    cluster = InMemoryCluster()
    cluster.add(capture("first", FULL, created=T0))
    assert denied(cluster, request("second", FULL)).code == 429


def test_other_namespaces_and_finished_captures_do_not_block() -> None:
    cluster = InMemoryCluster()
    cluster.add(capture("there", FULL, created=T0, namespace="team-b", status={"status": "running"}))
    cluster.add(capture("done", FULL, created=T0, status={"status": "success"}))
    allowed(cluster, request("here", FULL))


def test_a_second_simple_capture_within_the_window_is_refused() -> None:
    cluster = InMemoryCluster()
    cluster.add(capture("sample-1", SIMPLE, created=T0 - timedelta(seconds=59), status={"status": "failed"}))
    error = denied(cluster, request("sample-2", SIMPLE))
    assert error.code == 429
    assert "only one simple capture is allowed per namespace every 60 s" in str(error)
    assert "sample-1 was submitted at 2025-05-01T11:59:01Z" in str(error)
    allowed(cluster, request("full", FULL)), "a full capture is not subject to the simple rule"


def test_a_simple_capture_outside_the_window_or_refused_by_a_rule_does_not_block() -> None:
    cluster = InMemoryCluster()
    cluster.add(capture("old", SIMPLE, created=T0 - timedelta(seconds=60), status={"status": "success"}))
    refused = {"status": "failed", "conditions": [{"type": "Admitted", "reason": "SimpleCaptureRateLimited"}]}
    cluster.add(capture("refused", SIMPLE, created=T0 - timedelta(seconds=1), status=refused))
    allowed(cluster, request("new", SIMPLE))


def test_updates_are_validated_without_a_time_bound_and_without_the_rules() -> None:
    cluster = InMemoryCluster()
    cluster.add(capture("other", FULL, created=T0, status={"status": "running"}))
    old = capture("updated", {**FULL, "timeLimit": 300}, created=T0, status={"status": "running"})
    stop = {**old, "spec": {**old["spec"], "stop": True}}
    allowed(cluster, stop, operation="UPDATE", old=old)
    bad = {**old, "spec": {**old["spec"], "offsetTime": "2025-05-01T11:00:00Z"}}
    error = denied(cluster, bad, operation="UPDATE", old=old)
    assert error.code == 422
    assert "spec.offsetTime: only allowed when spec.type is 'simple'" in str(error)


def test_an_update_leaving_an_invalid_spec_as_it_was_is_allowed() -> None:
    """So the operator can remove the finalizer of an object that predates the webhook."""
    old = capture("legacy", {**SIMPLE, "byteLimit": 1000}, created=T0)
    updated = {**old, "metadata": {**old["metadata"], "finalizers": []}}
    allowed(InMemoryCluster(), updated, operation="UPDATE", old=old)


# --- an immutable spec: only stop false -> true ---------------------------------------------------

RUNNING_FULL = full_spec(timeLimit=300, byteLimit=1000, filter={"protocol": 6, "destinationPort": 80})
CHANGES: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "type",
        {"type": "simple", "destinationConf": None, "byteLimit": None},
        ["spec.byteLimit", "spec.destinationConf", "spec.type"],
    ),
    ("system", {"system": "magic-transit"}, ["spec.system"]),
    ("filter field", {"filter": {"protocol": 6, "destinationPort": 443}}, ["spec.filter.destinationPort"]),
    (
        "filter added",
        {"filter": {"protocol": 6, "destinationPort": 80, "sourceAddress": "198.18.0.1"}},
        ["spec.filter.sourceAddress"],
    ),
    ("timeLimit", {"timeLimit": 60}, ["spec.timeLimit"]),
    ("packetLimit", {"packetLimit": 5}, ["spec.packetLimit"]),
    ("byteLimit", {"byteLimit": 5}, ["spec.byteLimit"]),
    ("colo", {"colo": "colo-b"}, ["spec.colo"]),
    ("snapLength added", {"snapLength": 64}, ["spec.snapLength"]),
    ("nodeSelector", {"nodeSelector": {"a": "b"}}, ["spec.nodeSelector"]),
    ("destinationConf", {"destinationConf": "gs://other-bucket"}, ["spec.destinationConf"]),
    ("two at once", {"timeLimit": 60, "colo": "colo-b"}, ["spec.colo", "spec.timeLimit"]),
]


def _updated(old: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    spec = {key: value for key, value in {**old["spec"], **change}.items() if value is not None}
    return {**old, "spec": spec}


@pytest.mark.parametrize(("change", "fields"), [c[1:] for c in CHANGES], ids=[c[0] for c in CHANGES])
def test_a_spec_change_after_creation_is_refused_naming_the_field(
    change: dict[str, Any], fields: list[str]
) -> None:
    old = capture("running", RUNNING_FULL, created=T0, status={"status": "running"})
    error = denied(InMemoryCluster(), _updated(old, change), operation="UPDATE", old=old)
    assert error.code == 422
    message = str(error)
    named = [part.split(":", 1)[0] for part in message.split("; ")[:-1]]
    assert named == fields, message
    assert message.endswith("only spec.stop may change, from false to true")


def test_the_refusal_says_what_the_field_was_and_would_be() -> None:
    old = capture("running", full_spec(), created=T0, status={"status": "running"})
    message = str(denied(InMemoryCluster(), _updated(old, {"timeLimit": 60}), operation="UPDATE", old=old))
    assert message == (
        "spec.timeLimit: immutable once the capture is created (was 30, now 60); "
        "only spec.stop may change, from false to true"
    )


def test_stop_may_go_from_false_or_unset_to_true_but_never_back() -> None:
    for before in ({"stop": False}, {}):
        old = capture("running", {**full_spec(), **before}, created=T0, status={"status": "running"})
        allowed(InMemoryCluster(), _updated(old, {"stop": True}), operation="UPDATE", old=old)
    stopped = capture("stopped", full_spec(stop=True), created=T0, status={"status": "running"})
    message = str(
        denied(InMemoryCluster(), _updated(stopped, {"stop": False}), operation="UPDATE", old=stopped)
    )
    assert message.startswith("spec.stop: cannot change from true to false; ")


def test_offset_time_of_a_simple_capture_is_immutable_too() -> None:
    old = capture("sample", {**SIMPLE, "offsetTime": "2025-05-01T11:00:00Z"}, created=T0)
    new = _updated(old, {"offsetTime": "2025-05-01T11:30:00Z"})
    assert str(denied(InMemoryCluster(), new, operation="UPDATE", old=old)).startswith(
        'spec.offsetTime: immutable once the capture is created (was "2025-05-01T11:00:00Z", '
        'now "2025-05-01T11:30:00Z")'
    )


def test_labels_annotations_and_finalizers_may_change() -> None:
    old = capture("running", RUNNING_FULL, created=T0, status={"status": "running"})
    meta = {**old["metadata"], "labels": {"a": "b"}, "annotations": {"c": "d"}, "finalizers": []}
    allowed(InMemoryCluster(), {**old, "metadata": meta}, operation="UPDATE", old=old)
