"""The chart's pre-delete hook (`helm uninstall`): leave nothing of kpcap behind, keep what was uploaded.

Runs while the operator still runs (Helm deletes the release's objects after the hook): running
captures are stopped (spec.stop, the one spec change the webhook allows), so their agents upload
what they have; the hook waits a bounded time for them to finish; then captures are deleted (the
operator's finalizer cleans up) or kept as records, kpcap's finalizer is removed from any left
(no operator will be there to remove it), leftover capture DaemonSets are deleted, and the webhook
configurations an operator's Kopf created go (else the apiserver would call a webhook that is gone;
the chart's own configuration Helm deletes after the hook).

    python -m kpcap_operator.uninstall      # in the operator's image, as the chart's hook Job runs it

Pure functions choose what to do from listed objects; ``run`` does it.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kpcap.kubeapi import GROUP, LABEL_CAPTURE_ID, PLURAL, VERSION, load_api_client, request_json
from kpcap.model import TERMINAL

Json = dict[str, Any]
log = logging.getLogger("kpcap.uninstall")

FINALIZER = "kpcap.io/cleanup"
"""kpcap_operator.handlers.FINALIZER (not imported: that would load Kopf and the whole operator);
tests/operator/test_uninstall.py checks they are equal."""
WEBHOOK_CONFIGURATION = "kpcap.io"
"""Kopf's managed configurations (handlers.configure_kopf: admission.managed)."""
WEBHOOK_KINDS = ("validatingwebhookconfigurations", "mutatingwebhookconfigurations")
NOT_FOUND = 404


@dataclass(frozen=True, slots=True, kw_only=True)
class UninstallSettings:
    namespace: str
    """The release namespace, where the capture DaemonSets are."""
    wait_seconds: float
    delete_captures: bool

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> UninstallSettings:
        namespace = env.get("KPCAP_NAMESPACE", "")
        if not namespace:
            raise ValueError("KPCAP_NAMESPACE: required (the release namespace)")
        wait_text = env.get("KPCAP_UNINSTALL_WAIT_SECONDS", "60")
        try:
            wait = float(wait_text)
        except ValueError:
            raise ValueError(
                f"KPCAP_UNINSTALL_WAIT_SECONDS: a number of seconds, got {wait_text!r}"
            ) from None
        delete = env.get("KPCAP_UNINSTALL_DELETE_CAPTURES", "true")
        if delete not in {"true", "false"}:
            raise ValueError(f"KPCAP_UNINSTALL_DELETE_CAPTURES: 'true' or 'false', got {delete!r}")
        return cls(namespace=namespace, wait_seconds=wait, delete_captures=delete == "true")


Ref = tuple[str, str]  # namespace, name


def ref(obj: Mapping[str, Any]) -> Ref:
    return (obj["metadata"]["namespace"], obj["metadata"]["name"])


def finished(obj: Mapping[str, Any]) -> bool:
    return (obj.get("status") or {}).get("status") in TERMINAL


def to_stop(captures: Iterable[Mapping[str, Any]]) -> list[Ref]:
    """Captures still running and not yet asked to stop."""
    return [ref(c) for c in captures if not finished(c) and not (c.get("spec") or {}).get("stop")]


def unfinished(captures: Iterable[Mapping[str, Any]]) -> list[Ref]:
    return [ref(c) for c in captures if not finished(c)]


def finalizer_patch(obj: Mapping[str, Any]) -> Json | None:
    """A merge patch taking kpcap's finalizer off ``obj`` (None: it has none). The resourceVersion
    makes it conditional, so a finalizer another controller adds meanwhile is not lost."""
    finalizers = list(obj["metadata"].get("finalizers") or [])
    if FINALIZER not in finalizers:
        return None
    return {
        "metadata": {
            "finalizers": [f for f in finalizers if f != FINALIZER],
            "resourceVersion": obj["metadata"]["resourceVersion"],
        }
    }


