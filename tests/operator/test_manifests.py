"""The capture DaemonSet manifest, built by a pure function (no cluster)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kpcap.model import CaptureSpec, parse_spec
from kpcap_operator import manifests
from kpcap_operator.settings import OperatorSettings

SETTINGS = OperatorSettings(namespace="kpcap-system", agent_image="registry.example/kpcap/agent:1")
CAPTURE_ID = "0123456789abcdef0123456789abcdef"
SPEC: dict[str, Any] = {
    "type": "full",
    "timeLimit": 30,
    "packetLimit": 100,
    "byteLimit": 5_000_000,
    "colo": "colo-a",
    "nodeSelector": {"disk": "ssd"},
    "filter": {"sourceAddress": "2001:db8::7", "destinationPort": 443, "protocol": 6},
    "destinationConf": "s3://kpcap-test/captures?region=us-east-1&endpoint=http://198.18.0.1:9000",
}


def build(
    spec: CaptureSpec | None = None,
    targets: list[str] | None = None,
    settings: OperatorSettings = SETTINGS,
) -> dict[str, Any]:
    return manifests.capture_daemonset(
        settings=settings,
        capture_id=CAPTURE_ID,
        capture_name="my-capture",
        capture_namespace="team-a",
        spec=spec or parse_spec(SPEC, now=None),
        targets=targets if targets is not None else ["node-b", "node-a"],
    )


def pod_spec(ds: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = ds["spec"]["template"]["spec"]
    return result


def agent(ds: dict[str, Any]) -> dict[str, Any]:
    [container] = pod_spec(ds)["containers"]
    result: dict[str, Any] = container
    return result


def env(ds: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in agent(ds)["env"]}


def test_it_is_a_daemonset_in_the_operator_namespace() -> None:
    ds = build()
    assert (ds["apiVersion"], ds["kind"]) == ("apps/v1", "DaemonSet")
    assert ds["metadata"]["namespace"] == "kpcap-system"
    assert ds["metadata"]["name"] == manifests.daemonset_name(CAPTURE_ID)
    assert agent(ds)["image"] == SETTINGS.agent_image
    assert pod_spec(ds)["serviceAccountName"] == SETTINGS.agent_service_account


def test_host_network_and_only_net_raw_and_net_admin() -> None:
    ds = build()
    assert pod_spec(ds)["hostNetwork"] is True
    assert pod_spec(ds)["dnsPolicy"] == "ClusterFirstWithHostNet"
    security = agent(ds)["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["NET_RAW", "NET_ADMIN"]}
    assert security["privileged"] is False
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert pod_spec(ds)["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "hostPID" not in pod_spec(ds)
    assert "hostIPC" not in pod_spec(ds)
    assert all("hostPath" not in volume for volume in pod_spec(ds)["volumes"])


def test_node_affinity_selects_exactly_the_targets_one_term_per_node() -> None:
    targets = ["node-c", "node-a", "node-b"]
    terms = pod_spec(build(targets=targets))["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"
    ]["nodeSelectorTerms"]
    # The apiserver allows exactly one value per matchFields In on metadata.name: terms are ORed.
    assert terms == [
        {"matchFields": [{"key": "metadata.name", "operator": "In", "values": [name]}]}
        for name in sorted(targets)
    ]
    assert all("matchExpressions" not in term for term in terms)
    assert "nodeSelector" not in pod_spec(build(targets=targets))


def test_tolerates_every_taint() -> None:
    assert pod_spec(build())["tolerations"] == [{"operator": "Exists"}]


def test_labels_tie_it_to_the_capture_id_and_namespace() -> None:
    ds = build()
    labels = ds["metadata"]["labels"]
    assert labels[manifests.LABEL_CAPTURE_ID] == CAPTURE_ID
    assert labels[manifests.LABEL_CAPTURE_NAMESPACE] == "team-a"
    assert ds["spec"]["template"]["metadata"]["labels"] == labels
    selector = ds["spec"]["selector"]["matchLabels"]
    assert selector == {manifests.LABEL_CAPTURE_ID: CAPTURE_ID}
    assert selector.items() <= labels.items(), "the selector must match the template's labels"
    assert ds["metadata"]["annotations"][manifests.ANNOTATION_CAPTURE_NAME] == "my-capture"
    assert manifests.capture_labels(capture_id=CAPTURE_ID, namespace="team-a") == labels


def test_env_carries_the_capture_and_the_node() -> None:
    values = env(build())
    assert values["KPCAP_CAPTURE_NAMESPACE"] == "team-a"
    assert values["KPCAP_CAPTURE_NAME"] == "my-capture"
    assert values["KPCAP_CAPTURE_ID"] == CAPTURE_ID
    assert values["KPCAP_NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert values["KPCAP_WORK_DIR"] == manifests.AGENT_WORK_DIR
    assert all(isinstance(v, dict) or (isinstance(v, str) and v) for v in values.values()), (
        "no empty strings (this 1.20 apiserver rejects them in some objects, kubernetes#99804)"
    )


def test_the_spec_in_env_round_trips_through_parse_spec() -> None:
    spec = parse_spec(SPEC, now=None)
    carried = json.loads(env(build(spec))["KPCAP_CAPTURE_SPEC"])
    assert parse_spec(carried, now=None) == spec
    assert carried["destinationConf"].startswith("s3://kpcap-test/captures?region=us-east-1&endpoint=")


IP = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


@st.composite
def full_specs(draw: st.DrawFn) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "type": "full",
        "timeLimit": draw(st.integers(1, 300)),
        "colo": draw(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)),
        "destinationConf": draw(
            st.sampled_from(
                ["s3://kpcap-test/a/b?region=eu-west-1", "gs://kpcap-test", "s3://bucket-1", "gs://b-2/x/y"]
            )
        ),
    }
    for name, strategy in [
        ("packetLimit", st.integers(1, 10_000)),
        ("byteLimit", st.integers(1, 1_000_000_000)),
        ("snapLength", st.integers(1, 262_144)),
        ("stop", st.booleans()),
        ("system", st.sampled_from(["host-network", "magic-transit"])),
    ]:
        if draw(st.booleans()):
            spec[name] = draw(strategy)
    version = draw(st.sampled_from([4, 6]))
    address = st.ip_addresses(v=version).map(str)
    filter_fields = {
        "sourceAddress": address,
        "destinationAddress": address,
        "sourcePort": st.integers(0, 65535),
        "destinationPort": st.integers(0, 65535),
        "protocol": st.sampled_from([6, 17, 132]),
    }
    chosen = draw(st.sets(st.sampled_from(sorted(filter_fields))))
    if chosen:
        spec["filter"] = {name: draw(filter_fields[name]) for name in chosen}
    return spec


@given(spec=full_specs())
def test_property_any_valid_spec_round_trips_through_the_env(spec: dict[str, Any]) -> None:
    parsed = parse_spec(spec, now=None)
    carried = json.loads(env(build(parsed))["KPCAP_CAPTURE_SPEC"])
    assert parse_spec(carried, now=None) == parsed


def test_on_delete_update_strategy() -> None:
    assert build()["spec"]["updateStrategy"] == {"type": "OnDelete"}


def test_the_name_fits_a_label_value_and_a_dns_label() -> None:
    name = manifests.daemonset_name("f" * 32)
    assert len(name) <= 63
    # Pods get "<name>-<5 chars>": the name must leave room for that within 63 characters too.
    assert len(name) + len("-abcde") <= 63


def test_the_work_dir_is_a_size_limited_empty_dir() -> None:
    ds = build()
    assert agent(ds)["volumeMounts"] == [{"name": "work", "mountPath": manifests.AGENT_WORK_DIR}]
    assert pod_spec(ds)["volumes"] == [
        {"name": "work", "emptyDir": {"sizeLimit": manifests.AGENT_WORK_DIR_LIMIT}}
    ]


@pytest.mark.parametrize("priority_class", ["", "system-node-critical"])
def test_priority_class_only_when_configured(priority_class: str) -> None:
    settings = OperatorSettings(
        namespace="kpcap-system", agent_image="img", agent_priority_class=priority_class
    )
    spec = pod_spec(build(settings=settings))
    if priority_class:
        assert spec["priorityClassName"] == priority_class
    else:
        assert "priorityClassName" not in spec


def test_the_manifest_is_plain_json() -> None:
    ds = build()
    assert json.loads(json.dumps(ds)) == ds


def test_storage_credentials_come_from_a_secret_only_when_configured() -> None:
    assert "envFrom" not in agent(build())
    settings = OperatorSettings(
        namespace="kpcap-system", agent_image="img", agent_credentials_secret="kpcap-storage"
    )
    assert agent(build(settings=settings))["envFrom"] == [
        {"secretRef": {"name": "kpcap-storage", "optional": True}}
    ]


@pytest.mark.parametrize(
    ("targets", "progress", "poll"),
    [(1, 2.0, 1.0), (10, 2.0, 1.0), (18, 3.6, 1.0), (200, 40.0, 1.0), (2000, 400.0, 10.0)],
)
def test_report_and_poll_intervals_grow_with_the_node_count(
    targets: int, progress: float, poll: float
) -> None:
    assert manifests.progress_interval(targets) == pytest.approx(progress)
    assert manifests.stop_poll_interval(targets) == pytest.approx(poll)
    # All of a capture's agents together: at most ~5 progress writes/s and ~200 stop polls/s.
    assert targets / manifests.progress_interval(targets) <= 5.0
    assert targets / manifests.stop_poll_interval(targets) <= 200.0


def test_env_carries_the_intervals_and_the_capture_uid() -> None:
    nodes = [f"node-{i}" for i in range(50)]
    values = env(
        manifests.capture_daemonset(
            settings=SETTINGS,
            capture_id=CAPTURE_ID,
            capture_name="my-capture",
            capture_namespace="team-a",
            spec=parse_spec(SPEC, now=None),
            targets=nodes,
            capture_uid="uid-1",
        )
    )
    assert values["KPCAP_PROGRESS_INTERVAL_SECONDS"] == "10.0"
    assert values["KPCAP_STOP_POLL_SECONDS"] == "1.0"
    assert values["KPCAP_CAPTURE_UID"] == "uid-1"
    assert "KPCAP_CAPTURE_UID" not in env(build())
