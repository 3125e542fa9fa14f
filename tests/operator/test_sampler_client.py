"""Asking the samplers (kpcap_operator.sampler_client): finding them, and asking over HTTPS.

The samplers here are small real HTTPS servers on 127.0.0.1 (answering, slow, refusing, garbled);
the sampler itself is tested in tests/agent/test_sampler_http.py and its neighbours.
"""

from __future__ import annotations

import contextlib
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kpcap.model import parse_spec
from kpcap.tls import issued_certificate, self_signed_certificate
from kpcap_operator.sampler_client import SamplerAnswer, Samplers, SamplerTls, sampler_addresses
from tests.operator.sampler_answers import SPEC, pcap, pod


def test_sampler_addresses_take_running_pods_and_prefer_ready_then_newest() -> None:
    pods = [
        pod("n1", "10.0.0.1"),
        pod("n2", "10.0.0.2", phase="Pending"),
        pod("n3", "10.0.0.3", ready=False, created="2026-01-02T00:00:00Z"),
        pod("n3", "10.0.0.33", ready=True, created="2026-01-01T00:00:00Z"),
        pod("n4", "10.0.0.4", created="2026-01-01T00:00:00Z"),
        pod("n4", "10.0.0.44", created="2026-01-03T00:00:00Z"),
        {"metadata": {}, "spec": {}, "status": {"phase": "Running", "podIP": "10.0.0.9"}},
    ]
    assert sampler_addresses(pods) == {"n1": "10.0.0.1", "n3": "10.0.0.33", "n4": "10.0.0.44"}


# --- asking real HTTPS servers -------------------------------------------------------------------


Behaviour = Callable[[BaseHTTPRequestHandler, dict[str, Any]], None]


class _Handler(BaseHTTPRequestHandler):
    behaviour: Behaviour
    seen: list[tuple[str, dict[str, Any]]]

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.seen.append((self.headers["Authorization"], body))
        self.behaviour(self, body)

    def log_message(self, *_: object) -> None:
        pass


def _reply(status: int, data: bytes, content_type: str) -> Behaviour:
    def behave(handler: BaseHTTPRequestHandler, _body: dict[str, Any]) -> None:
        handler.send_response(status)
        handler.send_header("Content-Type", content_type)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    return behave


