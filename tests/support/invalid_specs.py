"""The invalid-spec table: each case, the field its message must name and the layer that rejects it
(kubectl's client-side validation, the CRD's schema, or the webhook / operator through parse_spec).

Shared by ``tests/operator/test_invalid_specs.py`` (webhook on) and
``tests/operator/test_invalid_specs_no_webhook.py`` (webhook off). This 1.20 apiserver build rejects
any empty string in a custom resource (kubernetes#99804), so no case uses "".
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes import client

from kpcap.errors import SpecInvalid
from kpcap.model import format_rfc3339, parse_spec
from kpcap_localcluster.cluster import LocalCluster
from tests.support.captures import capture_body, full_spec
from tests.support.waiting import wait_for

KUBECTL, SCHEMA, WEBHOOK = "kubectl", "schema", "webhook"
WEBHOOK_DENIED = 'admission webhook "validate.kpcap.io" denied the request: '


@dataclass(frozen=True)
class Case:
    id: str
    spec: dict[str, Any] | None  # None: the object has no spec at all
    field: str  # the path the message must name
    rejected_by: str  # KUBECTL | SCHEMA | WEBHOOK
    pruned: bool = False  # an unknown field: the apiserver drops it, it can never reach the operator

    def body(self, namespace: str) -> dict[str, Any]:
        body = capture_body(f"bad-{self.id}", **(self.spec or {}))
        if self.spec is None:
            del body["spec"]
        body["metadata"]["namespace"] = namespace
        return body

    @property
    def reaches_operator(self) -> bool:
        """Accepted by kubectl and the schema: with no webhook, only the operator can refuse it."""
        return self.rejected_by == WEBHOOK


def simple(**fields: Any) -> dict[str, Any]:
    return {"type": "simple", "timeLimit": 10, "packetLimit": 100, **fields}


def full(**fields: Any) -> dict[str, Any]:
    return full_spec(**fields)


def without(spec: dict[str, Any], name: str) -> dict[str, Any]:
    return {key: value for key, value in spec.items() if key != name}


# Within the offsetTime window for as long as the suite runs: only the type rule applies to it.
RECENT = format_rfc3339((datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=0))

CASES = [
    # missing required fields
    Case("no-spec", None, "spec", KUBECTL),
    Case("type-missing", without(simple(), "type"), "spec.type", KUBECTL),
    Case("timelimit-missing", without(simple(), "timeLimit"), "spec.timeLimit", KUBECTL),
    Case("packetlimit-missing-simple", without(simple(), "packetLimit"), "spec.packetLimit", WEBHOOK),
    Case("destination-missing-full", without(full(), "destinationConf"), "spec.destinationConf", WEBHOOK),
    Case("full-without-colo-or-selector", without(full(), "colo"), "spec.colo", WEBHOOK),
    # enums and JSON types
    Case("type-unknown", simple(type="partial"), "spec.type", SCHEMA),
    Case("type-number", simple(type=1), "spec.type", SCHEMA),
    Case("system-unknown", simple(system="cloud"), "spec.system", SCHEMA),
    Case("timelimit-string", simple(timeLimit="10"), "spec.timeLimit", KUBECTL),
    Case("timelimit-fraction", simple(timeLimit=1.5), "spec.timeLimit", SCHEMA),
    Case("stop-string", simple(stop="true"), "spec.stop", KUBECTL),
    Case("filter-string", simple(filter="tcp port 80"), "spec.filter", KUBECTL),
    # ranges
    Case("timelimit-zero", simple(timeLimit=0), "spec.timeLimit", SCHEMA),
    Case("timelimit-too-big", simple(timeLimit=301), "spec.timeLimit", SCHEMA),
    Case("packetlimit-zero", full(packetLimit=0), "spec.packetLimit", SCHEMA),
    Case("packetlimit-too-big", simple(packetLimit=10_001), "spec.packetLimit", SCHEMA),
    Case("bytelimit-zero", full(byteLimit=0), "spec.byteLimit", SCHEMA),
    Case("bytelimit-too-big", full(byteLimit=1_000_000_001), "spec.byteLimit", SCHEMA),
    Case("snaplength-zero", full(snapLength=0), "spec.snapLength", SCHEMA),
    Case("snaplength-negative", simple(snapLength=-1), "spec.snapLength", SCHEMA),
    Case("snaplength-too-big", full(snapLength=262_145), "spec.snapLength", SCHEMA),
    Case("snaplength-string", full(snapLength="64"), "spec.snapLength", KUBECTL),
    Case("snaplength-fraction", simple(snapLength=64.5), "spec.snapLength", SCHEMA),
    Case("sourceport-too-big", simple(filter={"sourcePort": 65536}), "spec.filter.sourcePort", SCHEMA),
    Case("destport-negative", simple(filter={"destinationPort": -1}), "spec.filter.destinationPort", SCHEMA),
    Case("protocol-too-big", simple(filter={"protocol": 256}), "spec.filter.protocol", SCHEMA),
    # fields for the other capture type
    Case("bytelimit-on-simple", simple(byteLimit=1000), "spec.byteLimit", WEBHOOK),
    Case(
        "destination-on-simple",
        simple(destinationConf="s3://kpcap-test/x?region=us-east-1"),
        "spec.destinationConf",
        WEBHOOK,
    ),
    Case("offsettime-on-full", full(offsetTime=RECENT), "spec.offsetTime", WEBHOOK),
    # offsetTime
    Case("offsettime-future", simple(offsetTime="2099-01-01T00:00:00Z"), "spec.offsetTime", WEBHOOK),
    Case("offsettime-too-old", simple(offsetTime="2020-01-01T00:00:00Z"), "spec.offsetTime", WEBHOOK),
    Case("offsettime-no-zone", simple(offsetTime="2025-05-01T11:00:00"), "spec.offsetTime", SCHEMA),
    Case("offsettime-words", simple(offsetTime="yesterday"), "spec.offsetTime", SCHEMA),
    # addresses
    Case(
        "ipv4-octet", simple(filter={"sourceAddress": "198.51.100.300"}), "spec.filter.sourceAddress", SCHEMA
    ),
    Case(
        "ipv4-prefix",
        simple(filter={"destinationAddress": "198.51.100.0/24"}),
        "spec.filter.destinationAddress",
        SCHEMA,
    ),
    Case(
        "ipv6-malformed",
        simple(filter={"sourceAddress": "2001:db8:::1"}),
        "spec.filter.sourceAddress",
        SCHEMA,
    ),
    Case("ipv6-zone", simple(filter={"sourceAddress": "fe80::1%eth0"}), "spec.filter.sourceAddress", SCHEMA),
    Case(
        "mixed-ip-versions",
        simple(filter={"sourceAddress": "198.18.0.1", "destinationAddress": "2001:db8::1"}),
        "spec.filter.destinationAddress",
        WEBHOOK,
    ),
    Case(
        "port-with-icmp",
        simple(filter={"protocol": 1, "destinationPort": 80}),
        "spec.filter.protocol",
        WEBHOOK,
    ),
    # destinationConf forms
    Case("destination-https", full(destinationConf="https://kpcap-test/x"), "spec.destinationConf", SCHEMA),
    Case(
        "destination-userinfo",
        full(destinationConf="s3://AKIA:secret@kpcap-test/x"),
        "spec.destinationConf",
        SCHEMA,
    ),
    Case(
        "destination-credential-param",
        full(destinationConf="s3://kpcap-test/x?region=us-east-1&secretKey=abc"),
        "spec.destinationConf",
        WEBHOOK,
    ),
    Case("destination-bad-bucket", full(destinationConf="s3://Bucket_A/x"), "spec.destinationConf", WEBHOOK),
    Case(
        "destination-gs-endpoint",
        full(destinationConf="gs://kpcap-test/x?endpoint=http://198.18.0.1"),
        "spec.destinationConf",
        WEBHOOK,
    ),
    Case(
        "destination-unknown-param",
        full(destinationConf="s3://kpcap-test/x?acl=public-read"),
        "spec.destinationConf",
        WEBHOOK,
    ),
    # labels
    Case("colo-space", full(colo="zone a"), "spec.colo", SCHEMA),
    Case("colo-too-long", full(colo="c" * 64), "spec.colo", SCHEMA),
    Case("selector-bad-key", full(nodeSelector={"-bad": "x"}), "spec.nodeSelector.-bad", WEBHOOK),
    Case("selector-bad-value", full(nodeSelector={"disk": "s s d"}), "spec.nodeSelector.disk", SCHEMA),
    # unknown fields (pruned by the apiserver: only kubectl's client-side validation sees them)
    Case("unknown-spec-field", simple(timelimit=5), "spec.timelimit", KUBECTL, pruned=True),
    Case("unknown-filter-field", simple(filter={"port": 80}), "spec.filter.port", KUBECTL, pruned=True),
]
CASE_IDS = [case.id for case in CASES]

_TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z")


def mask_times(message: str) -> str:
    """The offsetTime window's messages quote 'now': compare them with the clock masked."""
    return _TIMESTAMP.sub("<time>", message)


