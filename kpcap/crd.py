"""Reading a PacketCapture CRD document (already loaded: the core reads no files here).

The canonical CRD carries CEL rules (``x-kubernetes-validations``, Kubernetes >= 1.25): ``without_cel``
makes the copy older API servers accept, ``openapi_schema`` and ``cel_rules`` read a served version's
schema and its rules. The test harness loads the repository's file (``kpcap_localcluster.crd``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

CEL_KEY = "x-kubernetes-validations"


@dataclass(frozen=True, slots=True, kw_only=True)
class CelRule:
    """One CEL rule and where it sits: ``path`` is the schema path, e.g. ``spec.filter``."""

    path: str
    rule: str
    message: str

    @property
    def transition(self) -> bool:
        """A transition rule (it names ``oldSelf``): the API server runs it on UPDATE only."""
        return "oldSelf" in self.rule


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
