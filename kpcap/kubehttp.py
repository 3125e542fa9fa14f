"""A Kubernetes API transport in the standard library, for the capture agent's few calls.

Why: the capture agent makes a handful of JSON requests (read its capture, write its node's report),
and the Kubernetes client takes 0.4 s to import on an idle machine (0.3-1 s loaded): most of the
time between a capture pod's socket opening and its node showing as capturing
(benchmarks/latency.py). In a pod, :class:`InClusterTransport` makes the same requests with the
pod's ServiceAccount, as the client's in-cluster configuration does: the apiserver from
``KUBERNETES_SERVICE_HOST``/``PORT``, verified with the ServiceAccount's CA, the bearer token read
from its file (re-read every minute: the kubelet rotates bound tokens), TLS always.
:class:`kpcap.kubeapi.ClientTransport` gives an ``ApiClient`` (a kubeconfig, a test's token) the
same interface.

Errors say what a caller needs to know to retry safely: :class:`ApiError` (the apiserver answered
with an error status), :class:`NotSent` (no connection: the request certainly never arrived), any
other ``OSError`` or ``http.client.HTTPException`` (sent, fate unknown).
"""

from __future__ import annotations

import http.client
import json
import os
import select
import ssl
import threading
import time
from pathlib import Path
from typing import Any, Final, Protocol
from urllib.parse import urlencode

SERVICE_ACCOUNT_DIR: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount")
TOKEN_REREAD_SECONDS: Final = 60.0
REQUEST_TIMEOUT_SECONDS: Final = 30.0
USER_AGENT: Final = "kpcap-agent"


class ApiError(Exception):
    """The apiserver answered with an error status (``body``: its Status object, as text)."""

    def __init__(self, *, status: int, reason: str, body: str) -> None:
        super().__init__(f"HTTP {status} {reason}")
        self.status, self.reason, self.body = status, reason, body


class NotSent(ConnectionError):  # noqa: N818 - says what happened, as ConnectionRefusedError does
    """No connection to the apiserver could be made: the request never reached it."""


class Transport(Protocol):
    """One JSON request to the Kubernetes API; its JSON answer as a dict (``{}`` when empty)."""

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]: ...


def _closed_by_peer(connection: http.client.HTTPConnection) -> bool:
    """Whether an idle connection's socket is readable: the peer closed it (nothing else is due)."""
    sock = connection.sock
    if sock is None:
        return True
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


class InClusterTransport:
    """The pod's ServiceAccount credentials over one kept-alive HTTPS connection (calls serialised)."""

    def __init__(self, *, host: str, port: int, token_file: Path, ca_file: Path) -> None:
        self._host, self._port, self._token_file = host, port, token_file
        self._context = ssl.create_default_context(cafile=str(ca_file))
        self._connection: http.client.HTTPSConnection | None = None
        self._lock = threading.Lock()
        self._token = ""
        self._token_read = -TOKEN_REREAD_SECONDS

    @classmethod
    def from_pod(
        cls, *, environ: dict[str, str] | None = None, directory: Path = SERVICE_ACCOUNT_DIR
    ) -> InClusterTransport | None:
        """The transport of the pod this runs in; None outside a pod (no service env or token)."""
        environ = dict(os.environ) if environ is None else environ
        host, port = environ.get("KUBERNETES_SERVICE_HOST"), environ.get("KUBERNETES_SERVICE_PORT")
        token_file, ca_file = directory / "token", directory / "ca.crt"
        if not host or not port or not token_file.is_file() or not ca_file.is_file():
            return None
        return cls(host=host, port=int(port), token_file=token_file, ca_file=ca_file)

    def _bearer(self) -> str:
        now = time.monotonic()
        if now - self._token_read >= TOKEN_REREAD_SECONDS:
            self._token = self._token_file.read_text().strip()
            self._token_read = now
        return self._token

    def _connected(self) -> http.client.HTTPSConnection:
        if self._connection is not None and _closed_by_peer(self._connection):
            # The apiserver closed the kept-alive connection while it was idle: a new one, before
            # anything is sent (a request sent on a dead one could not be told from a lost answer).
            self._close()
        if self._connection is None:
            connection = http.client.HTTPSConnection(
                self._host, self._port, context=self._context, timeout=REQUEST_TIMEOUT_SECONDS
            )
            try:
                connection.connect()
            except OSError as err:
                connection.close()
                raise NotSent(f"cannot reach the apiserver at {self._host}:{self._port}: {err}") from err
            self._connection = connection
        return self._connection

    def request(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        url = f"{path}?{urlencode(query)}" if query else path
        headers = {
            "Authorization": f"Bearer {self._bearer()}",
            "Accept": "application/json",
            "User-Agent": USER_AGENT,
        }
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = content_type
        with self._lock:
            try:
                status, reason, text = self._exchange(method, url, data, headers)
            except (OSError, http.client.HTTPException):
                self._close()  # NotSent if it never connected; else sent, fate unknown
                raise
        if status >= 400:
            raise ApiError(status=status, reason=reason, body=text)
        answer: dict[str, Any] = json.loads(text) if text else {}
        return answer

    def _exchange(
        self, method: str, url: str, data: bytes | None, headers: dict[str, str]
    ) -> tuple[int, str, str]:
        """One request and its whole answer on the (kept-alive) connection: status, reason, text."""
        connection = self._connected()
        connection.request(method, url, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, response.reason, response.read().decode()

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
