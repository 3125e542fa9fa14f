"""The CRD (schema + CEL rules) and parse_spec say the same wherever the schema can; the samples
parse; the CEL rules hold and fail where they should; stripping CEL for old servers works."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import celpy
import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from celpy.adapter import json_to_cel

from kpcap.crd import CEL_KEY, cel_rules, openapi_schema, without_cel
from kpcap.errors import SpecInvalid
from kpcap.model import CaptureStatus, NodePhase, parse_spec, spec_to_dict
from kpcap_localcluster.crd import CRD_PATH, load_crd
from tests.support.spec_cases import FULL, INVALID, NOW, SIMPLE, full, simple, without

SAMPLES = sorted((CRD_PATH.parent / "samples").glob("*.yaml"))

CRD = load_crd(strip_cel=False)
SCHEMA = openapi_schema(CRD)
RULES = list(cel_rules(SCHEMA))
_CEL = celpy.Environment()
PROGRAMS = {rule.rule: _CEL.program(_CEL.compile(rule.rule)) for rule in RULES}
VALIDATOR = jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)

# parse_spec checks these and the schema cannot (time windows need "now", bucket naming rules, label
# keys are map keys, and unknown fields are pruned by the API server rather than rejected).
PARSE_ONLY = {
    "unknown spec field",
    "unknown filter field",
    "destinationConf bad bucket",
    "offsetTime future",
    "offsetTime too old",
    "nodeSelector bad key",
}


def _pruned(value: Any) -> Any:
    # The API server drops nulls from fields that are not nullable before validating.
    if isinstance(value, Mapping):
        return {key: _pruned(item) for key, item in value.items() if item is not None}
    return value


def _at(document: Any, path: str) -> Any:
    node = document
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def schema_problems(spec: object) -> list[str]:
    """What the API server would say: OpenAPI schema errors, then the CEL rules (each rule runs only
    when its object is present and the schema held, as in Kubernetes)."""
    document = {
        "apiVersion": "kpcap.io/v1alpha1",
        "kind": "PacketCapture",
        "metadata": {"name": "x"},
        "spec": _pruned(spec),
    }
    problems = [
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in VALIDATOR.iter_errors(document)
    ]
    if problems:
        return problems
    for rule in RULES:
        target = _at(document, rule.path)
        if target is None or rule.transition:  # transition rules run on UPDATE only
            continue
        if not bool(PROGRAMS[rule.rule].evaluate({"self": json_to_cel(target)})):
            problems.append(rule.message)
    return problems


def update_problems(old_spec: Mapping[str, Any], new_spec: Mapping[str, Any]) -> list[str]:
    """What the API server's transition rules say of an UPDATE from ``old_spec`` to ``new_spec``: each
    runs with ``self`` and ``oldSelf`` bound, where its object is in both (as in Kubernetes)."""
    old = {"spec": _pruned(old_spec)}
    new = {"spec": _pruned(new_spec)}
    problems = []
    for rule in RULES:
        target, before = _at(new, rule.path), _at(old, rule.path)
        if not rule.transition or target is None or before is None:
            continue
        bound = {"self": json_to_cel(target), "oldSelf": json_to_cel(before)}
        if not bool(PROGRAMS[rule.rule].evaluate(bound)):
            problems.append(rule.message)
    return problems


# --- the CRD itself ---------------------------------------------------------------------------------


def test_crd_names_and_version() -> None:
    assert CRD["apiVersion"] == "apiextensions.k8s.io/v1"
    assert CRD["metadata"]["name"] == "packetcaptures.kpcap.io"
    spec = CRD["spec"]
    assert spec["group"] == "kpcap.io"
    assert spec["scope"] == "Namespaced"
    assert spec["names"] == {
        "kind": "PacketCapture",
        "listKind": "PacketCaptureList",
        "plural": "packetcaptures",
        "singular": "packetcapture",
        "shortNames": ["pcap", "pcaps"],
        "categories": ["kpcap"],  # `kubectl get kpcap` lists captures and their reports
    }
    (version,) = spec["versions"]
    assert (version["name"], version["served"], version["storage"]) == ("v1alpha1", True, True)
    assert version["subresources"] == {"status": {}}
    columns = {column["name"]: column["jsonPath"] for column in version["additionalPrinterColumns"]}
    assert columns["Type"] == ".spec.type"
    assert columns["Status"] == ".status.status"
    assert columns["Packets"] == ".status.packetsCaptured"
    assert columns["Nodes"] == ".status.nodesSummary"
    assert columns["Age"] == ".metadata.creationTimestamp"
    for path in columns.values():
        if not path.startswith(".metadata"):
            assert _at(SCHEMA["properties"], path[1:].replace(".", ".properties.")) is not None, path


def _walk(schema: Mapping[str, Any], path: str = "") -> list[tuple[str, Mapping[str, Any]]]:
    found = [(path, schema)]
    for name, child in schema.get("properties", {}).items():
        found += _walk(child, f"{path}.{name}")
    for key in ("additionalProperties", "items"):
        if isinstance(schema.get(key), Mapping):
            found += _walk(schema[key], f"{path}.{key}")
    return found


def test_schema_is_structural() -> None:
    """The rules the API server enforces for v1 CRDs (so the CRD loads on 1.20 and later)."""
    for path, node in _walk(SCHEMA):
        assert "type" in node, f"{path} needs a type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert "x-kubernetes-preserve-unknown-fields" not in node, path
        for branch in node.get("anyOf", []):
            assert set(branch) <= {"format", "pattern", "maxLength", "minLength", "enum"}, path


def test_status_enums_match_the_model() -> None:
    status = SCHEMA["properties"]["status"]["properties"]
    assert status["status"]["enum"] == [member.value for member in CaptureStatus]
    node = status["nodes"]["additionalProperties"]["properties"]
    assert node["phase"]["enum"] == [member.value for member in NodePhase]


def test_status_nodes_is_a_map_for_merge_patches() -> None:
    status = {
        "status": "running",
        "targetNodes": ["node-a", "node-b"],
        "nodesSummary": "1/2",
        "nodes": {
            "node-a": {
                "phase": "done",
                "packets": 10,
                "bytes": 1000,
                "drops": 0,
                "objectUri": "s3://b/pcap_x/node-a.pcap",
                "updated": "2025-05-01T12:00:00Z",
            },
            "node-b": {"phase": "running", "packets": 3},
        },
        "files": ["s3://b/pcap_x/node-a.pcap"],
        "conditions": [
            {
                "type": "Ready",
                "status": "False",
                "lastTransitionTime": "2025-05-01T12:00:00Z",
                "reason": "Capturing",
                "message": "1 of 2 nodes done",
            }
        ],
    }
    document = {"apiVersion": "kpcap.io/v1alpha1", "kind": "PacketCapture", "spec": SIMPLE, "status": status}
    assert list(VALIDATOR.iter_errors(document)) == []
    bad = {**status, "nodes": {"node-a": {"phase": "sleeping"}}}
    assert list(VALIDATOR.iter_errors({**document, "status": bad}))


def test_strip_cel_for_old_servers() -> None:
    assert RULES, "the canonical CRD carries CEL rules"
    stripped = load_crd(strip_cel=True)
    assert CEL_KEY not in yaml.safe_dump(stripped)
    assert list(cel_rules(openapi_schema(stripped))) == []
    assert without_cel(CRD) == stripped
    assert CEL_KEY in yaml.safe_dump(CRD), "without_cel must not change its input"
    with pytest.raises(ValueError, match="CustomResourceDefinition"):
        load_crd(SAMPLES[0], strip_cel=True)


# --- CEL rules ------------------------------------------------------------------------------------

CEL_CASES: list[tuple[str, dict[str, Any], str | None]] = [
    ("simple ok", SIMPLE, None),
    ("full ok", FULL, None),
    ("full with nodeSelector only", without(full(nodeSelector={"a": "b"}), "colo"), None),
    ("byteLimit on simple", simple(byteLimit=5), "spec.byteLimit"),
    ("destinationConf on simple", simple(destinationConf="gs://bucket-a"), "spec.destinationConf"),
    ("offsetTime on full", full(offsetTime="2025-05-01T11:00:00Z"), "spec.offsetTime"),
    ("destinationConf missing", without(FULL, "destinationConf"), "spec.destinationConf"),
    ("packetLimit missing", without(SIMPLE, "packetLimit"), "spec.packetLimit"),
    ("colo and nodeSelector missing", without(FULL, "colo"), "spec.colo"),
    ("ports need TCP/UDP/SCTP", simple(filter={"protocol": 1, "sourcePort": 1}), "spec.filter.protocol"),
    ("ports with SCTP", simple(filter={"protocol": 132, "destinationPort": 1}), None),
    ("protocol alone", simple(filter={"protocol": 1}), None),
    (
        "families differ",
        simple(filter={"sourceAddress": "::1", "destinationAddress": "198.18.0.1"}),
        "spec.filter.destinationAddress",
    ),
    ("families agree", simple(filter={"sourceAddress": "::1", "destinationAddress": "::2"}), None),
]


@pytest.mark.parametrize(
    ("spec", "field"), [case[1:] for case in CEL_CASES], ids=[case[0] for case in CEL_CASES]
)
def test_cel_rules(spec: dict[str, Any], field: str | None) -> None:
    problems = schema_problems(spec)
    if field is None:
        assert problems == []
    else:
        assert problems, "a CEL rule should have failed"
        assert all(problem.startswith(f"{field}: ") for problem in problems), problems
    if field is None:
        parse_spec(spec, now=NOW)
    else:
        with pytest.raises(SpecInvalid) as raised:
            parse_spec(spec, now=NOW)
        assert field in raised.value.fields


# --- CEL transition rules: the spec is immutable but for stop false -> true -------------------------

RUNNING = full(byteLimit=1000, filter={"protocol": 6, "destinationPort": 80}, stop=False)
SAMPLED = simple(offsetTime="2025-05-01T11:00:00Z")
UPDATE_CASES: list[tuple[str, dict[str, Any], dict[str, Any], str | None]] = [
    ("nothing changes", RUNNING, RUNNING, None),
    ("stop false -> true", RUNNING, {**RUNNING, "stop": True}, None),
    ("stop unset -> true", without(RUNNING, "stop"), {**RUNNING, "stop": True}, None),
    ("stop true -> true", {**RUNNING, "stop": True}, {**RUNNING, "stop": True}, None),
    ("stop true -> false", {**RUNNING, "stop": True}, RUNNING, "spec.stop"),
    ("type", SAMPLED, {**SAMPLED, "type": "full"}, "spec.type"),
    ("system", RUNNING, {**RUNNING, "system": "magic-transit"}, "spec.system"),
    ("filter field", RUNNING, {**RUNNING, "filter": {"protocol": 6, "destinationPort": 443}}, "spec.filter"),
    ("filter added", without(RUNNING, "filter"), RUNNING, "spec.filter"),
    ("timeLimit", RUNNING, {**RUNNING, "timeLimit": 120}, "spec.timeLimit"),
    ("packetLimit", RUNNING, {**RUNNING, "packetLimit": 5}, "spec.packetLimit"),
    ("byteLimit", RUNNING, {**RUNNING, "byteLimit": 5}, "spec.byteLimit"),
    ("byteLimit removed", RUNNING, without(RUNNING, "byteLimit"), "spec.byteLimit"),
    ("snapLength", {**RUNNING, "snapLength": 64}, {**RUNNING, "snapLength": 65}, "spec.snapLength"),
    ("snapLength added", RUNNING, {**RUNNING, "snapLength": 64}, "spec.snapLength"),
    ("colo", RUNNING, {**RUNNING, "colo": "colo-b"}, "spec.colo"),
    ("nodeSelector added", RUNNING, {**RUNNING, "nodeSelector": {"a": "b"}}, "spec.nodeSelector"),
    ("destinationConf", RUNNING, {**RUNNING, "destinationConf": "gs://other"}, "spec.destinationConf"),
    ("offsetTime", SAMPLED, {**SAMPLED, "offsetTime": "2025-05-01T11:30:00Z"}, "spec.offsetTime"),
]


@pytest.mark.parametrize(
    ("old", "new", "field"), [case[1:] for case in UPDATE_CASES], ids=[case[0] for case in UPDATE_CASES]
)
def test_cel_transition_rules(old: dict[str, Any], new: dict[str, Any], field: str | None) -> None:
    problems = update_problems(old, new)
    if field is None:
        assert problems == []
    else:
        assert [problem.split(":", 1)[0] for problem in problems] == [field], problems
        assert problems[0].endswith("only spec.stop may change, from false to true")


def test_every_spec_field_has_a_transition_rule() -> None:
    named = {rule.message.split(":", 1)[0] for rule in RULES if rule.transition}
    assert named == {f"spec.{name}" for name in SCHEMA["properties"]["spec"]["properties"]}


def test_every_cel_rule_fails_somewhere() -> None:
    failing_messages = {problem for _, spec, _ in CEL_CASES for problem in schema_problems(spec)}
    failing_messages |= {problem for _, old, new, _ in UPDATE_CASES for problem in update_problems(old, new)}
    assert {rule.message for rule in RULES} <= failing_messages


# --- schema and parse_spec agree ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "spec"), [(case[0], case[1]) for case in INVALID], ids=[c[0] for c in INVALID]
)
def test_schema_rejects_what_parse_spec_rejects(case: str, spec: object) -> None:
    with pytest.raises(SpecInvalid):
        parse_spec(spec, now=NOW)
    if case in PARSE_ONLY:
        assert schema_problems(spec) == [], "listed as parse-only: the schema should accept it"
    else:
        assert schema_problems(spec), f"the CRD schema accepts {spec!r}"


@pytest.mark.parametrize(
    "spec",
    [
        SIMPLE,
        FULL,
        simple(system="magic-transit", stop=True, timeLimit=300, packetLimit=10_000),
        simple(system=None, filter=None),
        simple(timeLimit=10.0),
        simple(offsetTime="2025-05-01T13:30:00.123456789+02:00", colo="zone-a", nodeSelector={"k": ""}),
        simple(
            filter={
                "sourceAddress": "2001:db8::1",
                "destinationAddress": "::ffff:198.18.0.1",
                "sourcePort": 0,
                "destinationPort": 65535,
                "protocol": 17,
            }
        ),
        full(byteLimit=1_000_000_000, packetLimit=1, destinationConf="gs://b_1/x?"),
    ],
)
def test_schema_accepts_what_parse_spec_accepts(spec: dict[str, Any]) -> None:
    parse_spec(spec, now=NOW)
    assert schema_problems(spec) == []
    assert schema_problems(spec_to_dict(parse_spec(spec, now=NOW))) == []


# --- samples ------------------------------------------------------------------------------------------


def test_there_are_three_samples() -> None:
    assert {path.name for path in SAMPLES} == {
        "full-capture.yaml",
        "full-capture-gcs.yaml",
        "simple-capture.yaml",
    }


@pytest.mark.parametrize("path", SAMPLES, ids=lambda path: path.name)
def test_samples_are_valid(path: Path) -> None:
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert document["apiVersion"] == "kpcap.io/v1alpha1"
    assert document["kind"] == "PacketCapture"
    spec = parse_spec(document["spec"], now=NOW)
    assert schema_problems(document["spec"]) == []
    assert parse_spec(spec_to_dict(spec), now=NOW) == spec
