"""The sampler service: env parsing, the HTTPS protocol, real packets from a network namespace, and
real TokenReviews against the local cluster's apiserver (``e2e``)."""

from __future__ import annotations

import http.client
import itertools
import json
import os
import re
import secrets
import signal
import socket
import ssl
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from kpcap.pcap import Record
from kpcap.tls import self_signed_certificate
from kpcap_agent.packetsource import Frame, MemorySource
from kpcap_agent.pcapfile import iter_pcap_records
from kpcap_agent.sampler import SamplerConfig
from kpcap_agent.sampler_service import (
    MAX_BODY_BYTES,
    PCAP_CONTENT_TYPE,
    Refused,
    SamplerEnvError,
    SamplerService,
    SamplerServiceConfig,
    TokenReviewAuthoriser,
    main,
    open_sampler_source,
    parse_duration,
    parse_quantity,
)
from tests.agent.netns import VethPair, in_netns, run, send_frames
from tests.support.waiting import wait_for

NS = 1_000_000_000
CLIENT = "system:serviceaccount:kpcap-system:kpcap-operator"
BASE_ENV = {"KPCAP_NODE_NAME": "node-1", "KPCAP_SAMPLER_CLIENT": CLIENT}
SIMPLE_SPEC: dict[str, Any] = {"type": "simple", "timeLimit": 60, "packetLimit": 100}


# --- configuration from the environment ----------------------------------------------------------


def test_env_defaults_and_values() -> None:
    config = SamplerServiceConfig.from_env(BASE_ENV)
    assert (config.node_name, config.client, config.audience) == ("node-1", CLIENT, "kpcap-sampler")
    assert (config.host, config.port, config.interfaces) == ("0.0.0.0", 9444, None)  # noqa: S104
    assert config.sampler == SamplerConfig(
        sample_rate=100, snap_length=128, byte_budget=64 << 20, retention_seconds=86400
    )
    config = SamplerServiceConfig.from_env(
        BASE_ENV
        | {
            "KPCAP_SAMPLER_RATE": "7",
            "KPCAP_SAMPLER_SNAPLEN": "96",
            "KPCAP_SAMPLER_RETENTION": "90m",
            "KPCAP_SAMPLER_BYTE_BUDGET": "128Mi",
            "KPCAP_SAMPLER_PORT": "10443",
            "KPCAP_SAMPLER_HOST": "::",
            "KPCAP_SAMPLER_AUDIENCE": "other-audience",
            "KPCAP_SAMPLER_INTERFACES": "eth0, eth1,",
        }
    )
    assert config.sampler == SamplerConfig(
        sample_rate=7, snap_length=96, byte_budget=128 << 20, retention_seconds=5400
    )
    assert (config.host, config.port, config.audience) == ("::", 10443, "other-audience")
    assert config.interfaces == ("eth0", "eth1")


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("24h", 86400),
        ("90m", 5400),
        ("45s", 45),
        ("1h30m", 5400),
        ("2h0m5s", 7205),
        ("3600", 3600),
        ("1.5", 1.5),
    ],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    ("text", "size"),
    [
        ("1048576", 1 << 20),
        ("128Mi", 128 << 20),
        ("1Gi", 1 << 30),
        ("500M", 500_000_000),
        ("1.5Ki", 1536),
        ("2k", 2000),
    ],
)
def test_quantities(text: str, size: int) -> None:
    assert parse_quantity(text) == size


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("KPCAP_NODE_NAME", "", r"KPCAP_NODE_NAME: required"),
        ("KPCAP_SAMPLER_CLIENT", " ", r"KPCAP_SAMPLER_CLIENT: required"),
        ("KPCAP_SAMPLER_RATE", "0", r"KPCAP_SAMPLER_RATE: must be in 1\.\.2147483647"),
        ("KPCAP_SAMPLER_RATE", "ten", r"KPCAP_SAMPLER_RATE: must be an integer in 1\.\.2147483647"),
        ("KPCAP_SAMPLER_SNAPLEN", "32", r"KPCAP_SAMPLER_SNAPLEN: must be in 64\.\.65535"),
        ("KPCAP_SAMPLER_SNAPLEN", "1e3", r"KPCAP_SAMPLER_SNAPLEN: must be an integer in 64\.\.65535"),
        ("KPCAP_SAMPLER_RETENTION", "1d", r"KPCAP_SAMPLER_RETENTION: not a duration: '1d'.*at most 604800 s"),
        (
            "KPCAP_SAMPLER_RETENTION",
            "0s",
            r"KPCAP_SAMPLER_RETENTION: .*retention_seconds must be in \(0, 604800\]",
        ),
        (
            "KPCAP_SAMPLER_RETENTION",
            "200h",
            r"KPCAP_SAMPLER_RETENTION: .*retention_seconds must be in \(0, 604800\]",
        ),
        (
            "KPCAP_SAMPLER_BYTE_BUDGET",
            "lots",
            r"KPCAP_SAMPLER_BYTE_BUDGET: not a byte quantity.*320\.\.281474976710656",
        ),
        (
            "KPCAP_SAMPLER_BYTE_BUDGET",
            "100",
            r"KPCAP_SAMPLER_BYTE_BUDGET: '100' is out of range: byte_budget must be in 320\.\.",
        ),
        (
            "KPCAP_SAMPLER_BYTE_BUDGET",
            "1Ei",
            r"KPCAP_SAMPLER_BYTE_BUDGET: .*byte_budget must be in 320\.\.281474976710656",
        ),
        ("KPCAP_SAMPLER_PORT", "0", r"KPCAP_SAMPLER_PORT: must be in 1\.\.65535"),
        ("KPCAP_SAMPLER_PORT", "https", r"KPCAP_SAMPLER_PORT: must be an integer in 1\.\.65535"),
        ("KPCAP_SAMPLER_HOST", "example.com", r"KPCAP_SAMPLER_HOST: must be an IP address"),
        ("KPCAP_SAMPLER_INTERFACES", "eth0,a/b", r"KPCAP_SAMPLER_INTERFACES: must be a comma-separated list"),
        ("KPCAP_SAMPLER_INTERFACES", ",", r"KPCAP_SAMPLER_INTERFACES: must be a comma-separated list"),
    ],
)
def test_env_errors_name_the_variable_and_the_allowed_values(variable: str, value: str, message: str) -> None:
    with pytest.raises(SamplerEnvError, match=message) as raised:
        SamplerServiceConfig.from_env(BASE_ENV | {variable: value})
    assert raised.value.variable == variable


