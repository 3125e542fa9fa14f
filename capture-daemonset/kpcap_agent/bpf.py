"""The classic BPF program the live source attaches: sampling check, interface check, compiled filter.

The filter expression is built from validated typed values by ``kpcap.filters``, never user text,
and compiled by libpcap (through ctypes) for Ethernet, with no interface needed. In front of it go an
interface check on the ``ifindex`` ancillary load and, for the sampler, a random 1-in-N sampling
check; jumps in classic BPF are relative and forward, so a prefix needs no change to the program.

What the kernel filter sees (tested in tests/agent/test_live_capture.py): the kernel strips the
802.1Q/802.1ad tag of received frames into metadata before the packet taps run, so

- the filter sees the untagged frame: a filter such as ``udp and dst port 53`` (what
  ``kpcap.filters.bpf_expression`` builds) matches tagged and untagged traffic alike;
- libpcap's ``vlan`` keyword compiles differently by handle: for a live Linux handle it uses the
  ``vlanp``/``vlan_tci`` ancillary loads, but for the dead Ethernet handle used here it checks for
  0x8100 in the frame, which the kernel has removed, so ``vlan`` never matches received tagged
  frames. Do not use ``vlan`` in filter expressions.
- a frame whose tag is still inline (the inner tag of QinQ, outgoing copies on NICs without VLAN
  offload) is seen tagged by the filter, so ``ip``/``udp`` checks at fixed offsets do not match it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from kpcap.pcap import LINKTYPE_ETHERNET
from kpcap_agent.libpcap import compile_filter

Instruction = tuple[int, int, int, int]  # struct sock_filter: code, jt, jf, k

_SKF_AD_IFINDEX: Final = 0xFFFFF000 + 8  # SKF_AD_OFF (-0x1000) + SKF_AD_IFINDEX, as u32
_SKF_AD_RANDOM: Final = 0xFFFFF000 + 56  # SKF_AD_OFF + SKF_AD_RANDOM (a fresh prandom u32 per load)
# Opcodes (linux/bpf_common.h): class | size | mode, or class | op | source.
_BPF_LD_W_ABS: Final = 0x20  # BPF_LD 0x00 | BPF_W 0x00 | BPF_ABS 0x20
_BPF_ALU_MOD_K: Final = 0x94  # BPF_ALU 0x04 | BPF_MOD 0x90 | BPF_K 0x00
_BPF_JMP_JEQ_K: Final = 0x15  # BPF_JMP 0x05 | BPF_JEQ 0x10 | BPF_K 0x00
_BPF_JMP_JA: Final = 0x05  # BPF_JMP 0x05 | BPF_JA 0x00
_BPF_RET_K: Final = 0x06  # BPF_RET 0x06 | BPF_K 0x00
MAX_SAMPLE_ONE_IN: Final = 2**31 - 1
_MAX_SELECTED_INTERFACES: Final = 200  # jump offsets in classic BPF are 8-bit


def compile_bpf(*, expression: str, snaplen: int) -> list[Instruction]:
    """Compile a filter expression for Ethernet with libpcap (``kpcap_agent.libpcap``); no
    interface needed.

    The accepting ``ret`` instructions are rewritten to return ``snaplen`` (libpcap's dead handle
    returns 65535, which would truncate GRO super-packets).
    """
    program = compile_filter(expression=expression, linktype=LINKTYPE_ETHERNET)
    return [(code, jt, jf, snaplen if code == _BPF_RET_K and k != 0 else k) for code, jt, jf, k in program]


def interface_check(*, only: Sequence[int] | None, excluded: Sequence[int]) -> list[Instruction]:
    """BPF instructions to put in front of a program: reject frames of the wrong interfaces.

    Jumps in classic BPF are relative and forward, so a prefix needs no change to the program.
    """
    if only is not None:
        selected, reject_listed = list(only), False
    else:
        selected, reject_listed = list(excluded), True
    if not selected:
        return []
    if len(selected) > _MAX_SELECTED_INTERFACES:
        raise ValueError(f"at most {_MAX_SELECTED_INTERFACES} interfaces can be selected")
    count = len(selected)
    prefix = [(_BPF_LD_W_ABS, 0, 0, _SKF_AD_IFINDEX)]
    if reject_listed:
        # ld ifindex; jeq each -> ret 0; ja over it; ret 0; <program>
        prefix += [
            (_BPF_JMP_JEQ_K, count + 1 - position, 0, index) for position, index in enumerate(selected, 1)
        ]
        prefix += [(_BPF_JMP_JA, 0, 0, 1), (_BPF_RET_K, 0, 0, 0)]
    else:
        # ld ifindex; jeq each -> <program>; ret 0; <program>
        prefix += [
            (_BPF_JMP_JEQ_K, count + 1 - position, 0, index) for position, index in enumerate(selected, 1)
        ]
        prefix += [(_BPF_RET_K, 0, 0, 0)]
    return prefix


def sampling_check(*, one_in: int) -> list[Instruction]:
    """BPF instructions to put in front of a program: keep each frame with probability 1/``one_in``.

    ``ld rand; mod #N; jeq #0 -> <program>; ret #0``: the kernel draws a random number per frame
    (``SKF_AD_RANDOM``), so frames are kept independently of one another, and a dropped frame is
    never queued. ``one_in`` 1 gives no instruction at all (the program is unchanged).
    """
    if isinstance(one_in, bool) or not isinstance(one_in, int):
        raise TypeError(f"sample_one_in must be an integer in 1..{MAX_SAMPLE_ONE_IN}, got {one_in!r}")
    if not 1 <= one_in <= MAX_SAMPLE_ONE_IN:
        raise ValueError(f"sample_one_in must be in 1..{MAX_SAMPLE_ONE_IN}, got {one_in}")
    if one_in == 1:
        return []
    return [
        (_BPF_LD_W_ABS, 0, 0, _SKF_AD_RANDOM),
        (_BPF_ALU_MOD_K, 0, 0, one_in),
        (_BPF_JMP_JEQ_K, 1, 0, 0),  # remainder 0: skip the ret, on to the program
        (_BPF_RET_K, 0, 0, 0),
    ]


def live_program(
    *,
    filter_expression: str,
    snaplen: int,
    only: Sequence[int] | None,
    excluded: Sequence[int],
    sample_one_in: int = 1,
) -> list[Instruction]:
    """The program :func:`kpcap_agent.afpacket.open_live_source` attaches: the sampling check (none
    for ``sample_one_in`` 1), the interface check (:func:`interface_check`), then the compiled filter."""
    return (
        sampling_check(one_in=sample_one_in)
        + interface_check(only=only, excluded=excluded)
        + compile_bpf(expression=filter_expression, snaplen=snaplen)
    )