def _slow(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    time.sleep(3)
    with contextlib.suppress(OSError):  # the client has given up by now
        _reply(200, pcap([]), "application/vnd.tcpdump.pcap")(handler, body)


Server = Callable[..., tuple[int, list[Any]]]
UNVERIFIED = SamplerTls("")


def ask_node_1(*, port: int, tls: SamplerTls) -> SamplerAnswer:
    """Ask the sampler of node n1 (on 127.0.0.1:port) with a 1 s timeout."""
    samplers = Samplers(
        request_token=lambda *, seconds: ("operator-token", float(seconds)),
        list_sampler_pods=lambda: [pod("n1", "127.0.0.1")],
        port=port,
        timeout=1.0,
        tls=tls,
    )
    try:
        (answer,) = samplers.ask(targets=["n1"], spec=SPEC, since_ns=1, until_ns=2)
    finally:
        samplers.close()
    return answer


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[Server]:
    """Start a sampler stand-in: ``start(behaviour, certificate=(chain PEM, key PEM))``."""
    started: list[ThreadingHTTPServer] = []

    def start(behaviour: Behaviour, certificate: tuple[bytes, bytes] | None = None) -> tuple[int, list[Any]]:
        cert, key = certificate or self_signed_certificate(
            common_name="sampler", dns_names=[], ip_addresses=["127.0.0.1"]
        )
        (tmp_path / "cert.pem").write_bytes(cert)
        (tmp_path / "key.pem").write_bytes(key)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tmp_path / "cert.pem", tmp_path / "key.pem")
        seen: list[Any] = []
        handler = type("Handler", (_Handler,), {"behaviour": staticmethod(behaviour), "seen": seen})
        server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        server.daemon_threads = True
        server.socket = context.wrap_socket(server.socket, server_side=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        started.append(server)
        return server.server_address[1], seen

    yield start
    for server in started:
        server.shutdown()
        server.server_close()


def test_ask_names_every_node_that_did_not_answer_within_the_timeout(
    servers: Server,
) -> None:
    # One port for every node (as in a cluster), so each node gets its own loopback address.
    answer = pcap([(5, b"hello")])
    good_port, seen = servers(_reply(200, answer, "application/vnd.tcpdump.pcap"))
    tokens: list[int] = []

    def request_token(*, seconds: int) -> tuple[str, float]:
        tokens.append(seconds)
        return "operator-token", 600.0

    def samplers_at(port: int, pods: list[dict[str, Any]]) -> Samplers:
        return Samplers(
            request_token=request_token,
            list_sampler_pods=lambda: pods,
            port=port,
            timeout=1.0,
            tls=UNVERIFIED,
        )

    ok = samplers_at(good_port, [pod("n1", "127.0.0.1")])
    (got,) = ok.ask(targets=["n1"], spec=SPEC, since_ns=1, until_ns=2)
    assert got.error is None
    assert got.records is not None
    assert [(r.timestamp_ns, r.data) for r in got.records] == [(5, b"hello")]
    assert got.cut_short == []
    got.close()
    (authorization, body) = seen[0]
    assert authorization == "Bearer operator-token"
    assert body == {"spec": json.loads(json.dumps(body["spec"])), "sinceNs": 1, "untilNs": 2}
    assert parse_spec(body["spec"], now=None) == SPEC

    slow_port, _ = servers(_slow)
    slow = samplers_at(slow_port, [pod("n2", "127.0.0.1")])
    started = time.monotonic()
    (late,) = slow.ask(targets=["n2"], spec=SPEC, since_ns=1, until_ns=2)
    assert time.monotonic() - started < 1.5
    assert late.error == "sampler did not answer within 1 s"

    refusing_port, _ = servers(_reply(403, b'{"error": "caller is not the operator"}', "application/json"))
    refusing = samplers_at(refusing_port, [pod("n3", "127.0.0.1")])
    (refused,) = refusing.ask(targets=["n3"], spec=SPEC, since_ns=1, until_ns=2)
    assert refused.error == "sampler answered 403: caller is not the operator"

    (absent, closed) = samplers_at(1, [pod("n6", "127.0.0.1")]).ask(
        targets=["n5", "n6"], spec=SPEC, since_ns=1, until_ns=2
    )
    assert absent.error == "no running sampler pod on this node"
    assert closed.error is not None
    assert "Connection refused" in closed.error
    assert tokens == [600, 600, 600, 600], "one token request per Samplers, reused while valid"
    for samplers in (ok, slow, refusing):
        samplers.close()


def test_token_is_renewed_before_it_expires() -> None:
    now = [1000.0]
    issued: list[str] = []

    def request_token(*, seconds: int) -> tuple[str, float]:
        issued.append(f"t{len(issued)}")
        return issued[-1], float(seconds)

    samplers = Samplers(
        request_token=request_token,
        list_sampler_pods=list,
        port=1,
        timeout=1.0,
        tls=UNVERIFIED,
        clock=lambda: now[0],
    )
    assert samplers.token() == "t0"
    now[0] += 0.79 * 600
    assert samplers.token() == "t0"
    now[0] += 0.02 * 600
    assert samplers.token() == "t1"


def test_no_token_means_every_asked_node_says_why() -> None:
    def refuse(*, seconds: int) -> tuple[str, float]:
        raise RuntimeError(f"serviceaccounts/token forbidden ({seconds})")

    samplers = Samplers(
        request_token=refuse,
        list_sampler_pods=lambda: [pod("n1", "127.0.0.1")],
        port=1,
        timeout=1.0,
        tls=UNVERIFIED,
    )
    (answer,) = samplers.ask(targets=["n1"], spec=SPEC, since_ns=1, until_ns=2)
    assert answer.error == (
        "the operator could not get its token for the samplers: serviceaccounts/token forbidden (600)"
    )


def test_with_the_ca_only_a_certificate_it_issued_for_that_address_gets_the_token(
    servers: Server, tmp_path: Path
) -> None:
    ca_cert, ca_key = self_signed_certificate(common_name="kpcap-sampler-ca", dns_names=[], ip_addresses=[])
    (tmp_path / "ca.crt").write_bytes(ca_cert)
    verified = SamplerTls(str(tmp_path / "ca.crt"))
    assert verified.verifies
    answer = pcap([(1, b"x")])

    def ask(certificate: tuple[bytes, bytes]) -> tuple[SamplerAnswer, list[Any]]:
        port, seen = servers(_reply(200, answer, "application/vnd.tcpdump.pcap"), certificate)
        return ask_node_1(port=port, tls=verified), seen

    def issued_for(address: str) -> tuple[bytes, bytes]:
        return issued_certificate(
            ca_certificate_pem=ca_cert,
            ca_key_pem=ca_key,
            common_name="n",
            dns_names=[],
            ip_addresses=[address],
        )

    good, seen = ask(issued_for("127.0.0.1"))
    assert good.error is None
    assert len(seen) == 1
    stranger, seen = ask(self_signed_certificate(common_name="x", dns_names=[], ip_addresses=["127.0.0.1"]))
    assert "CERTIFICATE_VERIFY_FAILED" in (stranger.error or "")
    assert seen == [], "the token never reached it"
    wrong_address, seen = ask(issued_for("127.0.0.2"))
    assert "IP address mismatch" in (wrong_address.error or "")
    assert seen == []


def test_a_missing_ca_file_names_the_problem_for_each_asked_node(tmp_path: Path) -> None:
    answer = ask_node_1(port=1, tls=SamplerTls(str(tmp_path / "absent-ca.crt")))
    assert answer.error is not None
    assert answer.error.startswith("the operator cannot verify samplers: CA file [Errno 2] No such file")


def _garbled(handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
    _reply(200, b"<html>proxy error</html>" + bytes(10), "text/html")(handler, body)


def _cut(handler: BaseHTTPRequestHandler, _body: dict[str, Any]) -> None:
    """Two whole records and half of a third, then the connection ends (Content-Length promised more)."""
    whole = pcap([(1, b"one"), (2, b"two"), (3, b"three")])
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(whole)))
    handler.end_headers()
    handler.wfile.write(whole[:-3])
    handler.wfile.flush()
    handler.close_connection = True