class Cluster:
    """The few API calls of the hook."""

    def __init__(self, api: client.ApiClient) -> None:
        self._api = api

    def captures(self) -> list[Json]:
        items = request_json(self._api, "GET", f"/apis/{GROUP}/{VERSION}/{PLURAL}").get("items") or []
        return list(items)

    def _capture_path(self, capture: Ref) -> str:
        return f"/apis/{GROUP}/{VERSION}/namespaces/{capture[0]}/{PLURAL}/{capture[1]}"

    def patch_capture(self, capture: Ref, patch: Json) -> None:
        request_json(
            self._api,
            "PATCH",
            self._capture_path(capture),
            body=patch,
            content_type="application/merge-patch+json",
        )

    def delete_capture(self, capture: Ref) -> None:
        request_json(self._api, "DELETE", self._capture_path(capture))

    def capture_daemonsets(self, namespace: str) -> list[str]:
        answer = request_json(
            self._api,
            "GET",
            f"/apis/apps/v1/namespaces/{namespace}/daemonsets",
            query=[("labelSelector", LABEL_CAPTURE_ID)],
        )
        return [item["metadata"]["name"] for item in answer.get("items") or []]

    def delete_daemonset(self, namespace: str, name: str) -> None:
        request_json(
            self._api,
            "DELETE",
            f"/apis/apps/v1/namespaces/{namespace}/daemonsets/{name}",
            body={"propagationPolicy": "Background"},
        )

    def webhook_configuration(self, kind: str, name: str) -> Json | None:
        try:
            return request_json(self._api, "GET", f"/apis/admissionregistration.k8s.io/v1/{kind}/{name}")
        except ApiException as err:
            if err.status == NOT_FOUND:
                return None
            raise

    def delete_webhook_configuration(self, kind: str, name: str) -> None:
        request_json(self._api, "DELETE", f"/apis/admissionregistration.k8s.io/v1/{kind}/{name}")


def made_by_an_operator(configuration: Mapping[str, Any] | None) -> bool:
    """A webhook configuration Kopf created (the hook deletes it), not the chart's own (Helm deletes
    that one after the hook, so admission holds while the operator still runs)."""
    if configuration is None:
        return False
    labels = configuration["metadata"].get("labels") or {}
    return labels.get("app.kubernetes.io/managed-by") != "Helm"


def _ignoring_gone(action: Callable[[], None]) -> bool:
    """Run ``action``; False if its object was already gone."""
    try:
        action()
    except ApiException as err:
        if err.status == NOT_FOUND:
            return False
        raise
    return True


def _wait(until: Callable[[], bool], *, seconds: float, interval: float = 1.0) -> bool:
    deadline = time.monotonic() + seconds
    while True:
        if until():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def run(*, cluster: Cluster, settings: UninstallSettings) -> None:
    for capture in to_stop(cluster.captures()):
        if _ignoring_gone(partial(cluster.patch_capture, capture, {"spec": {"stop": True}})):
            log.info("stopped capture %s/%s", *capture)
    if not _wait(lambda: not unfinished(cluster.captures()), seconds=settings.wait_seconds):
        left = ", ".join(f"{ns}/{name}" for ns, name in unfinished(cluster.captures()))
        log.warning("unfinished after %.0fs (uploads may be partial): %s", settings.wait_seconds, left)
    if settings.delete_captures:
        for capture in [ref(c) for c in cluster.captures()]:
            if _ignoring_gone(partial(cluster.delete_capture, capture)):
                log.info("deleted capture %s/%s (its uploaded files stay in the bucket)", *capture)
        # The operator's finalizer handler deletes each DaemonSet and simple capture's PCAP.
        _wait(lambda: not cluster.captures(), seconds=min(settings.wait_seconds, 15.0))
    for obj in cluster.captures():
        patch = finalizer_patch(obj)
        if patch is not None and _ignoring_gone(partial(cluster.patch_capture, ref(obj), patch)):
            log.info("removed finalizer %s from %s/%s", FINALIZER, *ref(obj))
    for name in cluster.capture_daemonsets(settings.namespace):
        if _ignoring_gone(partial(cluster.delete_daemonset, settings.namespace, name)):
            log.info("deleted capture DaemonSet %s/%s", settings.namespace, name)
    for kind in WEBHOOK_KINDS:
        if not made_by_an_operator(cluster.webhook_configuration(kind, WEBHOOK_CONFIGURATION)):
            continue
        if _ignoring_gone(partial(cluster.delete_webhook_configuration, kind, WEBHOOK_CONFIGURATION)):
            log.info("deleted %s %s (an operator had created it)", kind, WEBHOOK_CONFIGURATION)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout)
    try:
        settings = UninstallSettings.from_env(os.environ)
    except ValueError as err:
        log.error("%s", err)  # noqa: TRY400 - the message is the whole story
        return 2
    try:
        run(cluster=Cluster(load_api_client()), settings=settings)
    except ApiException as err:
        log.error("kpcap's uninstall hook failed: %s %s: %s", err.status, err.reason, err.body)  # noqa: TRY400
        return 1
    log.info("kpcap's uninstall hook done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
