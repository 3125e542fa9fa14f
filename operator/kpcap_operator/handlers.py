"""Kopf wiring: which events call which function. Handlers stay thin: the reconcilers and the webhook
decide, Kopf patches.

Built into an explicit registry by ``build_registry(settings, kube)`` so nothing is global and the
settings object reaches every handler by argument.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from datetime import UTC, datetime
from typing import Any

import kopf

from kpcap.kubeapi import GROUP, PLURAL, VERSION
from kpcap.model import TERMINAL, CaptureType, capture_id
from kpcap_operator import full_capture, metrics, simple_capture
from kpcap_operator.capture_loop import CaptureLoop, LoopTiming
from kpcap_operator.kube import Kube
from kpcap_operator.leader import AlwaysLeader, Leadership
from kpcap_operator.ledger import AdmissionLedger
from kpcap_operator.reconcile import reconcile
from kpcap_operator.result import Result
from kpcap_operator.samples import Sampling
from kpcap_operator.settings import OperatorSettings
from kpcap_operator.wakeups import Wakeups
from kpcap_operator.webhook.validation import validate_admission

log = logging.getLogger(__name__)
Json = dict[str, Any]
FINALIZER = "kpcap.io/cleanup"


def _now() -> datetime:
    return datetime.now(UTC)


def _not_finished(status: kopf.Status, **_: Any) -> bool:
    return status.get("status") not in TERMINAL


def _observe(*, body: Json, result: Result) -> None:
    """A pass's metrics: nodes reporting while it runs; counted and timed once it finishes."""
    meta, current = body["metadata"], body.get("status") or {}
    # Full captures count their nodes by phase (status.nodes may list only some); simple ones list all.
    counts = result.status.get("nodeCounts") or current.get("nodeCounts")
    nodes = current.get("nodes") or {}
    reporting = sum(n for phase, n in counts.items() if phase != "pending") if counts else len(nodes)
    where = {"namespace": str(meta["namespace"]), "name": str(meta["name"])}
    if result.finished is not None:
        metrics.capture_finished(
            **where,
            capture_type=(body.get("spec") or {}).get("type", "?"),
            status=result.finished.value,
            started=result.status.get("started") or current.get("started"),
            now=_now(),
        )
    else:
        metrics.capture_progress(**where, reporting=reporting, counts=counts)


def build_registry(
    *, settings: OperatorSettings, kube: Kube, sampling: Sampling, leadership: Leadership | None = None
) -> kopf.OperatorRegistry:
    registry = kopf.OperatorRegistry()
    ledger = AdmissionLedger()
    leader: Leadership = leadership or AlwaysLeader()

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

    @kopf.on.startup(registry=registry)
    def watch_daemonsets(**_: Any) -> None:
        kube.start_watching()

    @kopf.on.cleanup(registry=registry)
    def stop_watching_daemonsets(**_: Any) -> None:
        kube.stop_watching()

    wakeups = Wakeups()
    kube.on_change(wakeups.wake)
    timing = LoopTiming.of(settings.reconcile_interval_seconds)

    def one_pass(body: Json) -> Result:
        try:
            result = reconcile(
                body=body,
                settings=settings,
                cluster=kube,
                ledger=ledger,
                samplers=sampling.samplers,
                sample_store=sampling.store,
                now_fn=_now,
            )
        except Exception:
            metrics.RECONCILE_ERRORS.labels(stage="reconcile").inc()
            raise
        _observe(body=body, result=result)
        return result

    def post_events(body: kopf.Body, result: Result) -> None:
        for event in result.events:
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
            log.info("%s/%s %s: %s", body.metadata.namespace, body.metadata.name, event.reason, event.message)

    # One loop per unfinished capture (capture_loop): a pass at once, then whenever its reports or
    # DaemonSets change (the watches wake it), and every few seconds as a safety net.
    @kopf.daemon(GROUP, VERSION, PLURAL, when=_not_finished, backoff=2, registry=registry)
    async def reconcile_capture(body: kopf.Body, uid: str, stopped: kopf.DaemonStopped, **_: Any) -> None:
        cid = capture_id(uid)
        await CaptureLoop(
            capture_id=cid,
            timing=timing,
            is_leader=leader.is_leader,  # a standby replica waits: only the Lease holder reconciles
            run_pass=one_pass,
            write_status=lambda current, changes: kube.patch_capture_status(
                current["metadata"]["namespace"], current["metadata"]["name"], changes
            ),
            report_counts=lambda: kube.reports.counts(cid),
            post_events=lambda result: post_events(body, result),
        ).run(live=body, stopped=stopped, wakeups=wakeups)

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def wake_on_change(uid: str, **_: Any) -> None:
        wakeups.wake(capture_id(uid))  # e.g. spec.stop set: the loop looks now, not at its safety pass

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    def clean_finished(body: kopf.Body, status: kopf.Status, **_: Any) -> None:
        if status.get("status") in TERMINAL:
            full_capture.remove_daemonsets(cluster=kube, body=body, why="found finished")

    # Every replica, leader or not: each one's Kopf removes the finalizer after this handler, so it
    # must clean up first (idempotent: the second deletion finds nothing).
    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def delete_capture(body: kopf.Body, **_: Any) -> None:
        if body.spec.get("type") == CaptureType.SIMPLE.value:
            simple_capture.delete_sample(store=sampling.store, body=body)
        full_capture.remove_daemonsets(cluster=kube, body=body, why="deleted")
        ledger.forget(str(body.metadata.uid))
        metrics.forget_capture(namespace=str(body.metadata.namespace), name=str(body.metadata.name))

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
                cluster=kube,
                now=_now(),
                old=dict(old) if old is not None else None,
            )

    return registry


def configure_kopf(
    *,
    kopf_settings: kopf.OperatorSettings,
    webhook_server: kopf.WebhookServer | None,
    manage_webhook_config: bool = True,
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
        # Unmanaged: the chart's configuration (its CA in caBundle) serves every replica alike.
        kopf_settings.admission.managed = "kpcap.io" if manage_webhook_config else None
