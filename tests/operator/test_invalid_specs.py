"""Invalid PacketCaptures are rejected at `kubectl apply` time with a message naming the field.

This module runs the operator WITH its admission webhook. Three layers can reject an object, each
naming the field, and the table says which one does (so a change of layer is noticed):

- ``KUBECTL``: kubectl's client-side validation against the CRD's published OpenAPI schema (the 1.20
  apiserver has no server-side field validation). It names a field as
  ``ValidationError(PacketCapture.<parent>): unknown field "<leaf>"`` or ``...): missing required
  field "<leaf>"``, or ``ValidationError(PacketCapture.<path>): invalid type``.
- ``SCHEMA``: the apiserver's validation against the CRD's structural schema (``spec.<path>: Invalid
  value``). The CEL rules are stripped on this 1.20 apiserver, so what they say is left to the webhook.
- ``WEBHOOK``: the operator's webhook, whose message is exactly ``str(SpecInvalid)`` of
  ``kpcap.model.parse_spec``.

``test_invalid_specs_no_webhook.py`` feeds the same table to the operator with the webhook disabled.

Note: this 1.20 apiserver build rejects any empty string in a custom resource (kubernetes#99804), so
no case uses "" (``colo: ""`` would be rejected for the wrong reason).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from kubernetes import client

from kpcap_localcluster.cluster import LocalCluster
from tests.support.invalid_specs import (
    CASE_IDS,
    CASES,
    KUBECTL,
    SCHEMA,
    WEBHOOK_DENIED,
    Case,
    apply,
    mask_times,
    names_field,
    namespace_for_module,
    parse_spec_message,
)
from tests.support.operator import RunningOperator, operator_fixture

pytestmark = pytest.mark.e2e


def test_the_table_is_big_enough_and_every_spec_is_invalid() -> None:
    assert len(CASES) >= 25
    assert len(set(CASE_IDS)) == len(CASES)
    for case in CASES:
        message = parse_spec_message(case.spec)
        if not case.pruned:
            assert case.field in message, (case.id, message)


@pytest.fixture(scope="module")
def module_namespace(kpcap_installed: LocalCluster) -> Iterator[str]:
    """One namespace for the whole table (invalid captures never block one another)."""
    yield from namespace_for_module(kpcap_installed)


operator = pytest.fixture(scope="module")(operator_fixture(webhook=True))


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_rejected_at_apply_time_naming_the_field(
    case: Case, operator: RunningOperator, module_namespace: str
) -> None:
    result = apply(operator.cluster, case.body(module_namespace))
    assert result.returncode != 0, f"{case.id} was admitted: {result.stdout}"
    stderr = result.stderr
    assert names_field(stderr, case.field), f"{case.id}: {case.field} not named in {stderr!r}"
    if case.rejected_by == KUBECTL:
        assert "error validating data: ValidationError(" in stderr, stderr
    elif case.rejected_by == SCHEMA:
        assert f'The PacketCapture "bad-{case.id}" is invalid' in stderr, stderr
        assert WEBHOOK_DENIED not in stderr
    else:
        assert WEBHOOK_DENIED in stderr, stderr
        got = stderr.split(WEBHOOK_DENIED, 1)[1].strip()
        assert mask_times(got) == mask_times(parse_spec_message(case.spec))


def test_nothing_was_created(operator: RunningOperator, module_namespace: str) -> None:
    listing = client.CustomObjectsApi(operator.cluster.api_client()).list_namespaced_custom_object(
        "kpcap.io", "v1alpha1", module_namespace, "packetcaptures"
    )
    assert listing["items"] == []
