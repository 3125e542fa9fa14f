"""Running Wireshark's command-line tools on files in tests, with their stderr checked empty."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

# What tshark prints on every run as root, about itself and not about the file it reads.
ROOT_NOTICE = 'Running as user "root" and group "root". This could be dangerous.'
TOOLS = ("tshark", "capinfos", "mergecap", "editcap")


def require_tools() -> None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        pytest.fail(f"Wireshark tools missing: {missing} (the project's apt list installs them)")


def run_quietly(command: list[str]) -> str:
    """The tool's stdout; fails the test on any exit status but 0 and on any stderr (warnings)."""
    result = subprocess.run(
        command, check=False, capture_output=True, text=True, env={"TZ": "UTC", "PATH": "/usr/bin:/bin"}
    )
    warnings = [line for line in result.stderr.splitlines() if line.strip() and line != ROOT_NOTICE]
    report = f"{command}: exit {result.returncode}, stderr {result.stderr!r}"
    assert result.returncode == 0, report
    assert not warnings, report
    return result.stdout


def tshark_fields(path: Path, *fields: str, options: tuple[str, ...] = ()) -> list[list[str]]:
    """One row per packet of ``tshark -r path -T fields -e <field>...``."""
    command = ["tshark", "-r", str(path), *options, "-T", "fields", "-E", "occurrence=f"]
    for field in fields:
        command += ["-e", field]
    return [line.split("\t") for line in run_quietly(command).splitlines()]


def check_tools_read(path: Path, tmp_path: Path) -> str:
    """tshark, capinfos and mergecap read ``path`` without a warning; returns capinfos' report."""
    run_quietly(["tshark", "-r", str(path)])
    run_quietly(["mergecap", "-w", str(tmp_path / f"{path.stem}-remerged.pcapng"), str(path)])
    return run_quietly(["capinfos", str(path)])
