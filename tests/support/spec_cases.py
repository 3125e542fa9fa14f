"""Spec dictionaries for the model's tests: a valid simple and full spec, and the table of invalid
specs with the field each message must name (shared by ``tests/kpcap/test_model.py`` and the CRD's
tests, ``tests/kpcap/test_crd_cel.py``, which check the schema says the same)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

NOW = datetime(2025, 5, 1, 12, 0, tzinfo=UTC)

SIMPLE: dict[str, Any] = {"type": "simple", "timeLimit": 60, "packetLimit": 100}
FULL: dict[str, Any] = {
    "type": "full",
    "timeLimit": 60,
    "colo": "zone-a",
    "destinationConf": "s3://kpcap-captures/captures?region=us-east-1",
}


def simple(**changes: Any) -> dict[str, Any]:
    return {**SIMPLE, **changes}


def full(**changes: Any) -> dict[str, Any]:
    return {**FULL, **changes}


def without(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if key != name}


# (id, spec, the field that must be named, a fragment the message must contain)
INVALID: list[tuple[str, object, str, str]] = [
    ("type missing", without(SIMPLE, "type"), "spec.type", "required"),
    ("type unknown", simple(type="partial"), "spec.type", "'simple', 'full'"),
    ("type not a string", simple(type=1), "spec.type", "got 1"),
    ("system unknown", simple(system="cloud"), "spec.system", "'host-network'"),
    ("timeLimit missing", without(SIMPLE, "timeLimit"), "spec.timeLimit", "required"),
    ("timeLimit zero", simple(timeLimit=0), "spec.timeLimit", "must be an integer from 1 to 300, got 0"),
    ("timeLimit too big", simple(timeLimit=301), "spec.timeLimit", "got 301"),
    ("timeLimit bool", simple(timeLimit=True), "spec.timeLimit", "a boolean"),
    ("timeLimit string", simple(timeLimit="10"), "spec.timeLimit", "a string"),
    ("timeLimit fraction", simple(timeLimit=1.5), "spec.timeLimit", "got 1.5"),
    ("timeLimit infinite", simple(timeLimit=float("inf")), "spec.timeLimit", "1 to 300"),
    ("packetLimit missing (simple)", without(SIMPLE, "packetLimit"), "spec.packetLimit", "required"),
    ("packetLimit too big", simple(packetLimit=10_001), "spec.packetLimit", "1 to 10000"),
    ("packetLimit zero", full(packetLimit=0), "spec.packetLimit", "got 0"),
    (
        "byteLimit on simple",
        simple(byteLimit=1000),
        "spec.byteLimit",
        "only allowed when spec.type is 'full'",
    ),
    ("byteLimit zero", full(byteLimit=0), "spec.byteLimit", "1 to 1000000000"),
    ("byteLimit too big", full(byteLimit=1_000_000_001), "spec.byteLimit", "1 to 1000000000"),
    ("snapLength zero", full(snapLength=0), "spec.snapLength", "must be an integer from 1 to 262144 (bytes)"),
    ("snapLength negative", simple(snapLength=-1), "spec.snapLength", "1 to 262144 (bytes), got -1"),
    ("snapLength too big", full(snapLength=262_145), "spec.snapLength", "1 to 262144 (bytes), got 262145"),
    ("snapLength string", full(snapLength="64"), "spec.snapLength", "a string"),
    ("snapLength fraction", simple(snapLength=64.5), "spec.snapLength", "got 64.5"),
    ("snapLength bool", full(snapLength=True), "spec.snapLength", "a boolean"),
    (
        "destinationConf on simple",
        simple(destinationConf="gs://bucket-a/x"),
        "spec.destinationConf",
        "'full'",
    ),
    ("destinationConf missing (full)", without(FULL, "destinationConf"), "spec.destinationConf", "required"),
    ("destinationConf scheme", full(destinationConf="https://bucket-a/x"), "spec.destinationConf", "s3://"),
    (
        "destinationConf credentials",
        full(destinationConf="s3://k:s@bucket-a/x"),
        "spec.destinationConf",
        "Secret",
    ),
    (
        "destinationConf bad bucket",
        full(destinationConf="s3://Bucket_A"),
        "spec.destinationConf",
        "S3 bucket",
    ),
    ("offsetTime on full", full(offsetTime="2025-05-01T11:00:00Z"), "spec.offsetTime", "'simple'"),
    ("offsetTime future", simple(offsetTime="2025-05-01T12:00:01Z"), "spec.offsetTime", "future"),
    ("offsetTime too old", simple(offsetTime="2025-04-30T11:59:59Z"), "spec.offsetTime", "24 hours"),
    ("offsetTime without zone", simple(offsetTime="2025-05-01T11:00:00"), "spec.offsetTime", "RFC 3339"),
    ("offsetTime date only", simple(offsetTime="2025-05-01"), "spec.offsetTime", "RFC 3339"),
    ("offsetTime words", simple(offsetTime="yesterday"), "spec.offsetTime", "RFC 3339"),
    ("offsetTime impossible date", simple(offsetTime="2025-02-30T00:00:00Z"), "spec.offsetTime", "real date"),
    ("offsetTime number", simple(offsetTime=1714560000), "spec.offsetTime", "RFC 3339"),
    ("unknown spec field", simple(timelimit=5), "spec.timelimit", "unknown field"),
    ("unknown filter field", simple(filter={"port": 80}), "spec.filter.port", "unknown field"),
    ("filter not an object", simple(filter="tcp port 80"), "spec.filter", "must be an object"),
    (
        "address out of range",
        simple(filter={"sourceAddress": "300.1.1.1"}),
        "spec.filter.sourceAddress",
        "IPv4",
    ),
    (
        "address is a prefix",
        simple(filter={"destinationAddress": "10.0.0.0/8"}),
        "spec.filter.destinationAddress",
        "no prefix length",
    ),
    (
        "address with zone",
        simple(filter={"sourceAddress": "fe80::1%eth0"}),
        "spec.filter.sourceAddress",
        "zone",
    ),
    ("address as a number", simple(filter={"sourceAddress": 167772161}), "spec.filter.sourceAddress", "IPv6"),
    ("sourcePort too big", simple(filter={"sourcePort": 65536}), "spec.filter.sourcePort", "0 to 65535"),
    (
        "destinationPort negative",
        simple(filter={"destinationPort": -1}),
        "spec.filter.destinationPort",
        "got -1",
    ),
    ("port as string", simple(filter={"sourcePort": "80"}), "spec.filter.sourcePort", "a string"),
    ("protocol too big", simple(filter={"protocol": 256}), "spec.filter.protocol", "0 to 255"),
    ("protocol bool", simple(filter={"protocol": True}), "spec.filter.protocol", "a boolean"),
    (
        "protocol without ports",
        simple(filter={"protocol": 1, "destinationPort": 80}),
        "spec.filter.protocol",
        "132 (SCTP)",
    ),
    (
        "address families differ",
        simple(filter={"sourceAddress": "198.18.0.1", "destinationAddress": "2001:db8::1"}),
        "spec.filter.destinationAddress",
        "same IP version",
    ),
    ("full without colo or nodeSelector", without(FULL, "colo"), "spec.colo", "nodeSelector"),
    ("colo empty", full(colo=""), "spec.colo", "not empty"),
    ("colo with a space", full(colo="zone a"), "spec.colo", "label value"),
    ("colo not a string", full(colo=7), "spec.colo", "got 7"),
    ("nodeSelector not an object", full(nodeSelector=["a=b"]), "spec.nodeSelector", "label keys"),
    ("nodeSelector bad key", full(nodeSelector={"-bad": "x"}), "spec.nodeSelector.-bad", "label key"),
    (
        "nodeSelector value not a string",
        full(nodeSelector={"zone": 1}),
        "spec.nodeSelector.zone",
        "label value",
    ),
    ("stop as string", simple(stop="true"), "spec.stop", "true or false"),
    ("spec not an object", ["type", "simple"], "spec", "must be an object"),
]
