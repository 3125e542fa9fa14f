"""Pure translation rules of the process kubelet (no cluster)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kpcap_localcluster import podspec
from kpcap_localcluster.podspec import PodSpecError

IMAGES = {"kpcap-agent": ("python", "-m", "kpcap_agent")}
POD = {
    "metadata": {"name": "p", "namespace": "ns", "uid": "u-1", "labels": {"app": "x"}},
    "spec": {"nodeName": "node-1", "serviceAccountName": "sa"},
    "status": {"podIP": "198.18.1.11", "hostIP": "198.18.1.11"},
}


@pytest.mark.parametrize(
    ("image", "name"),
    [
        ("kpcap-agent", "kpcap-agent"),
        ("ghcr.io/kpcap/kpcap-agent:0.1.0", "kpcap-agent"),
        ("localhost:5000/kpcap-agent@sha256:abc", "kpcap-agent"),
        ("registry:5000/a/b/kpcap-agent:1@sha256:abc", "kpcap-agent"),
    ],
)
def test_image_name_drops_registry_path_tag_and_digest(image: str, name: str) -> None:
    assert podspec.image_name(image) == name


def test_argv_follows_command_and_args_semantics() -> None:
    entry = podspec.resolve_argv(
        container={"image": "x/kpcap-agent:1", "args": ["--a"]}, images=IMAGES, python="/py"
    )
    assert entry == ("/py", "-m", "kpcap_agent", "--a")
    replaced = podspec.resolve_argv(
        container={"image": "kpcap-agent", "command": ["python3", "-c", "pass"], "args": ["b"]},
        images=IMAGES,
        python="/py",
    )
    assert replaced == ("/py", "-c", "pass", "b")


def test_unknown_image_names_the_known_ones() -> None:
    with pytest.raises(PodSpecError, match=r"'nginx:1' is not known .*known images: kpcap-agent"):
        podspec.resolve_argv(container={"image": "nginx:1"}, images=IMAGES)


def test_env_resolution_order_references_and_lookups() -> None:
    store = {
        ("Secret", "creds"): {"key": "s3cret"},
        # A value that spans lines stays whole (a PEM, say).
        ("ConfigMap", "cm"): {"A": "1", "B": "2", "PEM": "-----BEGIN-----\nA=B\n-----END-----\n"},
    }
    container = {
        "envFrom": [{"configMapRef": {"name": "cm"}, "prefix": "CM_"}],
        "env": [
            {"name": "NODE", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
            {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
            {"name": "APP", "valueFrom": {"fieldRef": {"fieldPath": "metadata.labels['app']"}}},
            {"name": "SECRET", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "key"}}},
            {"name": "GREETING", "value": "on $(NODE) $$(NODE) $(MISSING)"},
            {"name": "OPT", "valueFrom": {"secretKeyRef": {"name": "none", "key": "k", "optional": True}}},
        ],
    }
    env = podspec.resolve_env(
        container=container,
        pod=POD,
        lookup=lambda k, n: store.get((k, n)),
        base={"PATH": "/bin", "CM_A": "old"},
    )
    assert env == {
        "PATH": "/bin",
        "CM_A": "1",
        "CM_B": "2",
        "CM_PEM": "-----BEGIN-----\nA=B\n-----END-----\n",
        "NODE": "node-1",
        "POD_IP": "198.18.1.11",
        "APP": "x",
        "SECRET": "s3cret",
        "GREETING": "on node-1 $(NODE) $(MISSING)",
    }


def test_missing_required_secret_key_is_an_error_naming_it() -> None:
    container = {"env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "k"}}}]}
    with pytest.raises(PodSpecError, match="env X: Secret 'creds' has no key 'k'"):
        podspec.resolve_env(container=container, pod=POD, lookup=lambda *_: None, base={})


def test_capabilities_from_security_context() -> None:
    assert podspec.capabilities({}) == podspec.DEFAULT_CAPABILITIES
    only_net = {"securityContext": {"capabilities": {"drop": ["ALL"], "add": ["NET_RAW", "CAP_NET_ADMIN"]}}}
    assert podspec.capabilities(only_net) == {"NET_RAW", "NET_ADMIN"}
    assert "NET_RAW" not in (
        podspec.capabilities({"securityContext": {"capabilities": {"drop": ["NET_RAW"]}}}) or set()
    )
    assert podspec.capabilities({"securityContext": {"privileged": True}}) is None


def test_run_as_non_root_needs_a_user() -> None:
    with pytest.raises(PodSpecError, match="runAsNonRoot"):
        podspec.run_as({"securityContext": {"runAsNonRoot": True}}, POD)
    pod = {**POD, "spec": {"securityContext": {"runAsUser": 1000, "runAsGroup": 1000}}}
    assert podspec.run_as({}, pod) == (1000, 1000)
    assert podspec.run_as({"securityContext": {"runAsUser": 7}}, pod) == (7, 1000)


def test_volume_mounts_need_a_prepared_volume(tmp_path: Path) -> None:
    mounts = podspec.volume_mounts(
        container={
            "volumeMounts": [{"name": "data", "mountPath": "/data", "readOnly": True, "subPath": "x"}]
        },
        volume_dirs={"data": tmp_path},
    )
    assert mounts == (podspec.Mount(source=tmp_path / "x", target="/data", read_only=True),)
    with pytest.raises(PodSpecError, match="'nope'"):
        podspec.volume_mounts(
            container={"volumeMounts": [{"name": "nope", "mountPath": "/x"}]}, volume_dirs={}
        )


@pytest.mark.parametrize(
    ("policy", "code", "restart"),
    [
        ("Always", 0, True),
        ("Always", 1, True),
        ("OnFailure", 0, False),
        ("OnFailure", 2, True),
        ("Never", 1, False),
    ],
)
def test_restart_wanted(policy: str, code: int, restart: bool) -> None:
    assert podspec.restart_wanted(policy=policy, exit_code=code) is restart


@pytest.mark.parametrize(
    ("policy", "states", "phase"),
    [
        ("Never", [{"running": {}}], "Running"),
        ("Never", [{"terminated": {"exitCode": 0}}], "Succeeded"),
        ("Never", [{"terminated": {"exitCode": 0}}, {"terminated": {"exitCode": 1}}], "Failed"),
        ("OnFailure", [{"terminated": {"exitCode": 1}}], "Running"),
        ("Always", [{"terminated": {"exitCode": 0}}], "Running"),
        ("Never", [{"waiting": {}}], "Pending"),
    ],
)
def test_pod_phase(policy: str, states: list[dict[str, object]], phase: str) -> None:
    assert podspec.pod_phase(policy=policy, states=states, init_done=True) == phase
