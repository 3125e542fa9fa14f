"""`helm test`'s verdicts (operator/kpcap_operator/selftest.py); it runs end to end in
tests/charts/test_helm_lifecycle.py."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from kpcap.errors import SpecInvalid
from kpcap.model import parse_spec
from kpcap_operator import selftest


def test_the_probe_is_refused_by_parse_spec_naming_offset_time() -> None:
    probe = selftest.webhook_probe("ns")["spec"]
    with pytest.raises(SpecInvalid, match=r"spec\.offsetTime"):
        parse_spec(probe, now=datetime.now(UTC))


def test_only_the_webhooks_refusal_naming_the_field_passes() -> None:
    message = 'admission webhook "validate.kpcap.io" denied the request: spec.offsetTime: in the future'
    assert (
        selftest.webhook_verdict(status=422, body=json.dumps({"kind": "Status", "message": message})) is None
    )
    assert "admitted" in (selftest.webhook_verdict(status=None, body="") or "")
    assert "expected" in (selftest.webhook_verdict(status=422, body="spec.timeLimit: Invalid") or "")


def test_sampler_addresses_are_the_running_pods() -> None:
    pods = [
        {"spec": {"nodeName": "a"}, "status": {"phase": "Running", "podIP": "198.18.0.2"}},
        {"spec": {"nodeName": "b"}, "status": {"phase": "Pending"}},
    ]
    assert selftest.sampler_addresses(pods) == {"a": "198.18.0.2"}


def test_the_api_answers_in_its_own_envelope_even_refusing() -> None:
    envelope = {"result": None, "success": False, "errors": [{"code": 10000}], "messages": []}
    assert selftest.api_verdict(status=401, body=json.dumps(envelope)) is None
    assert "envelope" in (selftest.api_verdict(status=503, body="no endpoints available") or "")
