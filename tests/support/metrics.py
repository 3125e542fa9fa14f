"""Scraping Prometheus endpoints in tests: fetch, parse into samples, check with ``promtool``."""

from __future__ import annotations

import shutil
import subprocess
import urllib.request
from collections.abc import Mapping

from prometheus_client.parser import text_string_to_metric_families

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str, *, timeout: float = 10.0) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as answer:  # noqa: S310 - the test's own URL
        return str(answer.read().decode())


def samples(text: str) -> Samples:
    """(sample name, labels) -> value of every sample in a text exposition."""
    return {
        (sample.name, frozenset(sample.labels.items())): float(sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, labels: Mapping[str, str] | None = None) -> float:
    """One sample's value; the sum over every label set when ``labels`` is None."""
    if labels is not None:
        return found[(name, frozenset(labels.items()))]
    matching = [v for (n, _), v in found.items() if n == name]
    if not matching:
        raise KeyError(f"no sample {name} in the scrape: {sorted({n for n, _ in found})}")
    return sum(matching)


def promtool_check(text: str) -> None:
    """``promtool check metrics`` (Debian's prometheus package): naming and format lint; raises with
    what it said."""
    promtool = shutil.which("promtool")
    if promtool is None:
        raise RuntimeError(
            "promtool not found: install Debian's prometheus package (hack/install-system-deps.sh)"
        )
    checked = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=60, check=False
    )
    if checked.returncode != 0 or checked.stdout.strip() or checked.stderr.strip():
        raise AssertionError(
            f"promtool check metrics: exit {checked.returncode}: {(checked.stdout + checked.stderr).decode()}"
        )