def test_main_exits_2_on_a_bad_variable(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(BASE_ENV | {"KPCAP_SAMPLER_RATE": "-1"}) == 2
    assert (
        "configuration error: KPCAP_SAMPLER_RATE: must be in 1..2147483647 (keep 1 packet in N), got -1"
        in capsys.readouterr().err
    )


# --- the HTTPS protocol with frames from memory -------------------------------------------------


class StaticAuthoriser:
    """Tokens -> outcomes, as the TokenReview authoriser would decide them."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def authorise(self, token: str) -> str:
        self.seen.append(token)
        outcomes = {
            "good": None,
            "other-user": Refused(403, "system:serviceaccount:x:other may not query the sampler"),
            "apiserver-down": Refused(503, "cannot check the token: the apiserver is unreachable"),
        }
        if token not in outcomes:
            raise Refused(401, "token not valid")
        outcome = outcomes[token]
        if outcome is not None:
            raise outcome
        return CLIENT


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    service: SamplerService,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    token: str | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    context = ssl.create_default_context(cadata=service.certificate_pem.decode())
    host, port = service.address
    connection = http.client.HTTPSConnection(host, port, context=context, timeout=10)
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def query(
    service: SamplerService,
    *,
    spec: dict[str, Any],
    since_ns: int,
    until_ns: int,
    token: str | None = "good",  # noqa: S107
) -> Answer:
    body = json.dumps({"spec": spec, "sinceNs": since_ns, "untilNs": until_ns}).encode()
    return request(service, "POST", "/v1/samples", body=body, token=token)


def pcap_records(body: bytes, tmp_path: Path) -> list[Record]:
    path = tmp_path / f"answer-{secrets.token_hex(4)}.pcap"
    path.write_bytes(body)
    return list(iter_pcap_records(path))


def service_config(**sampler: Any) -> SamplerServiceConfig:
    values = {"sample_rate": 1, "snap_length": 64, "byte_budget": 1 << 20} | sampler
    return SamplerServiceConfig(
        node_name="node-1", sampler=SamplerConfig(**values), client=CLIENT, host="127.0.0.1", port=0
    )


@pytest.fixture
def memory_service() -> Iterator[SamplerService]:
    now = time.time_ns()
    frames = [
        Frame.at(
            timestamp_ns=now - 10 * NS + i * NS, data=udp(dport=53 if i % 2 else 5555, marker=i, pad=100)
        )
        for i in range(10)
    ]
    service = SamplerService(
        config=service_config(), source=MemorySource(frames=frames), authoriser=StaticAuthoriser()
    )
    with service:
        wait_for(lambda: service.ring.stats().offered == 10, timeout=10, what="frames offered")
        yield service


def udp(*, dport: int, marker: int, pad: int = 20, src: str = "10.0.0.1", dst: str = "10.0.0.2") -> bytes:
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=src, dst=dst)
        / UDP(sport=40000, dport=dport)
        / Raw(marker.to_bytes(4, "big") + bytes(pad))
    )


def test_healthz_needs_no_token(memory_service: SamplerService) -> None:
    answer = request(memory_service, "GET", "/healthz")
    assert (answer.status, answer.body) == (200, b"ok")


def test_query_answers_a_nanosecond_little_endian_pcap(
    memory_service: SamplerService, tmp_path: Path
) -> None:
    spec = SIMPLE_SPEC | {"filter": {"destinationPort": 5555, "protocol": 17}, "packetLimit": 3}
    answer = query(memory_service, spec=spec, since_ns=0, until_ns=2**63 - 1)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == PCAP_CONTENT_TYPE
    assert answer.headers["x-kpcap-node"] == "node-1"
    assert answer.headers["x-kpcap-sample-rate"] == "1"
    assert answer.headers["x-kpcap-held-records"] == "10"
    assert int(answer.headers["content-length"]) == len(answer.body) == 24 + 3 * (16 + 64)
    assert struct.unpack("<IHHiIII", answer.body[:24]) == (0xA1B23C4D, 2, 4, 0, 0, 64, 1)
    records = pcap_records(answer.body, tmp_path)
    # The 3 newest of the five port-5555 frames (markers 0, 2, 4, 6, 8), in ascending order.
    assert [int.from_bytes(r.data[42:46], "big") for r in records] == [4, 6, 8]
    frame = udp(dport=5555, marker=8, pad=100)
    assert (records[-1].data, records[-1].original_length) == (frame[:64], len(frame))
    assert records == sorted(records, key=lambda r: r.timestamp_ns)


def test_query_window_is_inclusive(memory_service: SamplerService, tmp_path: Path) -> None:
    everything = pcap_records(
        query(memory_service, spec=SIMPLE_SPEC, since_ns=0, until_ns=2**62).body, tmp_path
    )
    assert len(everything) == 10
    since, until = everything[3].timestamp_ns, everything[6].timestamp_ns
    answer = query(memory_service, spec=SIMPLE_SPEC, since_ns=since, until_ns=until)
    assert [r.timestamp_ns for r in pcap_records(answer.body, tmp_path)] == [
        r.timestamp_ns for r in everything[3:7]
    ]
    empty = query(memory_service, spec=SIMPLE_SPEC, since_ns=0, until_ns=since - 10 * NS)
    assert (empty.status, len(empty.body)) == (200, 24)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", r"^body: not valid JSON"),
        (b"[]", r"^body: must be a JSON object"),
        (b"[" * 5000, r"^body: not valid JSON"),
        (
            json.dumps({"spec": SIMPLE_SPEC, "sinceNs": 0, "untilNs": 1, "x": 1}).encode(),
            r"unknown field\(s\) x",
        ),
        (json.dumps({"spec": SIMPLE_SPEC, "untilNs": 1}).encode(), r"^sinceNs: required"),
        (
            json.dumps({"spec": SIMPLE_SPEC, "sinceNs": -1, "untilNs": 1}).encode(),
            r"^sinceNs: must be an integer from 0",
        ),
        (
            json.dumps({"spec": SIMPLE_SPEC, "sinceNs": 0, "untilNs": "1"}).encode(),
            r"^untilNs: must be an integer",
        ),
        (
            json.dumps({"spec": SIMPLE_SPEC, "sinceNs": 0, "untilNs": True}).encode(),
            r"^untilNs: must be an integer",
        ),
        (
            json.dumps({"spec": SIMPLE_SPEC, "sinceNs": 0, "untilNs": 2**64}).encode(),
            r"^untilNs: must be an integer",
        ),
        (
            json.dumps({"spec": SIMPLE_SPEC, "sinceNs": 5, "untilNs": 4}).encode(),
            r"^untilNs: must be >= sinceNs",
        ),
        (json.dumps({"sinceNs": 0, "untilNs": 4}).encode(), r"^spec: required"),
        (
            json.dumps({"spec": SIMPLE_SPEC | {"packetLimit": 0}, "sinceNs": 0, "untilNs": 4}).encode(),
            r"spec\.packetLimit",
        ),
        (
            json.dumps(
                {"spec": SIMPLE_SPEC | {"filter": {"destinationPort": 70000}}, "sinceNs": 0, "untilNs": 4}
            ).encode(),
            r"spec\.filter\.destinationPort",
        ),
        (
            json.dumps(
                {
                    "spec": {
                        "type": "full",
                        "timeLimit": 60,
                        "colo": "a",
                        "destinationConf": "gs://kpcap-bucket/p",
                    },
                    "sinceNs": 0,
                    "untilNs": 4,
                }
            ).encode(),
            r"^spec\.type: must be 'simple'",
        ),
    ],
)
def test_bad_queries_are_400_naming_the_field(
    memory_service: SamplerService, body: bytes, message: str
) -> None:
    answer = request(memory_service, "POST", "/v1/samples", body=body, token="good")
    assert answer.status == 400
    assert answer.headers["content-type"] == "application/json"
    assert re.search(message, answer.json()["error"]), answer.json()


def test_authorisation_outcomes(memory_service: SamplerService) -> None:
    body = json.dumps({"spec": SIMPLE_SPEC, "sinceNs": 0, "untilNs": 1}).encode()
    no_header = request(memory_service, "POST", "/v1/samples", body=body)
    assert no_header.status == 401
    assert "Authorization: required" in no_header.json()["error"]
    assert no_header.headers["www-authenticate"] == "Bearer"
    basic = request(memory_service, "POST", "/v1/samples", body=body, headers={"Authorization": "Basic eDp5"})
    assert basic.status == 401
    assert query(memory_service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token="forged").status == 401
    forbidden = query(memory_service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token="other-user")
    assert (forbidden.status, forbidden.json()["error"]) == (
        403,
        "system:serviceaccount:x:other may not query the sampler",
    )
    down = query(memory_service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token="apiserver-down")
    assert down.status == 503
    assert "apiserver is unreachable" in down.json()["error"]
    # A bad body from an unauthenticated caller is a 401, not a 400: nothing is said before the token.
    assert request(memory_service, "POST", "/v1/samples", body=b"{", token="forged").status == 401


def test_paths_methods_and_sizes(memory_service: SamplerService) -> None:
    assert request(memory_service, "GET", "/nope").status == 404
    wrong = request(memory_service, "GET", "/v1/samples", token="good")
    assert (wrong.status, wrong.headers["allow"]) == (405, "POST")
    assert request(memory_service, "DELETE", "/healthz").status == 405
    assert request(memory_service, "PUT", "/v1/samples", body=b"{}").status == 405
    too_big = request(memory_service, "POST", "/v1/samples", body=b" " * (MAX_BODY_BYTES + 1), token="good")
    assert too_big.status == 413
    assert f"at most {MAX_BODY_BYTES}" in too_big.json()["error"]
    # Exactly the limit is read (and then judged as JSON).
    padded = json.dumps({"spec": SIMPLE_SPEC, "sinceNs": 0, "untilNs": 1}).encode().ljust(MAX_BODY_BYTES)
    assert request(memory_service, "POST", "/v1/samples", body=padded, token="good").status == 200


def test_a_silent_connection_does_not_block_others(memory_service: SamplerService) -> None:
    with socket.create_connection(memory_service.address):  # no TLS handshake, nothing sent
        assert request(memory_service, "GET", "/healthz").status == 200


def test_with_the_chart_ca_the_serving_certificate_chains_to_it_for_the_node_address(tmp_path: Path) -> None:
    ca_cert, ca_key = self_signed_certificate(common_name="kpcap-sampler-ca", dns_names=[], ip_addresses=[])
    (tmp_path / "ca.crt").write_bytes(ca_cert)
    (tmp_path / "ca.key").write_bytes(ca_key)
    config = SamplerServiceConfig.from_env(
        BASE_ENV
        | {"KPCAP_SAMPLER_CA_DIR": str(tmp_path), "KPCAP_NODE_IP": "127.0.0.1", "KPCAP_SAMPLER_PORT": "1"}
    )
    assert config.ca == (ca_cert, ca_key)
    config = SamplerServiceConfig(
        node_name="node-1",
        sampler=config.sampler,
        client=CLIENT,
        host="127.0.0.1",
        port=0,
        node_ip="127.0.0.1",
        ca=config.ca,
        ca_dir=config.ca_dir,
    )
    with SamplerService(
        config=config, source=MemorySource(frames=[]), authoriser=StaticAuthoriser()
    ) as service:
        host, port = service.address
        verified = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        connection = http.client.HTTPSConnection(host, port, timeout=5, context=verified)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
        # A sampler whose certificate the CA did not issue is refused by the same client.
        stranger = SamplerServiceConfig(
            node_name="node-1", sampler=config.sampler, client=CLIENT, host="127.0.0.1", port=0
        )
        with SamplerService(
            config=stranger, source=MemorySource(frames=[]), authoriser=StaticAuthoriser()
        ) as other:
            connection = http.client.HTTPSConnection(*other.address, timeout=5, context=verified)
            with pytest.raises(ssl.SSLCertVerificationError):
                connection.request("GET", "/healthz")
            connection.close()
        # The CA Secret rotates (the volume is updated in place): the next check issues a new
        # certificate; clients of the new CA are served, clients of the old one refuse it.
        assert not service.refresh_certificate(), "nothing changed yet"
        (tmp_path / "ca.key").write_bytes(b"half-written")
        assert not service.refresh_certificate(), "an unreadable CA keeps the current certificate"
        new_cert, new_key = self_signed_certificate(common_name="rotated-ca", dns_names=[], ip_addresses=[])
        (tmp_path / "ca.crt").write_bytes(new_cert)
        (tmp_path / "ca.key").write_bytes(new_key)
        assert service.refresh_certificate()
        rotated = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        connection = http.client.HTTPSConnection(host, port, timeout=5, context=rotated)
        connection.request("GET", "/healthz")
        assert connection.getresponse().status == 200
        connection.close()
        connection = http.client.HTTPSConnection(host, port, timeout=5, context=verified)
        with pytest.raises(ssl.SSLCertVerificationError):
            connection.request("GET", "/healthz")
        connection.close()


def test_a_bad_ca_dir_is_a_configuration_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(
        SamplerEnvError, match=r"KPCAP_SAMPLER_CA_DIR: must hold ca\.crt and ca\.key"
    ) as raised:
        SamplerServiceConfig.from_env(BASE_ENV | {"KPCAP_SAMPLER_CA_DIR": str(tmp_path)})
    assert raised.value.variable == "KPCAP_SAMPLER_CA_DIR"
    with pytest.raises(SamplerEnvError, match="KPCAP_NODE_IP"):
        SamplerServiceConfig.from_env(BASE_ENV | {"KPCAP_NODE_IP": "node-1"})


def test_tokenreview_authoriser_answers_503_when_the_apiserver_is_unreachable() -> None:
    configuration = client.Configuration()
    configuration.host = "https://127.0.0.1:9"  # nothing listens there
    configuration.retries = 0
    authoriser = TokenReviewAuthoriser(
        api_client=client.ApiClient(configuration), audience="kpcap-sampler", allowed_user=CLIENT
    )
    with pytest.raises(Refused) as refused:
        authoriser.authorise("some-token")
    assert refused.value.status == 503
    assert "apiserver is unreachable" in refused.value.message


# --- real packets from a network namespace -------------------------------------------------------


def quiet_link(pair: VethPair) -> None:
    """No IPv6 chatter (router solicitations, MLD) on the link: only the test's frames are offered."""
    for endpoint in (pair.left, pair.right):
        for setting in ("all", "default", endpoint.interface):
            run(
                "ip",
                "netns",
                "exec",
                endpoint.netns,
                "sysctl",
                "-qw",
                f"net.ipv6.conf.{setting}.disable_ipv6=1",
            )


def live_frame(pair: VethPair, index: int) -> bytes:
    # To an address the receiver does not own: not forwarded (ip_forward is off) and no ICMP error
    # comes back, so the frames sent are exactly the frames the sampler sees.
    return bytes(
        Ether(src=pair.left.mac, dst=pair.right.mac)
        / IP(src=pair.left.address, dst="198.18.201.77")
        / UDP(sport=40000, dport=5555 if index % 2 == 0 else 53)
        / Raw(index.to_bytes(4, "big") + bytes(index % 150))
    )


def frame_index(data: bytes) -> int:
    return int.from_bytes(data[42:46], "big")  # the marker after the Ethernet, IPv4 and UDP headers


def test_live_packets_at_rate_1_all_kept_and_queried_over_https(veth_pair: VethPair, tmp_path: Path) -> None:
    """Rate 1: the kernel program has no sampling check, and every frame sent is held exactly."""
    quiet_link(veth_pair)
    time.sleep(0.3)
    snap = 96
    config = service_config(sample_rate=1, snap_length=snap)
    source = in_netns(veth_pair.right.netns, lambda: open_sampler_source(config))

    def frame(index: int) -> bytes:
        return live_frame(veth_pair, index)

    try:
        with SamplerService(config=config, source=source, authoriser=StaticAuthoriser()) as service:
            before = [frame(i) for i in range(30)]
            inside = [frame(i) for i in range(30, 150)]
            after = [frame(i) for i in range(150, 180)]
            send = veth_pair.left.netns, veth_pair.left.interface
            send_frames(netns=send[0], interface=send[1], frames=before)
            time.sleep(0.2)
            since = time.time_ns()
            send_frames(netns=send[0], interface=send[1], frames=inside)
            time.sleep(0.2)
            until = time.time_ns()
            send_frames(netns=send[0], interface=send[1], frames=after)
            wait_for(lambda: service.ring.stats().offered >= 180, timeout=10, what="180 frames offered")
            time.sleep(0.3)
            stats = service.ring.stats()
            assert (stats.offered, stats.sampled, stats.held_records) == (180, 180, 180)

            spec = SIMPLE_SPEC | {"filter": {"destinationPort": 5555, "protocol": 17}, "packetLimit": 1000}
            answer = query(service, spec=spec, since_ns=since, until_ns=until)
            assert answer.status == 200, answer.body
            assert answer.headers["x-kpcap-sample-rate"] == "1"
            assert answer.headers["x-kpcap-held-records"] == "180"
            records = pcap_records(answer.body, tmp_path)
            expected = [frame(i) for i in range(30, 150) if i % 2 == 0]  # port 5555 when i is even
            assert len(expected) == 60
            assert [r.data for r in records] == [f[:snap] for f in expected]
            assert [r.original_length for r in records] == [len(f) for f in expected]
            assert any(len(f) > snap for f in expected)  # truncation was exercised
            assert all(since <= r.timestamp_ns <= until for r in records)
            assert [r.timestamp_ns for r in records] == sorted(r.timestamp_ns for r in records)

            # packetLimit keeps the newest; the whole history with no filter has all 180 frames.
            newest = pcap_records(
                query(service, spec=spec | {"packetLimit": 5}, since_ns=since, until_ns=until).body, tmp_path
            )
            assert [r.data for r in newest] == [f[:snap] for f in expected[-5:]]
            everything = pcap_records(
                query(service, spec=SIMPLE_SPEC | {"packetLimit": 1000}, since_ns=0, until_ns=2**62).body,
                tmp_path,
            )
            assert [r.data for r in everything] == [frame(i)[:snap] for i in range(180)]
            assert service.source.kernel_drops() == 0
    finally:
        source.close()


def test_live_packets_sampled_in_the_kernel(veth_pair: VethPair, tmp_path: Path) -> None:
    """Rate N: each frame is kept with probability 1/N in the kernel, so the count sampled out of M
    is binomial(M, 1/N): within 6 sigma of M/N (a false failure about once in 5e8 runs)."""
    quiet_link(veth_pair)
    time.sleep(0.3)
    rate, snap, count = 10, 64, 20000
    config = service_config(sample_rate=rate, snap_length=snap, byte_budget=16 << 20)
    source = in_netns(veth_pair.right.netns, lambda: open_sampler_source(config))
    frames = [live_frame(veth_pair, i) for i in range(count)]
    try:
        with SamplerService(config=config, source=source, authoriser=StaticAuthoriser()) as service:
            assert service.ring.config.sample_rate == 1  # the ring keeps what the kernel sampled
            send_frames(netns=veth_pair.left.netns, interface=veth_pair.left.interface, frames=frames)
            time.sleep(1.0)  # a partly filled ring block is handed over after 50 ms
            stats = service.ring.stats()
            mean = count / rate
            bound = 6 * (count * (1 / rate) * (1 - 1 / rate)) ** 0.5  # 6 sigma = 255 frames
            assert stats.sampled > 0
            assert abs(stats.sampled - mean) <= bound, (stats.sampled, mean, bound)
            assert stats.offered == stats.sampled == stats.held_records
            assert service.source.kernel_drops() == 0

            answer = query(service, spec=SIMPLE_SPEC | {"packetLimit": 10000}, since_ns=0, until_ns=2**62)
            assert answer.status == 200, answer.body
            assert answer.headers["x-kpcap-sample-rate"] == str(rate)  # the configured N
            assert answer.headers["x-kpcap-held-records"] == str(stats.held_records)
            records = pcap_records(answer.body, tmp_path)
            assert len(records) == stats.held_records
            # Every sampled frame is one that was sent, whole up to the snap length, each at most
            # once and in the order sent.
            indexes = [frame_index(r.data) for r in records]
            assert indexes == sorted(set(indexes))
            assert all(0 <= i < count for i in indexes)
            assert [r.data for r in records] == [frames[i][:snap] for i in indexes]
            assert [r.original_length for r in records] == [len(frames[i]) for i in indexes]
            # Not every N-th frame (the ring's old counter): the gaps between sampled frames vary.
            gaps = {b - a for a, b in itertools.pairwise(indexes)}
            assert len(gaps) > 5
    finally:
        source.close()


def test_the_sample_command_serves_and_ends_on_sigterm(veth_pair: VethPair, tmp_path: Path) -> None:
    """``python -m kpcap_agent sample`` in a namespace: healthz, a 503 when the apiserver it was
    given is unreachable, exit 0 promptly on SIGTERM."""
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "c",
                        "cluster": {"server": "https://127.0.0.1:9", "insecure-skip-tls-verify": True},
                    }
                ],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    env = (
        os.environ
        | BASE_ENV
        | {
            "KUBECONFIG": str(kubeconfig),
            "KPCAP_SAMPLER_HOST": veth_pair.right.address,
            "KPCAP_SAMPLER_PORT": "9444",
            "KPCAP_SAMPLER_BYTE_BUDGET": "1Mi",
        }
    )
    process = subprocess.Popen(
        ["ip", "netns", "exec", veth_pair.right.netns, sys.executable, "-m", "kpcap_agent", "sample"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE

        def call(method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
            def inside() -> tuple[int, bytes]:
                connection = http.client.HTTPSConnection(
                    veth_pair.right.address, 9444, context=context, timeout=10
                )
                try:
                    connection.request(method, path, body=body, headers={"Authorization": "Bearer x"})
                    response = connection.getresponse()
                    return response.status, response.read()
                finally:
                    connection.close()

            return in_netns(veth_pair.left.netns, inside)

        def healthy() -> bool:
            try:
                return call("GET", "/healthz") == (200, b"ok")
            except OSError:
                return process.poll() is None and False

        wait_for(healthy, timeout=30, what="the sampler's /healthz")
        status, body = call(
            "POST", "/v1/samples", json.dumps({"spec": SIMPLE_SPEC, "sinceNs": 0, "untilNs": 1}).encode()
        )
        assert status == 503
        assert "apiserver is unreachable" in json.loads(body)["error"]
        started = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert time.monotonic() - started < 5
        output = process.stdout.read() if process.stdout else ""
        assert "sampler on node node-1: keep 1 packet in 100" in output
        assert "stats: held" in output  # the last stats line, written on the way out
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# --- real TokenReviews (the local cluster's apiserver) -------------------------------------------

AUDIENCE = "kpcap-sampler"


def sa_token(core: client.CoreV1Api, namespace: str, name: str, audiences: list[str]) -> str:
    request_body = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=audiences, expiration_seconds=600)
    )
    return str(core.create_namespaced_service_account_token(name, namespace, request_body).status.token)


@dataclass
class Cluster:
    service: SamplerService
    authoriser: TokenReviewAuthoriser
    tokens: dict[str, str]
    allowed_user: str


@pytest.fixture
def reviewed_service(local_cluster: Any, namespace: str, core: client.CoreV1Api) -> Iterator[Cluster]:
    """A sampler whose own ServiceAccount may only create TokenReviews, as the chart's."""
    for name in ("sampler", "operator", "other"):
        core.create_namespaced_service_account(namespace, {"metadata": {"name": name}})
    rbac = client.RbacAuthorizationV1Api(local_cluster.api_client())
    role = f"kpcap-sampler-test-{namespace}"
    rbac.create_cluster_role(
        {
            "metadata": {"name": role},
            "rules": [
                {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]}
            ],
        }
    )
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": role},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
            "subjects": [{"kind": "ServiceAccount", "name": "sampler", "namespace": namespace}],
        }
    )
    try:
        allowed_user = f"system:serviceaccount:{namespace}:operator"
        authoriser = TokenReviewAuthoriser(
            api_client=local_cluster.token_client(sa_token(core, namespace, "sampler", [])),
            audience=AUDIENCE,
            allowed_user=allowed_user,
        )
        tokens = {
            "operator": sa_token(core, namespace, "operator", [AUDIENCE]),
            "operator-apiserver-audience": sa_token(core, namespace, "operator", []),
            "operator-other-audience": sa_token(core, namespace, "operator", ["something-else"]),
            "other": sa_token(core, namespace, "other", [AUDIENCE]),
        }
        now = time.time_ns()
        frames = [Frame.at(timestamp_ns=now - i * NS, data=udp(dport=5555, marker=i)) for i in range(5)]
        config = SamplerServiceConfig(
            node_name="node-1",
            sampler=SamplerConfig(sample_rate=1, snap_length=64, byte_budget=1 << 20),
            client=allowed_user,
            host="127.0.0.1",
            port=0,
        )
        with SamplerService(
            config=config, source=MemorySource(frames=frames), authoriser=authoriser
        ) as service:
            wait_for(lambda: service.ring.stats().offered == 5, timeout=10, what="frames offered")
            yield Cluster(service=service, authoriser=authoriser, tokens=tokens, allowed_user=allowed_user)
    finally:
        rbac.delete_cluster_role_binding(role)
        rbac.delete_cluster_role(role)


