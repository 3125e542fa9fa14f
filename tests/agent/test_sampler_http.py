"""The sampler's HTTPS protocol (kpcap_agent.sampler_http), with frames from memory."""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from kpcap.pcap import PCAP_MEDIA_TYPE, Record
from kpcap.sampleprotocol import MAX_QUERY_BYTES as MAX_BODY_BYTES
from kpcap_agent.sampler_service import SamplerService
from kpcap_agent.sources import MemorySource
from tests.agent.sampler_calls import (
    NS,
    SIMPLE_SPEC,
    StaticAuthoriser,
    pcap_records,
    query,
    request,
    service_config,
    udp,
)
from tests.support.waiting import wait_for


@pytest.fixture
def memory_service() -> Iterator[SamplerService]:
    now = time.time_ns()
    frames = [
        Record.at(
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


def test_healthz_needs_no_token(memory_service: SamplerService) -> None:
    answer = request(memory_service, "GET", "/healthz")
    assert (answer.status, answer.body) == (200, b"ok")


def test_query_answers_a_nanosecond_little_endian_pcap(
    memory_service: SamplerService, tmp_path: Path
) -> None:
    spec = SIMPLE_SPEC | {"filter": {"destinationPort": 5555, "protocol": 17}, "packetLimit": 3}
    answer = query(memory_service, spec=spec, since_ns=0, until_ns=2**63 - 1)
    assert answer.status == 200, answer.body
    assert answer.headers["content-type"] == PCAP_MEDIA_TYPE
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