def _trickle(handler: BaseHTTPRequestHandler, _body: dict[str, Any]) -> None:
    """The header and one record at once, the rest far too slowly."""
    whole = pcap([(1, b"one"), (2, b"two")])
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(whole)))
    handler.end_headers()
    with contextlib.suppress(OSError):
        handler.wfile.write(whole[: 24 + 16 + 3])
        handler.wfile.flush()
        time.sleep(3)
        handler.wfile.write(whole[24 + 16 + 3 :])


def test_answers_that_break_keep_what_arrived_and_say_why(servers: Server) -> None:
    def ask(behaviour: Behaviour) -> SamplerAnswer:
        port, _ = servers(behaviour)
        return ask_node_1(port=port, tls=UNVERIFIED)

    garbled = ask(_garbled)
    assert garbled.records is None
    assert (garbled.error or "").startswith("sampler answered an unreadable PCAP: not a classic PCAP")

    cut = ask(_cut)
    assert cut.records is not None
    assert [r.data for r in cut.records] == [b"one", b"two"]
    assert len(cut.cut_short) == 1
    assert cut.cut_short == ["answer cut short: ended 3 bytes early"]
    cut.close()

    started = time.monotonic()
    slow = ask(_trickle)
    assert slow.records is not None
    assert [r.data for r in slow.records] == [b"one"]
    assert time.monotonic() - started < 2.6, "the body has a deadline too (twice the timeout)"
    assert slow.cut_short == ["answer not complete within 2 s"]
    slow.close()
