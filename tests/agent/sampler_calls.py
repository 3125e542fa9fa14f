"""How the sampler tests call a sampler: its configuration, a stand-in authoriser, HTTPS requests."""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.packet import Raw

from kpcap.pcap import Record, iter_pcap_records
from kpcap_agent.sampler import SamplerConfig
from kpcap_agent.sampler_auth import Refused
from kpcap_agent.sampler_service import SamplerService
from kpcap_agent.sampler_settings import SamplerServiceConfig

NS = 1_000_000_000
CLIENT = "system:serviceaccount:kpcap-system:kpcap-operator"
BASE_ENV = {"KPCAP_NODE_NAME": "node-1", "KPCAP_SAMPLER_CLIENT": CLIENT}
SIMPLE_SPEC: dict[str, Any] = {"type": "simple", "timeLimit": 60, "packetLimit": 100}


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


def udp(*, dport: int, marker: int, pad: int = 20, src: str = "10.0.0.1", dst: str = "10.0.0.2") -> bytes:
    return bytes(
        Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
        / IP(src=src, dst=dst)
        / UDP(sport=40000, dport=dport)
        / Raw(marker.to_bytes(4, "big") + bytes(pad))
    )
