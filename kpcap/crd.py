"""Loading the PacketCapture CRD (``crds/packetcapture.yaml``) for applying and for tests.

The canonical CRD carries CEL rules (``x-kubernetes-validations``, Kubernetes >= 1.25). Older API
servers (the 1.20 test cluster) do not know that key, so ``load_crd(..., strip_cel=True)`` returns a
copy without it; the admission webhook enforces the same rules there through ``parse_spec``.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CEL_KEY = "x-kubernetes-validations"
CRD_PATH = Path(__file__).resolve().parent.parent / "crds" / "packetcapture.yaml"


@dataclass(frozen=True, slots=True, kw_only=True)
class CelRule:
    """One CEL rule and where it sits: ``path`` is the schema path, e.g. ``spec.filter``."""

    path: str
    rule: str
    message: str


def load_crd(path: Path = CRD_PATH, *, strip_cel: bool) -> dict[str, Any]:
    """The CRD document as a dict; with ``strip_cel`` every ``x-kubernetes-validations`` is removed."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path} is not a CustomResourceDefinition")
    return without_cel(document) if strip_cel else document


def without_cel(crd: Mapping[str, Any]) -> dict[str, Any]:
    """A deep copy of ``crd`` with every CEL rule list removed (the input is left unchanged)."""

    def strip(node: Any) -> Any:
        if isinstance(node, Mapping):
            return {key: strip(value) for key, value in node.items() if key != CEL_KEY}
        if isinstance(node, list):
            return [strip(item) for item in node]
        return copy.deepcopy(node)

    stripped: dict[str, Any] = strip(crd)
    return stripped


def openapi_schema(crd: Mapping[str, Any], *, version: str = "v1alpha1") -> dict[str, Any]:
    """The ``openAPIV3Schema`` of one served version."""
    for entry in crd["spec"]["versions"]:
        if entry["name"] == version:
            schema: dict[str, Any] = entry["schema"]["openAPIV3Schema"]
            return schema
    raise KeyError(f"the CRD has no version {version!r}")


def cel_rules(schema: Mapping[str, Any], *, path: str = "") -> Iterator[CelRule]:
    """Every CEL rule in ``schema``, depth first, with the dotted path of the object it applies to."""
    for entry in schema.get(CEL_KEY, ()):
        yield CelRule(path=path, rule=entry["rule"], message=entry.get("message", ""))
    for name, child in schema.get("properties", {}).items():
        yield from cel_rules(child, path=f"{path}.{name}" if path else name)
    additional = schema.get("additionalProperties")
    if isinstance(additional, Mapping):
        yield from cel_rules(additional, path=f"{path}.*")
    items = schema.get("items")
    if isinstance(items, Mapping):
        yield from cel_rules(items, path=f"{path}[]")
