"""Pure functions that turn a Pod (as a JSON dict) into what the process kubelet runs.

No API calls here: whatever needs the apiserver (Secrets, ConfigMaps, tokens) is passed in as a
lookup, so the translation rules are unit-testable with plain dicts.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SERVICE_ACCOUNT_MOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"

# Capabilities a container runtime grants by default (containerd/Docker's list).
DEFAULT_CAPABILITIES = frozenset(
    {
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SYS_CHROOT",
        "MKNOD",
        "AUDIT_WRITE",
        "SETFCAP",
    }
)

Json = dict[str, Any]
ValueLookup = Callable[
    [str, str], Mapping[str, str] | None
]  # (kind, name) -> its data; kind Secret/ConfigMap


class PodSpecError(ValueError):
    """The pod cannot be run as specified; the message says which field and why."""


@dataclass(frozen=True, slots=True)
class Mount:
    source: Path
    target: str
    read_only: bool


@dataclass(frozen=True, slots=True)
class ContainerPlan:
    """Everything needed to start one container as a local process."""

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    mounts: tuple[Mount, ...]
    working_dir: str | None
    run_as_user: int | None
    run_as_group: int | None
    capabilities: frozenset[str] | None  # None: privileged, every capability
    read_only_root: bool = False
    extra: Mapping[str, str] = field(default_factory=dict)


def image_name(image: str) -> str:
    """``ghcr.io/org/kpcap-agent:1.0@sha256:...`` -> ``kpcap-agent`` (registry, path and tag dropped)."""
    without_digest = image.split("@", 1)[0]
    last = without_digest.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def resolve_argv(
    *, container: Json, images: Mapping[str, Sequence[str]], python: str = sys.executable
) -> tuple[str, ...]:
    """Kubernetes semantics: ``command`` replaces the image's entry point, ``args`` its default arguments.

    Images are not pulled: a known image name maps to a local entry point (its ENTRYPOINT); a
    literal ``python``/``python3`` in a command means this interpreter, as the image's would.
    """
    name = image_name(container.get("image", ""))
    if name not in images:
        known = ", ".join(sorted(images)) or "none"
        raise PodSpecError(
            f"image {container.get('image')!r} is not known to the process kubelet (known images: {known})"
        )
    command = container.get("command")
    args = container.get("args") or []
    argv = list(command) if command else list(images[name])
    if argv and argv[0] in ("python", "python3"):
        argv[0] = python
    return (*argv, *args)


def _field_ref(path: str, pod: Json) -> str:
    meta, spec, status = pod.get("metadata", {}), pod.get("spec", {}), pod.get("status", {})
    simple = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "metadata.uid": meta.get("uid"),
        "spec.nodeName": spec.get("nodeName"),
        "spec.serviceAccountName": spec.get("serviceAccountName"),
        "status.podIP": status.get("podIP"),
        "status.hostIP": status.get("hostIP"),
    }
    if path in simple:
        return str(simple[path] or "")
    for prefix, source in (("metadata.labels", "labels"), ("metadata.annotations", "annotations")):
        if path.startswith(prefix + "['") and path.endswith("']"):
            return str(meta.get(source, {}).get(path[len(prefix) + 2 : -2], ""))
    raise PodSpecError(f"fieldRef.fieldPath {path!r} is not supported by the process kubelet")


def resolve_env(
    *, container: Json, pod: Json, lookup: ValueLookup, base: Mapping[str, str]
) -> dict[str, str]:
    """The container's environment: ``base``, then ``envFrom``, then ``env`` (later wins, as in k8s)."""
    env = dict(base)
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            if key in source:
                ref = source[key]
                values = lookup(kind, ref["name"])
                if values is None:
                    if not ref.get("optional"):
                        raise PodSpecError(f"envFrom {kind} {ref['name']!r} not found")
                    continue
                env.update({prefix + k: v for k, v in values.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = _expand(str(var["value"]), env)
            continue
        source = var.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = _field_ref(source["fieldRef"]["fieldPath"], pod)
        elif "secretKeyRef" in source or "configMapKeyRef" in source:
            kind, ref = (
                ("Secret", source["secretKeyRef"])
                if "secretKeyRef" in source
                else ("ConfigMap", source["configMapKeyRef"])
            )
            data = lookup(kind, ref["name"])
            value = None if data is None else data.get(ref["key"])
            if value is None:
                if ref.get("optional"):
                    continue
                raise PodSpecError(f"env {name}: {kind} {ref['name']!r} has no key {ref['key']!r}")
            env[name] = value
        elif "resourceFieldRef" in source:
            env[name] = "0"  # no resource accounting for local processes
        else:
            env[name] = ""
    return env


def _expand(value: str, env: Mapping[str, str]) -> str:
    # $(VAR) references to earlier variables, as the kubelet expands them; $$ escapes.
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
        elif value.startswith("$(", i) and ")" in value[i:]:
            end = value.index(")", i)
            ref = value[i + 2 : end]
            out.append(env.get(ref, value[i : end + 1]))
            i = end + 1
        else:
            out.append(value[i])
            i += 1
    return "".join(out)


def capabilities(container: Json) -> frozenset[str] | None:
    """The capability set the container gets: runtime defaults, minus ``drop``, plus ``add``."""
    ctx = container.get("securityContext") or {}
    if ctx.get("privileged"):
        return None
    caps = ctx.get("capabilities") or {}
    drop = {c.upper().removeprefix("CAP_") for c in caps.get("drop") or []}
    add = {c.upper().removeprefix("CAP_") for c in caps.get("add") or []}
    base = set() if "ALL" in drop else set(DEFAULT_CAPABILITIES - drop)
    return frozenset(base | add)


def run_as(container: Json, pod: Json) -> tuple[int | None, int | None]:
    pod_ctx = pod.get("spec", {}).get("securityContext") or {}
    ctx = container.get("securityContext") or {}
    user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
    group = ctx.get("runAsGroup", pod_ctx.get("runAsGroup"))
    non_root = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
    if non_root and not user:
        # Without an image to read USER from, a non-root request needs an explicit user id.
        raise PodSpecError("securityContext.runAsNonRoot is true but runAsUser is not set (or is 0)")
    return user, group


def volume_mounts(*, container: Json, volume_dirs: Mapping[str, Path]) -> tuple[Mount, ...]:
    mounts = []
    for vm in container.get("volumeMounts") or []:
        source = volume_dirs.get(vm["name"])
        if source is None:
            raise PodSpecError(f"volumeMounts {vm['name']!r}: no volume of that name is prepared")
        if vm.get("subPath"):
            source = source / vm["subPath"]
        mounts.append(Mount(source=source, target=vm["mountPath"], read_only=bool(vm.get("readOnly"))))
    return tuple(mounts)


def restart_wanted(*, policy: str, exit_code: int) -> bool:
    return policy == "Always" or (policy == "OnFailure" and exit_code != 0)


def pod_phase(*, policy: str, states: Sequence[Json], init_done: bool) -> str:
    """Pod phase from container states (each ``{"running": ...}``, ``{"terminated": ...}`` or waiting)."""
    if not init_done or not states:
        return "Pending"
    terminated = [s["terminated"] for s in states if "terminated" in s]
    if any("running" in s for s in states):
        return "Running"
    if len(terminated) == len(states):
        if policy == "Always":
            return "Running"  # about to be restarted
        failed = any(t.get("exitCode", 0) != 0 for t in terminated)
        if failed and policy == "OnFailure":
            return "Running"
        return "Failed" if failed else "Succeeded"
    return "Pending" if not terminated else "Running"
