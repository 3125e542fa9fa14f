"""Where a capture's files are: the store comes from its destinationConf, foreign URIs are refused."""

from __future__ import annotations

import pytest

from kpcap.pcap import PcapFormatError
from kpcap_operator.api.download import file_keys


def test_file_keys_come_from_the_destination() -> None:
    capture = {
        "spec": {"destinationConf": "s3://bkt/pre?region=us-east-1&endpoint=http://10.0.0.1:9000"},
        "status": {"files": ["s3://bkt/pre/pcap_x/n1.pcap", "s3://bkt/pre/pcap_x/n2.pcap"]},
    }
    destination, keys = file_keys(capture)
    assert destination.endpoint == "http://10.0.0.1:9000"
    assert keys == ["pre/pcap_x/n1.pcap", "pre/pcap_x/n2.pcap"]
    capture["status"]["files"] = ["s3://other/pre/x.pcap"]
    with pytest.raises(PcapFormatError, match="not in the capture's bucket"):
        file_keys(capture)


def test_past_50_files_every_file_comes_from_the_reports_in_target_order() -> None:
    uid = "0123abcd-0000-4000-8000-00000000abcd"
    targets = [f"n{i:03}" for i in range(60)]
    reports = {n: {"phase": "done", "objectUri": f"s3://bkt/pre/{n}.pcap"} for n in targets}
    reports["n005"] = {"phase": "failed", "error": "x"}
    capture = {
        "metadata": {"uid": uid},
        "spec": {"destinationConf": "s3://bkt/pre?region=us-east-1"},
        "status": {
            "targetNodes": targets,
            "files": [f"s3://bkt/pre/{n}.pcap" for n in targets if n != "n005"][:50],
            "filesTotal": 59,
        },
    }
    asked: list[str] = []

    def node_reports(cid: str) -> dict[str, dict[str, str]]:
        asked.append(cid)
        return reports

    _, keys = file_keys(capture, reports=node_reports)
    assert keys == [f"pre/{n}.pcap" for n in targets if n != "n005"]
    assert asked == [uid.replace("-", "")]
    # Up to 50 files (no filesTotal) the status is enough: the reports are not read.
    del capture["status"]["filesTotal"]
    assert len(file_keys(capture, reports=node_reports)[1]) == 50
    assert len(asked) == 1
