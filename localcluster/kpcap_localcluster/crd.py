"""The harness's loader of kpcap's CRDs (PacketCapture, PacketCaptureReport), read from the repository.

The canonical CRD (``crds/packetcapture.yaml``; the chart's templates are generated from it) carries CEL rules
(``x-kubernetes-validations``, Kubernetes >= 1.25). The local cluster's 1.20 apiserver does not know
that key, so ``load_crd(..., strip_cel=True)`` returns a copy without it; the admission webhook
enforces the same rules there through ``parse_spec``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from kpcap.crd import without_cel
from kpcap_localcluster.binaries import REPO_ROOT

CRD_PATH = REPO_ROOT / "crds" / "packetcapture.yaml"
CRD_FILES = ("packetcapture.yaml", "packetcapturereport.yaml")
"""Every CRD kpcap installs, by file name in crds/ (the chart's templates/crds/ are made from them)."""


def load_crd(path: Path = CRD_PATH, *, strip_cel: bool) -> dict[str, Any]:
    """The CRD document as a dict; with ``strip_cel`` every ``x-kubernetes-validations`` is removed."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("kind") != "CustomResourceDefinition":
        raise ValueError(f"{path} is not a CustomResourceDefinition")
    return without_cel(document) if strip_cel else document


def load_crds(directory: Path = CRD_PATH.parent, *, strip_cel: bool) -> list[dict[str, Any]]:
    """Every CRD of ``CRD_FILES`` in ``directory`` (the repository's crds/ or the chart's)."""
    return [load_crd(directory / name, strip_cel=strip_cel) for name in CRD_FILES]
