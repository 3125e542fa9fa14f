"""PacketCapture objects in tests: bodies, a valid full spec, and a client for one namespace.

Node reports are written the way the capture agent writes them: its node's PacketCaptureReport,
created and then merge-patched, with the agent ServiceAccount's token, so its RBAC is exercised too.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from kpcap.kubeapi import (
    API_VERSION,
    GROUP,
    KIND,
    LABEL_CAPTURE_ID,
    PLURAL,
    REPORT_KIND,
    REPORT_PLURAL,
    VERSION,
    status_time,
)
from kpcap.names import capture_id, report_name
from kpcap_localcluster.cluster import LocalCluster
from tests.support.kpcap_install import AGENT_SA, OPERATOR_NAMESPACE
from tests.support.waiting import wait_for


def capture_body(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "PacketCapture",
        "metadata": {"name": name},
        "spec": spec,
    }


def full_spec(**overrides: Any) -> dict[str, Any]:
    return {
        "type": "full",
        "timeLimit": 30,
        "packetLimit": 100,
        "colo": "colo-a",
        "destinationConf": "s3://kpcap-test/captures?region=us-east-1",
        **overrides,
    }


class Captures:
    """Create, read and report on captures in one test namespace."""

    def __init__(self, cluster: LocalCluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.custom = client.CustomObjectsApi(cluster.api_client())
        self.apps = client.AppsV1Api(cluster.api_client())
        self._agent_api: client.CustomObjectsApi | None = None

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.create_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, body
        )
        return result

    def get(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, PLURAL, name
        )
        return result

    def status(self, name: str) -> dict[str, Any]:
        return self.get(name).get("status") or {}

    def wait_status(self, name: str, wanted: set[str], *, timeout: float = 30) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            status = self.status(name)
            return status if status.get("status") in wanted else None

        return wait_for(
            reached,
            timeout=timeout,
            what=f"{name} to reach {wanted}",
        )

    def daemonsets(self, capture: dict[str, Any]) -> list[Any]:
        cid = capture["metadata"]["uid"].replace("-", "")
        return list(
            self.apps.list_namespaced_daemon_set(
                OPERATOR_NAMESPACE, label_selector=f"kpcap.io/capture-id={cid}"
            ).items
        )

    @property
    def agent_api(self) -> client.CustomObjectsApi:
        """The API as the agent's ServiceAccount sees it (a token from the TokenRequest API)."""
        if self._agent_api is None:
            core = client.CoreV1Api(self.cluster.api_client())
            token = core.create_namespaced_service_account_token(
                AGENT_SA,
                OPERATOR_NAMESPACE,
                client.AuthenticationV1TokenRequest(
                    spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=3600)
                ),
            ).status.token
            self._agent_api = client.CustomObjectsApi(self.cluster.token_client(token))
        return self._agent_api

    def report(self, name: str, node: str, **entry: Any) -> None:
        """What an agent does: create its node's PacketCaptureReport, or merge-patch its status."""
        entry.setdefault("updated", status_time())
        uid = self.get(name)["metadata"]["uid"]
        cid = capture_id(uid)
        report = report_name(capture_id=cid, node=node)
        body: dict[str, Any] = {
            "apiVersion": API_VERSION,
            "kind": REPORT_KIND,
            "metadata": {
                "name": report,
                "labels": {LABEL_CAPTURE_ID: cid},
                "ownerReferences": [{"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid}],
            },
            "spec": {"capture": name, "node": node},
            "status": entry,
        }
        try:
            self.agent_api.create_namespaced_custom_object(
                GROUP, VERSION, self.namespace, REPORT_PLURAL, body
            )
        except ApiException as err:
            if err.status != 409:
                raise
            self.agent_api.patch_namespaced_custom_object(
                GROUP, VERSION, self.namespace, REPORT_PLURAL, report, {"status": entry}
            )

    def node_report(self, name: str, node: str) -> dict[str, Any]:
        """The status of ``node``'s PacketCaptureReport for capture ``name`` (as the agent wrote it)."""
        cid = capture_id(self.get(name)["metadata"]["uid"])
        found: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, self.namespace, REPORT_PLURAL, report_name(capture_id=cid, node=node)
        )
        return dict(found.get("status") or {})

    def delete(self, name: str) -> None:
        self.custom.delete_namespaced_custom_object(GROUP, VERSION, self.namespace, PLURAL, name)
