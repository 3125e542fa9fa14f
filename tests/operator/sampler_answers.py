"""What the operator-side sampler tests share: a simple spec, sampler answers, sampler pods."""

from __future__ import annotations

import struct
from typing import Any

from kpcap.model import parse_spec
from kpcap.pcap import MAGIC_NANO

SPEC = parse_spec({"type": "simple", "timeLimit": 60, "packetLimit": 3, "filter": {"protocol": 17}}, now=None)


def pcap(packets: list[tuple[int, bytes]], *, snaplen: int = 128) -> bytes:
    out = struct.pack("<IHHiIII", MAGIC_NANO, 2, 4, 0, 0, snaplen, 1)
    for stamp, data in packets:
        seconds, nanos = divmod(stamp, 1_000_000_000)
        out += struct.pack("<IIII", seconds, nanos, len(data), len(data) + 100) + data
    return out


def pod(
    node: str, ip: str, *, phase: str = "Running", ready: bool = True, created: str = "2026-01-01T00:00:00Z"
) -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": created},
        "spec": {"nodeName": node},
        "status": {
            "phase": phase,
            "podIP": ip,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }
