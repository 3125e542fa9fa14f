"""libpcap's filter compiler through ctypes: the programs tcpdump's libpcap makes, errors in words."""

from __future__ import annotations

import pytest

from kpcap.pcap import LINKTYPE_ETHERNET
from kpcap_agent.libpcap import LibpcapError, compile_filter
from tests.kpcap import bpf_vm

RET_K = 0x06
EXPRESSIONS = ["udp dst port 53", "ip and host 198.18.0.5 and tcp portrange 1000-2000", "ip6 or arp"]


def _accepting_as_one(program: list[tuple[int, int, int, int]]) -> list[tuple[int, int, int, int]]:
    """The accepting returns' snap length set to 1 (the dead handle's 65535, tcpdump's 262144)."""
    return [(c, jt, jf, 1 if c == RET_K and k else k) for c, jt, jf, k in program]


@pytest.mark.skipif(bpf_vm.TCPDUMP is None, reason="tcpdump (its libpcap compiles the reference)")
@pytest.mark.parametrize("expression", EXPRESSIONS)
def test_programs_are_those_tcpdump_compiles(expression: str) -> None:
    reference = [(i.code, i.jt, i.jf, i.k) for i in bpf_vm.compile_filter(expression)]
    ours = compile_filter(expression=expression, linktype=LINKTYPE_ETHERNET)
    assert _accepting_as_one(ours) == _accepting_as_one(reference)


def test_the_empty_expression_accepts_every_frame() -> None:
    assert compile_filter(expression="", linktype=LINKTYPE_ETHERNET) == [(RET_K, 0, 0, 65535)]


def test_an_expression_libpcap_refuses_is_an_error_with_its_message() -> None:
    with pytest.raises(LibpcapError, match="unknown port 'x'"):
        compile_filter(expression="udp dst port x", linktype=LINKTYPE_ETHERNET)
