"""The invalid table of ``test_invalid_specs.py`` with the webhook DISABLED: the operator refuses.

What kubectl's client-side validation or the CRD's schema rejects never becomes an object, webhook or
not, so it cannot reach the operator: for those cases this module only checks they are still
rejected. Unknown fields are PRUNED by the apiserver (structural schema) before anything else sees
the object, so they cannot reach the operator (nor the webhook) either; a client that skips kubectl's
validation gets them silently dropped, which is checked here too. Every other case is created and
must end ``failed`` with exactly the webhook's message (``str(SpecInvalid)`` of ``parse_spec``) and no
DaemonSet.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from kpcap_operator.decisions import REASON_INVALID
from tests.support.captures import Captures
from tests.support.invalid_specs import (
    CASES,
    WEBHOOK_DENIED,
    Case,
    apply,
    mask_times,
    names_field,
    namespace_for_module,
    parse_spec_message,
    simple,
)
from tests.support.operator import RunningOperator, operator_fixture
from tests.support.waiting import wait_for

pytestmark = pytest.mark.e2e

operator = pytest.fixture(scope="module")(operator_fixture(webhook=False))

TO_OPERATOR = [case for case in CASES if case.reaches_operator]
NOT_TO_OPERATOR = [case for case in CASES if not case.reaches_operator]


@pytest.fixture(scope="module")
def module_namespace(operator: RunningOperator) -> Iterator[str]:
    # Depends on the operator so it is deleted while the operator still runs (finalizers).
    yield from namespace_for_module(operator.cluster)


@pytest.fixture
def captures(operator: RunningOperator, module_namespace: str) -> Captures:
    return Captures(operator.cluster, module_namespace)


def test_enough_cases_reach_the_operator() -> None:
    assert len(TO_OPERATOR) >= 12


@pytest.mark.parametrize("case", TO_OPERATOR, ids=[c.id for c in TO_OPERATOR])
def test_the_operator_fails_it_with_the_webhooks_message(
    case: Case, captures: Captures, module_namespace: str
) -> None:
    body = case.body(module_namespace)
    result = apply(captures.cluster, body)
    assert result.returncode == 0, result.stderr
    name = body["metadata"]["name"]
    status = captures.wait_status(name, {"failed", "pending", "running", "success"}, timeout=20)
    assert status["status"] == "failed", status
    assert mask_times(status["errorMessage"]) == mask_times(parse_spec_message(case.spec))
    assert names_field(status["errorMessage"], case.field)
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Admitted"]["status"] == "False"
    assert conditions["Admitted"]["reason"] == REASON_INVALID
    assert conditions["Complete"]["status"] == "False"
    assert "targetNodes" not in status
    assert captures.daemonsets(captures.get(name)) == []


@pytest.mark.parametrize("case", NOT_TO_OPERATOR, ids=[c.id for c in NOT_TO_OPERATOR])
def test_what_the_schema_or_kubectl_rejects_is_rejected_without_the_webhook(
    case: Case, operator: RunningOperator, module_namespace: str
) -> None:
    result = apply(operator.cluster, case.body(module_namespace))
    assert result.returncode != 0, result.stdout
    assert names_field(result.stderr, case.field), result.stderr
    assert WEBHOOK_DENIED not in result.stderr


def test_unknown_fields_are_pruned_before_the_operator_sees_them(captures: Captures) -> None:
    """Without kubectl's client-side validation (any API client) the unknown fields vanish."""
    body = {
        "apiVersion": "kpcap.io/v1alpha1",
        "kind": "PacketCapture",
        "metadata": {"name": "pruned"},
        "spec": simple(timelimit=5, filter={"port": 80, "protocol": 6}),
    }
    created = captures.create(body)
    assert "timelimit" not in created["spec"]
    assert created["spec"]["filter"] == {"protocol": 6}
    status = captures.wait_status("pruned", {"failed", "pending", "running", "success"}, timeout=20)
    # A valid simple capture: it fails for want of samplers in this suite, not for its (dropped) fields.
    assert "unknown field" not in status.get("errorMessage", "")


def test_no_daemonset_for_any_of_them(captures: Captures, module_namespace: str) -> None:
    found = captures.apps.list_namespaced_daemon_set(
        "kpcap-system", label_selector=f"kpcap.io/capture-namespace={module_namespace}"
    ).items
    assert found == []


def test_invalid_captures_are_deleted_cleanly(captures: Captures, module_namespace: str) -> None:
    name = f"bad-{TO_OPERATOR[0].id}"
    captures.wait_status(name, {"failed"})
    captures.delete(name)
    wait_for(
        lambda: (
            name
            not in str(
                captures.custom.list_namespaced_custom_object(
                    "kpcap.io", "v1alpha1", module_namespace, "packetcaptures"
                )
            )
        ),
        timeout=10,
        what=f"{name} to be deleted (its finalizer removed)",
    )
