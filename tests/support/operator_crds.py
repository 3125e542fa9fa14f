"""Other operators' CRDs (cert-manager's Certificate, the Prometheus Operator's ServiceMonitor and
PodMonitor) as bare schemas, so a server-side dry run maps the chart's objects of those kinds as a
cluster running those operators would. Only the kinds are registered: no schema beyond
``x-kubernetes-preserve-unknown-fields``, no controller."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kpcap_localcluster.cluster import LocalCluster


@dataclass(frozen=True, slots=True, kw_only=True)
class ForeignKind:
    group: str
    version: str
    kind: str
    plural: str


CHART_OPTIONAL_KINDS = (
    ForeignKind(group="cert-manager.io", version="v1", kind="Certificate", plural="certificates"),
    ForeignKind(group="monitoring.coreos.com", version="v1", kind="ServiceMonitor", plural="servicemonitors"),
    ForeignKind(group="monitoring.coreos.com", version="v1", kind="PodMonitor", plural="podmonitors"),
)


def minimal_crd(kind: ForeignKind) -> dict[str, Any]:
    """A namespaced CRD that accepts any spec of ``kind``."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{kind.plural}.{kind.group}"},
        "spec": {
            "group": kind.group,
            "scope": "Namespaced",
            "names": {"kind": kind.kind, "plural": kind.plural, "singular": kind.kind.lower()},
            "versions": [
                {
                    "name": kind.version,
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
                    },
                }
            ],
        },
    }


@contextmanager
def foreign_crds(
    cluster: LocalCluster, kinds: tuple[ForeignKind, ...] = CHART_OPTIONAL_KINDS
) -> Iterator[None]:
    """The CRDs of ``kinds`` established for the block; those it created are deleted after it."""
    crds = [crd for crd in map(minimal_crd, kinds) if not _exists(cluster, crd["metadata"]["name"])]
    new = [crd["metadata"]["name"] for crd in crds]
    if crds:
        cluster.kubectl(
            "create", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds})
        )
    try:
        for name in new:
            cluster.kubectl("wait", "--for=condition=Established", f"crd/{name}", "--timeout=60s")
        yield
    finally:
        if new:
            cluster.kubectl("delete", "crd", *new, "--wait=false")


def _exists(cluster: LocalCluster, name: str) -> bool:
    return cluster.kubectl("get", "crd", name, check=False).returncode == 0
