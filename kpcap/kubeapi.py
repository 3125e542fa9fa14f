"""The PacketCapture API's coordinates and the one way every kpcap process gets a Kubernetes client.

Every module that names the kind or its group imports it from here; every process (operator, agent,
sampler) builds its API client with ``load_api_client`` so in-cluster and kubeconfig credentials
are found the same way everywhere.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from kubernetes import client

GROUP: Final = "kpcap.io"
VERSION: Final = "v1alpha1"
PLURAL: Final = "packetcaptures"
KIND: Final = "PacketCapture"
API_VERSION: Final = f"{GROUP}/{VERSION}"
# One node's report on one full capture (crds/packetcapturereport.yaml): written by that node's agent.
REPORT_KIND: Final = "PacketCaptureReport"
REPORT_PLURAL: Final = "packetcapturereports"
LABEL_CAPTURE_ID: Final = "kpcap.io/capture-id"
"""The label tying a capture's DaemonSets and PacketCaptureReports to it (value: the capture id)."""


def load_api_client() -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig (KUBECONFIG or ~/.kube/config)."""
    # Imported here: the client takes 0.3-1 s to import, and the capture agent opens its socket first.
    from kubernetes import client, config

    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()
    return client.ApiClient()


def request_json(
    api: client.ApiClient,
    method: str,
    path: str,
    *,
    body: Any = None,
    content_type: str = "application/json",
    query: list[tuple[str, Any]] | None = None,
) -> dict[str, Any]:
    """One API request, its JSON answer as a dict (no model (de)serialisation: that costs more CPU
    than the request when thousands are made). Raises ``kubernetes.client.rest.ApiException``.

    ``auth_settings=["BearerToken"]``: how this client version sends a kubeconfig's or a pod's token.
    """
    response = api.call_api(
        path,
        method,
        query_params=query or [],
        body=body,
        header_params={"Content-Type": content_type, "Accept": "application/json"},
        auth_settings=["BearerToken"],
        _preload_content=False,
        _return_http_data_only=True,
    )
    data = response.data
    answer: dict[str, Any] = json.loads(data) if data else {}
    return answer


class ClientTransport:
    """A ``kubernetes`` ApiClient as a :class:`kpcap.kubehttp.Transport` (a kubeconfig's or a test's
    credentials): :func:`request_json`, with the client's errors turned into kpcap.kubehttp's."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        import urllib3
        from kubernetes.client.rest import ApiException

        from kpcap.kubehttp import ApiError, NotSent

        try:
            return request_json(self.api, method, path, body=body, content_type=content_type, query=query)
        except ApiException as err:
            raise ApiError(
                status=int(err.status or 0), reason=str(err.reason), body=str(err.body or "")
            ) from err
        except urllib3.exceptions.HTTPError as err:
            cause = err.reason if isinstance(err, urllib3.exceptions.MaxRetryError) else err
            if isinstance(
                cause, urllib3.exceptions.NewConnectionError | urllib3.exceptions.ConnectTimeoutError
            ):
                raise NotSent(str(err)) from err
            raise ConnectionError(str(err)) from err  # sent, fate unknown


def parse_time(text: str | None) -> datetime | None:
    """A timestamp the apiserver or kpcap wrote (RFC 3339, 'Z' or an offset); None for absent/empty."""
    if not text:
        return None
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def status_time(moment: datetime | None = None) -> str:
    """The one form kpcap writes timestamps into objects in: RFC 3339, UTC, whole seconds, 'Z'.

    Whole seconds, as metav1.Time serialises, so every timestamp of an object has the same precision.
    """
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
