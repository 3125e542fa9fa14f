"""The classic BPF programs (kpcap_agent.bpf): the interface check's shape, and the program the live
source attaches read back from the kernel (``SO_GET_FILTER``): unchanged without sampling, and with
the four sampling instructions in front when sampling (root)."""

from __future__ import annotations

import ctypes
import socket
import struct

import pytest

from kpcap_agent.afpacket import LiveSource, open_live_source
from kpcap_agent.bpf import MAX_SAMPLE_ONE_IN, compile_bpf, interface_check, live_program
from tests.agent.netns import VethPair, in_netns

UDP_5555 = "udp and dst port 5555"
SO_GET_FILTER = 26  # asm-generic/socket.h: SO_GET_FILTER = SO_ATTACH_FILTER
Program = list[tuple[int, int, int, int]]


def attached_program(source: LiveSource) -> Program:
    """The program attached to the source's socket, as the kernel keeps it (``SO_GET_FILTER``).

    Through libc: the kernel reads and writes the length in instructions, not bytes, which
    ``socket.getsockopt`` cannot express.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    capacity = 4096  # BPF_MAXINSNS
    buffer = ctypes.create_string_buffer(capacity * 8)
    length = ctypes.c_uint(capacity)
    fileno = source._socket.fileno()  # the test reads what the kernel holds
    if libc.getsockopt(fileno, socket.SOL_SOCKET, SO_GET_FILTER, buffer, ctypes.byref(length)) != 0:
        raise OSError(ctypes.get_errno(), "getsockopt SO_GET_FILTER")
    return [struct.unpack_from("=HBBI", buffer.raw, 8 * index) for index in range(length.value)]


def sampling_instructions(one_in: int) -> Program:
    # Spelled out from linux/filter.h and linux/bpf_common.h, independently of kpcap_agent.bpf's names.
    return [
        (0x00 | 0x00 | 0x20, 0, 0, (-0x1000 + 56) & 0xFFFFFFFF),  # ld [SKF_AD_OFF + SKF_AD_RANDOM]
        (0x04 | 0x90 | 0x00, 0, 0, one_in),  # mod #N  (BPF_ALU | BPF_MOD | BPF_K)
        (0x05 | 0x10 | 0x00, 1, 0, 0),  # jeq #0, jt 1, jf 0  (BPF_JMP | BPF_JEQ | BPF_K)
        (0x06 | 0x00, 0, 0, 0),  # ret #0  (BPF_RET | BPF_K)
    ]


def open_and_read(pair: VethPair, *, named: bool, **sampling: int) -> tuple[Program, Program, Program]:
    """The attached program; the program built as before sampling existed (interface check, then
    the compiled filter); and what :func:`live_program` says it attaches."""

    def inside() -> tuple[Program, Program, Program]:
        interfaces = [pair.right.interface] if named else None
        with open_live_source(
            filter_expression=UDP_5555, interfaces=interfaces, snaplen=96, **sampling
        ) as source:
            attached = attached_program(source)
        only = [socket.if_nametoindex(pair.right.interface)] if named else None
        excluded = [] if named else [socket.if_nametoindex("lo")]
        before = interface_check(only=only, excluded=excluded) + compile_bpf(expression=UDP_5555, snaplen=96)
        built = live_program(filter_expression=UDP_5555, snaplen=96, only=only, excluded=excluded, **sampling)
        return attached, before, built

    return in_netns(pair.right.netns, inside)


def test_interface_check_prefix_shapes() -> None:
    assert interface_check(only=None, excluded=()) == []
    assert interface_check(only=None, excluded=[1]) == [
        (0x20, 0, 0, 0xFFFFF008),
        (0x15, 1, 0, 1),
        (0x05, 0, 0, 1),
        (0x06, 0, 0, 0),
    ]
    assert interface_check(only=[5, 9], excluded=[1]) == [
        (0x20, 0, 0, 0xFFFFF008),
        (0x15, 2, 0, 5),
        (0x15, 1, 0, 9),
        (0x06, 0, 0, 0),
    ]


@pytest.mark.parametrize("named", [True, False], ids=["named-interface", "all-but-lo"])
def test_no_sampling_attaches_the_same_program_as_before(veth_pair: VethPair, named: bool) -> None:
    default, before, built = open_and_read(veth_pair, named=named)
    explicit, _, built_explicit = open_and_read(veth_pair, named=named, sample_one_in=1)
    assert default == explicit == before == built == built_explicit
    assert before[0] == (0x20, 0, 0, 0xFFFFF008)  # the interface check's ld ifindex comes first
    assert before[-1] == (0x06, 0, 0, 0)  # the compiled filter's ret #0


@pytest.mark.parametrize("one_in", [2, 10, MAX_SAMPLE_ONE_IN])
@pytest.mark.parametrize("named", [True, False], ids=["named-interface", "all-but-lo"])
def test_sampling_prepends_four_instructions(veth_pair: VethPair, named: bool, one_in: int) -> None:
    attached, before, built = open_and_read(veth_pair, named=named, sample_one_in=one_in)
    assert attached == built == sampling_instructions(one_in) + before
    assert attached[4:] == before  # the rest unchanged, instruction for instruction


@pytest.mark.parametrize(
    ("one_in", "error", "message"),
    [
        (0, ValueError, r"sample_one_in must be in 1\.\.2147483647, got 0"),
        (-3, ValueError, r"sample_one_in must be in 1\.\.2147483647, got -3"),
        (2**31, ValueError, r"sample_one_in must be in 1\.\.2147483647, got 2147483648"),
        (True, TypeError, r"sample_one_in must be an integer in 1\.\.2147483647, got True"),
        (2.0, TypeError, r"sample_one_in must be an integer"),
    ],
)
def test_bad_sampling_rates_are_refused_before_anything_is_opened(
    one_in: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        # An interface that does not exist: the rate is refused before it is looked up.
        open_live_source(filter_expression="", interfaces=["kpcap-none0"], sample_one_in=one_in)  # type: ignore[arg-type]
