"""The admission webhook's decision: a message naming the field, the two rules at create time, and
an immutable spec after it (only ``stop`` false -> true)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import kopf

from kpcap.errors import SpecInvalid
from kpcap.model import parse_spec
from kpcap_operator import admission, decisions, metrics, spec_changes
from kpcap_operator.cluster import Cluster
from kpcap_operator.settings import OperatorSettings

SPEC_CHANGE_REFUSED = "SpecChangeRefused"
"""The refusal reason (metrics) of an UPDATE changing more than ``stop``."""


def validate_admission(
    *,
    body: Mapping[str, Any],
    operation: str,
    settings: OperatorSettings,
    cluster: Cluster,
    now: datetime,
    old: Mapping[str, Any] | None = None,
) -> None:
    """Raise ``kopf.AdmissionError`` (422: invalid spec, 429: a rule) to refuse the request.

    An UPDATE that leaves the spec as it was (finalizers, annotations, labels) is always allowed: the
    object may predate the webhook (or a stricter version of it), and refusing such an update would
    keep the operator from removing its finalizer, so the object could never be deleted. Any other
    UPDATE may only set ``spec.stop`` from false to true (``spec_changes``).
    """
    if operation == "UPDATE" and old is not None and old.get("spec") == body.get("spec"):
        return
    try:
        spec = parse_spec(body.get("spec"), now=now if operation == "CREATE" else None)
    except SpecInvalid as invalid:
        metrics.refused(source="webhook", reason=decisions.REASON_INVALID)
        raise kopf.AdmissionError(str(invalid), code=422) from None
    if operation != "CREATE":
        problems = spec_changes.refused_changes(old.get("spec"), body.get("spec")) if old else []
        if problems:
            metrics.refused(source="webhook", reason=SPEC_CHANGE_REFUSED)
            raise kopf.AdmissionError(spec_changes.refusal_message(problems), code=422)
        return
    meta = body["metadata"]
    refusal = admission.refusal(
        capture=admission.new_capture(
            name=meta.get("name") or meta.get("generateName", "?"), capture_type=spec.type, now=now
        ),
        others=admission.existing_captures(cluster.list_captures(meta["namespace"])),
        window=timedelta(seconds=settings.simple_rate_window_seconds),
    )
    if refusal is not None:
        metrics.refused(source="webhook", reason=refusal.reason)
        raise kopf.AdmissionError(refusal.message, code=429)
