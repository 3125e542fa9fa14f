"""The admission webhook against the real apiserver: valid captures in, the two rules enforced."""

from __future__ import annotations

import json
from typing import Any

import pytest
from kubernetes import client

from kpcap.kubeapi import GROUP, PLURAL, VERSION
from tests.support.captures import Captures, capture_body, full_spec
from tests.support.operator import RunningOperator, operator_fixture
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

operator = pytest.fixture(scope="module")(operator_fixture(webhook=True))

DENIED = 'admission webhook "validate.kpcap.io" denied the request: '
SIMPLE: dict[str, Any] = {"type": "simple", "timeLimit": 10, "packetLimit": 100}


@pytest.fixture
def captures(operator: RunningOperator, namespace: str) -> Captures:
    return Captures(operator.cluster, namespace)


def refused(captures: Captures, body: dict[str, Any]) -> client.ApiException:
    with pytest.raises(client.ApiException) as caught:
        captures.create(body)
    return caught.value


def finish(captures: Captures, name: str) -> None:
    status = captures.wait_status(name, {"pending", "running"})
    for node in status["targetNodes"]:
        captures.report(name, node, phase="done", packets=1, objectUri=f"s3://kpcap-test/{node}.pcap")
    captures.wait_status(name, {"success"})


def test_a_valid_capture_is_admitted_by_kubectl_apply(captures: Captures) -> None:
    body = capture_body("valid", **full_spec())
    body["metadata"]["namespace"] = captures.namespace
    result = captures.cluster.kubectl("apply", "-f", "-", stdin=json.dumps(body), check=False)
    assert result.returncode == 0, result.stderr
    status = captures.wait_status("valid", {"pending", "running"})
    assert status["targetNodes"] == ["kpcap-node-1", "kpcap-node-2"]
    finish(captures, "valid")


def test_a_second_full_capture_is_refused_while_one_is_active(captures: Captures) -> None:
    first = captures.create(capture_body("first", **full_spec()))
    captures.wait_status("first", {"pending", "running"})
    error = refused(captures, capture_body("second", **full_spec()))
    assert error.status == 429, (error.status, error.body)
    message = json.loads(error.body)["message"]
    assert message.startswith(DENIED)
    assert "only one pending or running full capture is allowed per namespace" in message
    assert "first" in message
    assert first["metadata"]["uid"].replace("-", "") in message

    # kubectl says the same.
    body = capture_body("second", **full_spec())
    body["metadata"]["namespace"] = captures.namespace
    result = captures.cluster.kubectl("apply", "-f", "-", stdin=json.dumps(body), check=False)
    assert result.returncode != 0
    assert "first" in result.stderr
    assert "full capture" in result.stderr

    # The rule is per namespace: only "first" is there, and after it ends a new one is admitted.
    finish(captures, "first")
    captures.create(capture_body("third", **full_spec()))
    captures.wait_status("third", {"pending", "running"})
    captures.custom.patch_namespaced_custom_object(
        GROUP, VERSION, captures.namespace, PLURAL, "third", {"spec": {"stop": True}}
    )
    finish(captures, "third")


def test_a_running_full_capture_does_not_block_other_namespaces(
    captures: Captures, operator: RunningOperator, core: client.CoreV1Api
) -> None:
    captures.create(capture_body("here", **full_spec()))
    captures.wait_status("here", {"pending", "running"})
    other_ns = f"{captures.namespace}-b"
    core.create_namespace({"metadata": {"name": other_ns}})
    try:
        other = Captures(operator.cluster, other_ns)
        other.create(capture_body("there", **full_spec(colo="colo-b")))
        other.wait_status("there", {"pending", "running"})
        other.delete("there")
    finally:
        core.delete_namespace(other_ns)
    finish(captures, "here")


def test_a_second_simple_capture_within_the_window_is_refused(captures: Captures) -> None:
    captures.create(capture_body("sample-1", **SIMPLE))
    # No sampler runs in this suite: the operator fails it, but it was a submission and still counts.
    status = captures.wait_status("sample-1", {"failed", "success"})
    assert {c["reason"] for c in status["conditions"]} == {"Admitted", "SamplersSilent"}
    assert "no sampler answered" in status["errorMessage"]
    error = refused(captures, capture_body("sample-2", **SIMPLE))
    assert error.status == 429, (error.status, error.body)
    message = json.loads(error.body)["message"]
    assert "only one simple capture is allowed per namespace every 60 s" in message
    assert "sample-1 was submitted at" in message
    # A full capture is not subject to the simple rule.
    captures.create(capture_body("full-1", **full_spec()))
    captures.wait_status("full-1", {"pending", "running"})
    finish(captures, "full-1")


def test_a_refused_simple_capture_does_not_start_a_new_window(captures: Captures) -> None:
    captures.create(capture_body("sample-a", **SIMPLE))
    captures.wait_status("sample-a", {"failed", "success"})
    for attempt in range(2):
        error = refused(captures, capture_body(f"sample-b{attempt}", **SIMPLE))
        assert "sample-a was submitted at" in json.loads(error.body)["message"]


