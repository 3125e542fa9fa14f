"""The chart's CRD templates: generated from crds/ (the single source of truth) by hack/chart_crds.py,
rendered to exactly that source (CEL rules only for >= 1.25), switched by crds.enabled/crds.keep."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from kpcap.crd import without_cel
from kpcap_localcluster.binaries import tool

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "kpcap"
GENERATOR = ROOT / "hack" / "chart_crds.py"
FILES = sorted(p.name for p in (ROOT / "crds").glob("*.yaml"))


def crds(kube_version: str, *values: str) -> dict[str, dict[str, Any]]:
    args = ["template", "kpcap", str(CHART), "--kube-version", kube_version, "--namespace", "kpcap-system"]
    for value in values:
        args += ["--set", value]
    out = subprocess.run([tool("helm"), *args], capture_output=True, text=True, check=True).stdout
    docs = [d for d in yaml.safe_load_all(out) if d and d["kind"] == "CustomResourceDefinition"]
    return {d["metadata"]["name"]: d for d in docs}


def source(name: str) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load((ROOT / "crds" / name).read_text(encoding="utf-8"))
    return document


def test_the_templates_are_what_the_generator_writes_from_crds() -> None:
    result = subprocess.run(
        [sys.executable, str(GENERATOR), "--check"], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(("kube", "cel"), [("1.30.0", True), ("1.25.0", True), ("1.20.2", False)])
def test_each_template_renders_to_its_source(kube: str, cel: bool) -> None:
    rendered = crds(kube)
    assert len(rendered) == len(FILES)
    for name in FILES:
        expected = source(name) if cel else without_cel(source(name))
        got = rendered[expected["metadata"]["name"]]
        metadata = got.pop("metadata")
        assert got == {k: v for k, v in expected.items() if k != "metadata"}, name
        assert metadata["annotations"] == {"helm.sh/resource-policy": "keep"}
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    text = yaml.safe_dump(rendered)
    assert ("x-kubernetes-validations" in text) is cel


def test_crds_enabled_and_keep_switch_them() -> None:
    assert crds("1.30.0", "crds.enabled=false") == {}
    for crd in crds("1.30.0", "crds.keep=false").values():
        assert "annotations" not in crd["metadata"]


def test_the_chart_has_no_crds_directory() -> None:
    """Helm installs crds/ once and never upgrades it; the templates replace it."""
    assert not (CHART / "crds").exists()
