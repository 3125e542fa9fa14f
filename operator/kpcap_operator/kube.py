"""The operator's one adapter to the Kubernetes API: every call the handlers make goes through here."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from kpcap_operator.manifests import LABEL_CAPTURE_ID

GROUP, VERSION, PLURAL = "kpcap.io", "v1alpha1", "packetcaptures"
Json = dict[str, Any]

log = logging.getLogger(__name__)


def load_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


class Kube:
    def __init__(self, api: client.ApiClient, *, namespace: str) -> None:
        self.api = api
        self.namespace = namespace
        self.core = client.CoreV1Api(api)
        self.apps = client.AppsV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    def _json(self, obj: Any) -> Json:
        data: Json = self.api.sanitize_for_serialization(obj)
        return data

    def list_captures(self, namespace: str) -> list[Json]:
        listing = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return list(listing.get("items", []))

    def list_pods(self, label_selector: str) -> list[Json]:
        """Pods in the operator's namespace (the samplers, found by their label)."""
        found = self.core.list_namespaced_pod(self.namespace, label_selector=label_selector).items
        return [self._json(pod) for pod in found]

    def request_token(self, *, service_account: str, audience: str, seconds: int) -> tuple[str, float]:
        """A token of ``service_account`` (operator namespace) bound to ``audience``: (token, lifetime s)."""
        request = client.AuthenticationV1TokenRequest(
            spec=client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=seconds)
        )
        answer = self.core.create_namespaced_service_account_token(service_account, self.namespace, request)
        expires = answer.status.expiration_timestamp
        lifetime = float(seconds)
        if expires is not None:
            lifetime = max(60.0, (expires - datetime.now(UTC)).total_seconds())
        return str(answer.status.token), lifetime

    def list_nodes(self) -> list[Json]:
        return [self._json(node) for node in self.core.list_node().items]

    def create_daemonset(self, manifest: Json) -> bool:
        """Create it unless it exists; True if this call created it (idempotent across restarts)."""
        try:
            self.apps.create_namespaced_daemon_set(self.namespace, manifest)
        except ApiException as err:
            if err.status == 409:
                return False
            raise
        return True

    def delete_capture_daemonsets(self, capture_id: str) -> list[str]:
        """Delete every DaemonSet of the capture (by label, so a renamed or duplicate one goes too)."""
        found = self.apps.list_namespaced_daemon_set(
            self.namespace, label_selector=f"{LABEL_CAPTURE_ID}={capture_id}"
        ).items
        deleted = []
        for ds in found:
            try:
                self.apps.delete_namespaced_daemon_set(
                    ds.metadata.name,
                    self.namespace,
                    body=client.V1DeleteOptions(propagation_policy="Background"),
                )
                deleted.append(ds.metadata.name)
            except ApiException as err:
                if err.status != 404:
                    raise
        return deleted