@pytest.mark.e2e
def test_tokenreview_with_audiences_on_the_apiserver(reviewed_service: Cluster, local_cluster: Any) -> None:
    """What the apiserver answers a TokenReview with spec.audiences (the sampler relies on it)."""
    api = client.AuthenticationV1Api(local_cluster.api_client())

    def review(token: str) -> Any:
        body = client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token, audiences=[AUDIENCE]))
        return api.create_token_review(body).status

    good = review(reviewed_service.tokens["operator"])
    assert good.authenticated is True
    assert good.audiences == [AUDIENCE]
    assert good.user.username == reviewed_service.allowed_user
    other_audience = review(reviewed_service.tokens["operator-apiserver-audience"])
    assert not other_audience.authenticated
    assert other_audience.error


@pytest.mark.e2e
def test_only_the_allowed_client_with_the_sampler_audience_gets_samples(
    reviewed_service: Cluster, tmp_path: Path
) -> None:
    service, tokens = reviewed_service.service, reviewed_service.tokens
    allowed = query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=2**62, token=tokens["operator"])
    assert allowed.status == 200, allowed.body
    assert len(pcap_records(allowed.body, tmp_path)) == 5

    for name in ("operator-apiserver-audience", "operator-other-audience"):
        wrong_audience = query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token=tokens[name])
        assert wrong_audience.status == 401, (name, wrong_audience.body)
        assert "audience 'kpcap-sampler'" in wrong_audience.json()["error"]

    other = query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token=tokens["other"])
    assert other.status == 403, other.body
    assert "other may not query the sampler" in other.json()["error"]

    body = json.dumps({"spec": SIMPLE_SPEC, "sinceNs": 0, "untilNs": 1}).encode()
    assert request(service, "POST", "/v1/samples", body=body).status == 401
    forged = tokens["operator"][:-8] + ("A" * 8 if not tokens["operator"].endswith("A" * 8) else "B" * 8)
    assert query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token=forged).status == 401
    assert query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token="not-a-jwt").status == 401


@pytest.mark.e2e
def test_allowed_tokens_are_cached_and_refusals_are_not(reviewed_service: Cluster) -> None:
    service, authoriser, tokens = (
        reviewed_service.service,
        reviewed_service.authoriser,
        reviewed_service.tokens,
    )
    before = authoriser.reviews_made
    for _ in range(3):
        assert (
            query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token=tokens["operator"]).status == 200
        )
    assert authoriser.reviews_made - before <= 1
    before = authoriser.reviews_made
    for _ in range(2):
        assert query(service, spec=SIMPLE_SPEC, since_ns=0, until_ns=1, token=tokens["other"]).status == 403
    assert authoriser.reviews_made - before == 2
