"""Kopf wiring: which events call which function. Handlers stay thin: reconcile decides, Kopf patches.

Built into an explicit registry by ``build_registry(settings, kube)`` so nothing is global and the
settings object reaches every handler by argument.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf

from kpcap.errors import SpecInvalid
from kpcap.model import CaptureType, capture_id, parse_spec
from kpcap_operator import decisions, metrics
from kpcap_operator.kube import GROUP, PLURAL, VERSION, Kube
from kpcap_operator.reconcile import AdmissionLedger, reconcile
from kpcap_operator.samples import Sampling
from kpcap_operator.settings import OperatorSettings

log = logging.getLogger(__name__)
FINALIZER = "kpcap.io/cleanup"


def _now() -> datetime:
    return datetime.now(UTC)


def _not_finished(status: kopf.Status, **_: Any) -> bool:
    return status.get("status") not in decisions.TERMINAL


def validate_admission(
    *,
    body: dict[str, Any],
    operation: str,
    settings: OperatorSettings,
    kube: Kube,
    now: datetime,
    old: dict[str, Any] | None = None,
) -> None:
    """The webhook's checks: a message naming the field, and the two rules at create time.

    An UPDATE that leaves the spec as it was (finalizers, annotations, labels) is always allowed: the
    object may predate the webhook (or a stricter version of it), and refusing such an update would
    keep the operator from removing its finalizer, so the object could never be deleted.
    """
    if operation == "UPDATE" and old is not None and old.get("spec") == body.get("spec"):
        return
    try:
        spec = parse_spec(body.get("spec"), now=now if operation == "CREATE" else None)
    except SpecInvalid as invalid:
        raise kopf.AdmissionError(str(invalid), code=422) from None
    if operation != "CREATE":
        return
    meta = body["metadata"]
    # The object has no uid/creationTimestamp yet: it is the newest capture of its namespace.
    me = decisions.CaptureRef(
        name=meta.get("name") or meta.get("generateName", "?"),
        uid="~new",
        created=now + timedelta(days=1),
        type=spec.type,
        status=None,
        refused_by_rule=False,
        valid=True,
    )
    others = [decisions.capture_ref(other) for other in kube.list_captures(meta["namespace"])]
    window = timedelta(seconds=settings.simple_rate_window_seconds)
    if spec.type == CaptureType.FULL:
        blocker = decisions.full_capture_conflict(capture=me, others=others)
    else:
        recent = dataclasses.replace(me, created=now)
        blocker = decisions.simple_rate_conflict(capture=recent, others=others, window=window)
    if blocker is not None:
        _, message = decisions.conflict_message(capture_type=spec.type, blocker=blocker, window=window)
        raise kopf.AdmissionError(message, code=429)


def build_registry(*, settings: OperatorSettings, kube: Kube, sampling: Sampling) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    ledger = AdmissionLedger()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # A bare registry has no default login handlers: in a pod the ServiceAccount, else KUBECONFIG.
        info: kopf.ConnectionInfo | None = kopf.login_with_service_account(**kwargs)
        if info is None:
            return kopf.login_with_kubeconfig(**kwargs)
        # Kopf names the server https://kubernetes.default.svc, which needs cluster DNS; the
        # variables the kubelet sets work wherever the pod runs (as the kubernetes client does).
        host, port = os.environ.get("KUBERNETES_SERVICE_HOST"), os.environ.get("KUBERNETES_SERVICE_PORT")
        if host and port:
            host = f"[{host}]" if ":" in host else host
            info = dataclasses.replace(info, server=f"https://{host}:{port}")
        return info

    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        interval=settings.reconcile_interval_seconds,
        when=_not_finished,
        backoff=2,
        registry=registry,
    )
    def reconcile_capture(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
        try:
            result = reconcile(
                body=dict(body), settings=settings, kube=kube, ledger=ledger, sampling=sampling, now_fn=_now
            )
        except Exception:
            metrics.RECONCILE_ERRORS.labels(stage="reconcile").inc()
            raise
        for key, value in result.status.items():
            patch.status[key] = value
        for event in result.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
            log.info("%s/%s %s: %s", body.metadata.namespace, body.metadata.name, event.reason, event.message)
        nodes = (body.get("status") or {}).get("nodes") or {}
        gauge = metrics.NODES_REPORTING.labels(namespace=body.metadata.namespace, capture=body.metadata.name)
        if result.finished is not None:
            metrics.CAPTURES.labels(type=body.spec.get("type", "?"), status=result.finished.value).inc()
            metrics.NODES_REPORTING.remove(body.metadata.namespace, body.metadata.name)
        else:
            gauge.set(len(nodes))

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    def clean_finished(body: kopf.Body, status: kopf.Status, **_: Any) -> None:
        if status.get("status") in decisions.TERMINAL:
            kube.delete_capture_daemonsets(capture_id(body.metadata.uid))

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def delete_capture(body: kopf.Body, **_: Any) -> None:
        cid = capture_id(body.metadata.uid)
        if body.spec.get("type") == CaptureType.SIMPLE.value:
            # The operator's store keeps a simple capture's PCAP as long as its object exists.
            sampling.store.store.delete(
                sampling.store.key(namespace=str(body.metadata.namespace), capture_id=cid)
            )
        deleted = kube.delete_capture_daemonsets(cid)
        log.info(
            "capture %s/%s deleted; removed DaemonSets %s",
            body.metadata.namespace,
            body.metadata.name,
            deleted,
        )

    if settings.webhook_enabled:

        @kopf.on.validate(
            GROUP,
            VERSION,
            PLURAL,
            operations=["CREATE", "UPDATE"],
            ignore_failures=settings.webhook_failure_policy == "Ignore",
            registry=registry,
            id="validate",
        )
        def validate(body: kopf.Body, **kwargs: Any) -> None:
            operation = str(kwargs.get("operation") or "CREATE")
            old = kwargs.get("old")
            validate_admission(
                body=dict(body),
                operation=operation,
                settings=settings,
                kube=kube,
                now=_now(),
                old=dict(old) if old is not None else None,
            )

    return registry


def configure_kopf(
    *, kopf_settings: kopf.OperatorSettings, webhook_server: kopf.WebhookServer | None
) -> None:
    kopf_settings.persistence.finalizer = FINALIZER
    kopf_settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="kpcap.io")
    kopf_settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="kpcap.io", key="last-handled-configuration"
    )
    kopf_settings.posting.level = logging.WARNING  # our own Events say what happened; Kopf's add noise
    kopf_settings.watching.server_timeout = 120
    kopf_settings.networking.request_timeout = 30
    if webhook_server is not None:
        kopf_settings.admission.server = webhook_server
        kopf_settings.admission.managed = "kpcap.io"