def parse_spec_message(spec: dict[str, Any] | None) -> str:
    """What kpcap.model.parse_spec (the webhook and the operator) says about ``spec``."""
    try:
        parse_spec(spec, now=datetime.now(UTC))
    except SpecInvalid as invalid:
        return str(invalid)
    raise AssertionError(f"parse_spec accepted {spec!r}")


def names_field(stderr: str, path: str) -> bool:
    """The message names ``path``: literally, or as kubectl's client-side validation spells it."""
    if path in stderr:
        return True
    parent, _, leaf = path.rpartition(".")
    kind_path = f"PacketCapture.{parent}" if parent else "PacketCapture"
    return f"ValidationError({kind_path}):" in stderr and f'field "{leaf}"' in stderr


def apply(cluster: LocalCluster, body: dict[str, Any]) -> Any:
    return cluster.kubectl("apply", "-f", "-", stdin=json.dumps(body), check=False)


def namespace_for_module(cluster: LocalCluster) -> Iterator[str]:
    core = client.CoreV1Api(cluster.api_client())
    name = f"t-{secrets.token_hex(4)}"
    core.create_namespace({"metadata": {"name": name}})
    yield name
    core.delete_namespace(name)

    def gone() -> bool:
        try:
            core.read_namespace(name)
        except client.ApiException as err:
            return err.status == 404
        return False

    # The operator (still running) removes its finalizers; nothing of the module is left behind.
    wait_for(gone, timeout=60, what=f"namespace {name} to be deleted")
