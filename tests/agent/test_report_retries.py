"""The agent's calls outlive an apiserver restart: retried while nothing was applied, never a write
whose fate is unknown. A real HTTP server stands in for the apiserver's answers (503 while it
starts, then 200); a closed port for one that is down."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest
from kubernetes import client

from kpcap.kubeapi import ClientTransport
from kpcap.kubehttp import ApiError, NotSent
from kpcap.model import NodePhase
from kpcap_agent import report
from kpcap_agent.report import CaptureApi, NodeReport, _retryable


class Answers(BaseHTTPRequestHandler):
    """503 for the first ``unavailable`` requests, then the method's JSON answer; counts requests."""

    unavailable = 2
    seen: ClassVar[list[str]] = []

    def _answer(self) -> None:
        Answers.seen.append(self.command)
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        code = 503 if len(Answers.seen) <= Answers.unavailable else 200
        body = json.dumps({"metadata": {"uid": "u"}, "status": {"phase": "running"}}).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_PATCH = do_POST = _answer  # noqa: N815 - http.server's names

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    Answers.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _api(host: str) -> CaptureApi:
    configuration = client.Configuration()
    configuration.host = host
    configuration.retries = False  # the client's own retries would hide what is measured
    return CaptureApi(
        ClientTransport(client.ApiClient(configuration)),
        namespace="ns",
        name="c",
        node="n1",
        uid="0123456789abcdef" * 2,
    )


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "RETRY_DELAYS", (0.01, 0.02))
    monkeypatch.setattr(report, "RETRY_SECONDS", 2.0)


def test_a_terminal_report_is_sent_again_while_the_apiserver_answers_503(server: str) -> None:
    assert _api(server).report(NodeReport(phase=NodePhase.DONE, packets=1)) is True
    assert Answers.seen == ["PATCH", "PATCH", "PATCH"]


def test_a_read_is_retried_and_gives_up_by_the_deadline(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _api(server).own_entry() == {"phase": "running"}
    assert Answers.seen == ["GET", "GET", "GET"]
    monkeypatch.setattr(Answers, "unavailable", 10**6)
    monkeypatch.setattr(report, "RETRY_SECONDS", 0.2)
    with pytest.raises(ApiError) as refused:
        _api(server).own_entry()
    assert refused.value.status == 503


def test_a_down_apiserver_is_retried_then_the_error_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report, "RETRY_SECONDS", 0.2)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: connections are refused
    with pytest.raises(NotSent):
        _api(f"http://127.0.0.1:{port}").report(NodeReport(phase=NodePhase.FAILED, error="x"))


def test_a_write_whose_fate_is_unknown_is_not_sent_again() -> None:
    lost = ConnectionResetError("Connection aborted.")  # sent, no answer: applied or not, unknown
    assert _retryable(lost, read=True)
    assert not _retryable(lost, read=False)
    assert not _retryable(ApiError(status=500, reason="", body=""), read=False)
    assert _retryable(ApiError(status=500, reason="", body=""), read=True)
    assert _retryable(ApiError(status=503, reason="", body=""), read=False)
    assert not _retryable(ApiError(status=422, reason="", body=""), read=True)
    assert _retryable(NotSent("refused"), read=False)
