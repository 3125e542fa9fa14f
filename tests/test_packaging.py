"""What the distributions ship: kpcap's wheel (and so both images) every package of the core, the
operator and the agent, and none of the test harness; the harness's distribution all of it."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _setuptools(pyproject: Path) -> dict[str, object]:
    table: dict[str, object] = tomllib.loads(pyproject.read_text())["tool"]["setuptools"]
    return table


def _packages_under(base: Path, top: str) -> dict[str, str]:
    """Every package (a directory with ``__init__.py``) under ``base / top``: dotted name -> path."""
    found = {}
    for init in sorted((base / top).rglob("__init__.py")):
        relative = init.parent.relative_to(base)
        found[".".join(relative.parts)] = init.parent.relative_to(ROOT).as_posix()
    return found


def test_the_wheel_lists_every_package_of_the_core_the_operator_and_the_agent() -> None:
    table = _setuptools(ROOT / "pyproject.toml")
    expected = {
        **_packages_under(ROOT, "kpcap"),
        **_packages_under(ROOT / "operator", "kpcap_operator"),
        **_packages_under(ROOT / "capture-daemonset", "kpcap_agent"),
    }
    assert sorted(table["packages"]) == sorted(expected)  # type: ignore[call-overload]
    assert table["package-dir"] == expected


def test_the_wheel_does_not_carry_the_test_harness() -> None:
    main = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert not any(p.startswith("kpcap_localcluster") for p in main["tool"]["setuptools"]["packages"])
    assert not any("kpcap_localcluster" in target for target in main["project"]["scripts"].values())


def test_the_harness_is_its_own_distribution() -> None:
    harness = tomllib.loads((ROOT / "localcluster" / "pyproject.toml").read_text())
    assert harness["project"]["name"] == "kpcap-localcluster"
    assert "kpcap" in harness["project"]["dependencies"]
    assert sorted(harness["tool"]["setuptools"]["packages"]) == sorted(
        _packages_under(ROOT / "localcluster", "kpcap_localcluster")
    )
    assert set(harness["project"]["scripts"]) == {"kpcap-localcluster", "kpcap-testbox"}