def test_updates_are_validated_too(captures: Captures) -> None:
    captures.create(capture_body("updated", **full_spec(timeLimit=300)))
    captures.wait_status("updated", {"pending", "running"})
    with pytest.raises(client.ApiException) as caught:
        captures.custom.patch_namespaced_custom_object(
            GROUP,
            VERSION,
            captures.namespace,
            PLURAL,
            "updated",
            {"spec": {"offsetTime": "2025-05-01T11:00:00Z"}},
        )
    message = json.loads(caught.value.body)["message"]
    assert message.startswith(DENIED)
    assert "spec.offsetTime: only allowed when spec.type is 'simple'" in message
    # Setting stop is a valid update.
    captures.custom.patch_namespaced_custom_object(
        GROUP, VERSION, captures.namespace, PLURAL, "updated", {"spec": {"stop": True}}
    )
    wait_for(lambda: captures.status("updated").get("stopRequested"), timeout=10, what="stopRequested")
    finish(captures, "updated")


# Each change to a running full capture, and the field(s) the refusal must name (issue 15).
IMMUTABLE: list[tuple[str, dict[str, Any], list[str]]] = [
    (
        "type",
        {"type": "simple", "destinationConf": None, "byteLimit": None},
        ["spec.byteLimit", "spec.destinationConf", "spec.type"],
    ),
    ("system", {"system": "magic-transit"}, ["spec.system"]),
    ("filter", {"filter": {"destinationPort": 443}}, ["spec.filter.destinationPort"]),
    ("timeLimit", {"timeLimit": 60}, ["spec.timeLimit"]),
    ("packetLimit", {"packetLimit": 5}, ["spec.packetLimit"]),
    ("byteLimit", {"byteLimit": 5}, ["spec.byteLimit"]),
    ("colo", {"colo": "colo-b"}, ["spec.colo"]),
    ("nodeSelector", {"nodeSelector": {"kpcap.io/any": "x"}}, ["spec.nodeSelector"]),
    ("destinationConf", {"destinationConf": "gs://other-bucket"}, ["spec.destinationConf"]),
]


def _patch(captures: Captures, name: str, spec: dict[str, Any]) -> None:
    captures.custom.patch_namespaced_custom_object(
        GROUP, VERSION, captures.namespace, PLURAL, name, {"spec": spec}
    )


def _refused_naming(captures: Captures, name: str, spec: dict[str, Any]) -> list[str]:
    with pytest.raises(client.ApiException) as caught:
        _patch(captures, name, spec)
    assert caught.value.status == 422, (caught.value.status, caught.value.body)
    message = json.loads(caught.value.body)["message"]
    assert message.startswith(DENIED), message
    assert message.endswith("only spec.stop may change, from false to true"), message
    return [part.split(":", 1)[0] for part in message.removeprefix(DENIED).split("; ")[:-1]]


def test_every_spec_field_is_immutable_but_stop_false_to_true(captures: Captures) -> None:
    spec = full_spec(timeLimit=300, byteLimit=1000, filter={"protocol": 6, "destinationPort": 80})
    captures.create(capture_body("fixed", **spec))
    captures.wait_status("fixed", {"pending", "running"})
    for case, change, fields in IMMUTABLE:
        assert _refused_naming(captures, "fixed", change) == fields, case
    # Metadata only: allowed (the operator's finalizer, users' labels and annotations).
    captures.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        captures.namespace,
        PLURAL,
        "fixed",
        {
            "metadata": {
                "labels": {"team": "a"},
                "annotations": {"note": "x"},
                "finalizers": ["kpcap.io/cleanup", "example.com/keep"],
            }
        },
    )
    captures.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        captures.namespace,
        PLURAL,
        "fixed",
        {"metadata": {"finalizers": ["kpcap.io/cleanup"]}},
    )
    assert captures.get("fixed")["spec"] == {**spec, "system": "host-network", "stop": False}
    _patch(captures, "fixed", {"stop": True})  # the one allowed change
    assert _refused_naming(captures, "fixed", {"stop": False}) == ["spec.stop"]
    # offsetTime belongs to simple captures: immutable there too.
    captures.create(capture_body("sampled", **SIMPLE))
    captures.wait_status("sampled", {"success", "failed"})
    offset = captures.get("sampled")["metadata"]["creationTimestamp"]
    assert _refused_naming(captures, "sampled", {"offsetTime": offset}) == ["spec.offsetTime"]
    finish(captures, "fixed")


def test_an_invalid_capture_from_before_the_webhook_can_still_be_deleted(
    captures: Captures, operator: RunningOperator
) -> None:
    """The webhook can be absent (not yet installed, or raced): an invalid object may exist.

    Once the webhook is back, the operator must still be able to remove that object's finalizer (an
    UPDATE that does not touch the spec), else the object could never be deleted.
    """
    cluster = operator.cluster
    cluster.kubectl("delete", "validatingwebhookconfiguration", "kpcap.io")
    try:
        captures.create(capture_body("legacy", **{**SIMPLE, "byteLimit": 1000}))
        status = captures.wait_status("legacy", {"failed"})
        assert status["errorMessage"].startswith("spec.byteLimit: only allowed when spec.type is 'full'")
    finally:
        operator.restart()  # the operator puts its ValidatingWebhookConfiguration back
        wait_for(
            lambda: "kpcap.io" in cluster.kubectl("get", "validatingwebhookconfigurations").stdout,
            timeout=30,
            what="the operator's ValidatingWebhookConfiguration",
        )
    # The webhook is back: it refuses the same object now...
    error = refused(captures, capture_body("legacy-2", **{**SIMPLE, "byteLimit": 1000}))
    assert "spec.byteLimit" in json.loads(error.body)["message"]
    # ...but the old one can still be deleted (its finalizer removed by the operator).
    captures.delete("legacy")

    def gone() -> bool:
        try:
            captures.get("legacy")
        except client.ApiException as err:
            return err.status == 404
        return False

    wait_for(gone, timeout=15, what="the invalid capture to be deleted")
