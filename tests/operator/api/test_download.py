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
