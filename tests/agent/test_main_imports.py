"""The capture agent's start-up path stays light: what ``kpcap_agent.__main__`` imports before its
socket opens holds neither the Kubernetes client nor scapy (0.3-1 s and 0.2-0.5 s of start-up)."""

from __future__ import annotations

import subprocess
import sys


def test_the_agent_entry_point_imports_neither_the_kubernetes_client_nor_scapy() -> None:
    check = (
        "import sys, kpcap_agent.__main__; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'kubernetes', 'scapy', 'boto3', 'urllib3'}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, check=True, timeout=60
    )
    assert found.stdout.strip() == "[]", found.stdout
