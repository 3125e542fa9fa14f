"""Pods of a capture's DaemonSet that the apiserver refused, as a failed capture (pure).

The DaemonSet controller cannot create a pod the apiserver's admission refuses (PodSecurity on a
namespace enforcing ``baseline``, a ResourceQuota, a LimitRange, a policy webhook): it only records
an Event ``FailedCreate`` on the DaemonSet, and the capture would wait for reports that never come.
``kube.Kube.pod_refusals`` reads those Events' messages; this module tells a refusal from a passing
error, names PodSecurity when it is PodSecurity's, and turns it into the capture's failure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from kpcap.model import CaptureStatus
from kpcap_operator.decisions import Outcome, some_nodes

REASON_POD_SECURITY = "PodSecurity"
REASON_PODS_REFUSED = "PodsRefused"
# How PodSecurity admission words a refusal ("... is forbidden: violates PodSecurity "baseline:latest":
# host namespaces (hostNetwork=true), ..."); the apiserver words every admission refusal "is forbidden".
POD_SECURITY_MARKER = "violates PodSecurity"
FORBIDDEN_MARKER = " is forbidden: "
EVENT_PREFIX = "Error creating: "
PRIVILEGED_HINT = (
    "capture pods need hostNetwork and NET_RAW/NET_ADMIN: label the namespace "
    "pod-security.kubernetes.io/enforce=privileged"
)


def admission_refusals(messages: Sequence[str]) -> list[str]:
    """The messages that are refusals of a pod by admission (not a timeout or a passing error), without
    the controller's "Error creating: " prefix, in the order given, each once."""
    found: list[str] = []
    for message in messages:
        text = message.removeprefix(EVENT_PREFIX).strip()
        if FORBIDDEN_MARKER in text and text not in found:
            found.append(text)
    return found


def refusal_reason(message: str) -> str:
    """``PodSecurity`` when PodSecurity admission refused the pod, else ``PodsRefused``."""
    return REASON_POD_SECURITY if POD_SECURITY_MARKER in message else REASON_PODS_REFUSED


def refusal_message(*, refusal: str, namespace: str, unreported: Sequence[str]) -> str:
    """What the capture's errorMessage says: who refused, where, which nodes have no pod, and why."""
    if refusal_reason(refusal) == REASON_POD_SECURITY:
        who = f"PodSecurity admission of namespace {namespace} refused the capture's pods ({PRIVILEGED_HINT})"
    else:
        who = f"the apiserver refused the capture's pods in namespace {namespace}"
    return f"{who}; no pod on {some_nodes(unreported)}: {refusal}"


def refused(
    *, outcome: Outcome, refusals: Sequence[str], namespace: str, unreported: Sequence[str]
) -> Outcome:
    """The running ``outcome`` ended: failed, because the capture's pods were refused (the first
    refusal is the message; PodSecurity's is named in the reason)."""
    first = refusals[0]
    return replace(
        outcome,
        status=CaptureStatus.FAILED,
        packets_remaining=0,
        error_message=refusal_message(refusal=first, namespace=namespace, unreported=unreported),
        reason=refusal_reason(first),
    )
