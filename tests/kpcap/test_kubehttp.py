"""The standard-library transport (kpcap.kubehttp.InClusterTransport) against a real HTTPS server:
the pod's token and CA, JSON both ways, errors that tell a retry what is safe."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import ClassVar

import pytest

from kpcap.kubehttp import ApiError, InClusterTransport, NotSent
from kpcap.tls import self_signed_certificate


class Apiserver(BaseHTTPRequestHandler):
    """Echoes what it got; 404 under /missing; closes the connection after each answer when told."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[dict[str, object]]] = []
    close_after_answer = False
    say_so = True  # send "Connection: close" with it (else close silently, as an idle timeout does)

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"null")
        Apiserver.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "authorization": self.headers.get("Authorization"),
                "content_type": self.headers.get("Content-Type"),
                "body": body,
            }
        )
        missing = self.path.startswith("/missing")
        answer = json.dumps({"kind": "Status", "code": 404} if missing else {"got": body}).encode()
        self.send_response(404 if missing else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if Apiserver.close_after_answer and Apiserver.say_so:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(answer)
        if Apiserver.close_after_answer:
            self.close_connection = True

    do_GET = do_POST = do_PATCH = _answer  # noqa: N815 - http.server's names

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def pod(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A serving apiserver and a pod's view of it: the service env and the ServiceAccount files."""
    certificate, key = self_signed_certificate(
        common_name="apiserver", dns_names=[], ip_addresses=["127.0.0.1"]
    )
    (tmp_path / "tls.crt").write_bytes(certificate)
    (tmp_path / "tls.key").write_bytes(key)
    accounts = tmp_path / "serviceaccount"
    accounts.mkdir()
    (accounts / "ca.crt").write_bytes(certificate)
    (accounts / "token").write_text("the-token\n")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tmp_path / "tls.crt", tmp_path / "tls.key")
    Apiserver.seen, Apiserver.close_after_answer, Apiserver.say_so = [], False, True
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Apiserver)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    environ = {
        "KUBERNETES_SERVICE_HOST": "127.0.0.1",
        "KUBERNETES_SERVICE_PORT": str(httpd.server_address[1]),
    }
    yield environ, accounts
    httpd.shutdown()


def test_requests_carry_the_pods_token_and_json(pod: tuple[dict[str, str], Path]) -> None:
    environ, accounts = pod
    transport = InClusterTransport.from_pod(environ=environ, directory=accounts)
    assert transport is not None
    patch = [{"op": "test", "path": "/status/phase", "value": "running"}]
    answer = transport.request(
        "PATCH", "/apis/kpcap.io/v1alpha1/x", body=patch, content_type="application/json-patch+json"
    )
    assert answer == {"got": patch}
    assert transport.request("GET", "/apis/x", query=[("resourceVersion", "0")]) == {"got": None}
    first, second = Apiserver.seen
    assert first["authorization"] == "Bearer the-token"
    assert first["content_type"] == "application/json-patch+json"
    assert second["path"] == "/apis/x?resourceVersion=0"


def test_an_error_status_is_an_api_error_with_the_apiservers_words(pod: tuple[dict[str, str], Path]) -> None:
    environ, accounts = pod
    transport = InClusterTransport.from_pod(environ=environ, directory=accounts)
    assert transport is not None
    with pytest.raises(ApiError) as refused:
        transport.request("GET", "/missing/thing")
    assert refused.value.status == 404
    assert json.loads(refused.value.body)["kind"] == "Status"


@pytest.mark.parametrize("say_so", [True, False], ids=["connection-close", "closed-silently"])
def test_a_connection_the_apiserver_closed_is_made_again(
    pod: tuple[dict[str, str], Path], say_so: bool
) -> None:
    # Each request arrives exactly once: a closed connection is found before anything is sent on it.
    environ, accounts = pod
    Apiserver.close_after_answer, Apiserver.say_so = True, say_so
    transport = InClusterTransport.from_pod(environ=environ, directory=accounts)
    assert transport is not None
    for number in range(3):
        assert transport.request("POST", "/apis/x", body={"n": number}) == {"got": {"n": number}}
        time.sleep(0.05)  # the server's close reaches the client's socket
    assert [request["body"] for request in Apiserver.seen] == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_no_apiserver_is_not_sent_and_no_pod_is_no_transport(
    tmp_path: Path, pod: tuple[dict[str, str], Path]
) -> None:
    environ, accounts = pod
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    transport = InClusterTransport.from_pod(
        environ={**environ, "KUBERNETES_SERVICE_PORT": str(closed)}, directory=accounts
    )
    assert transport is not None
    with pytest.raises(NotSent):
        transport.request("POST", "/apis/x", body={})
    assert Apiserver.seen == []
    assert InClusterTransport.from_pod(environ={}, directory=accounts) is None
    assert InClusterTransport.from_pod(environ=environ, directory=tmp_path / "nothing") is None


def test_a_certificate_the_pods_ca_did_not_sign_is_refused(
    pod: tuple[dict[str, str], Path], tmp_path: Path
) -> None:
    environ, accounts = pod
    other, _ = self_signed_certificate(common_name="other", dns_names=[], ip_addresses=["127.0.0.1"])
    (accounts / "ca.crt").write_bytes(other)
    transport = InClusterTransport.from_pod(environ=environ, directory=accounts)
    assert transport is not None
    with pytest.raises(NotSent, match="CERTIFICATE_VERIFY_FAILED"):
        transport.request("GET", "/apis/x")
    assert Apiserver.seen == []
