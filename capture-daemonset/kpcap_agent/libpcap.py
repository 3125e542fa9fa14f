"""The agent's one use of libpcap: compile a filter expression to classic BPF, through ctypes.

A dead handle (``pcap_open_dead``) of the given link type: no interface and no privilege needed.
Straight through ctypes rather than scapy's ``compile_filter`` (the same calls): importing scapy
took 0.2-0.5 s of the agent's start-up, before its capture socket could open.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from typing import Final

_PCAP_NETMASK_UNKNOWN: Final = 0xFFFFFFFF
_DEAD_SNAPLEN: Final = 65535  # what the accepting returns say; bpf.compile_bpf rewrites them


class _BpfInsn(ctypes.Structure):
    _fields_ = (
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    )


class _BpfProgram(ctypes.Structure):
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_BpfInsn)))


class LibpcapError(RuntimeError):
    pass


@functools.cache
def _library() -> ctypes.CDLL:
    name = ctypes.util.find_library("pcap")
    if name is None:
        raise LibpcapError("libpcap is not installed (the agent compiles its BPF filter with it)")
    lib = ctypes.CDLL(name)
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = (
        ctypes.c_void_p,
        ctypes.POINTER(_BpfProgram),
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_uint32,
    )
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = (ctypes.c_void_p,)
    lib.pcap_freecode.restype = None
    lib.pcap_freecode.argtypes = (ctypes.POINTER(_BpfProgram),)
    lib.pcap_close.restype = None
    lib.pcap_close.argtypes = (ctypes.c_void_p,)
    return lib


def compile_filter(*, expression: str, linktype: int) -> list[tuple[int, int, int, int]]:
    """The optimised program of ``expression`` as (code, jt, jf, k) tuples; the empty expression
    accepts every frame. Raises ``LibpcapError`` with libpcap's message when it does not compile."""
    lib = _library()
    handle = lib.pcap_open_dead(linktype, _DEAD_SNAPLEN)
    if not handle:
        raise LibpcapError(f"pcap_open_dead({linktype}) failed")
    try:
        program = _BpfProgram()
        if (
            lib.pcap_compile(handle, ctypes.byref(program), expression.encode(), 1, _PCAP_NETMASK_UNKNOWN)
            != 0
        ):
            message = (lib.pcap_geterr(handle) or b"").decode(errors="replace")
            raise LibpcapError(f"cannot compile the filter {expression!r}: {message}")
        try:
            return [
                (int(i.code), int(i.jt), int(i.jf), int(i.k))
                for i in (program.bf_insns[index] for index in range(program.bf_len))
            ]
        finally:
            lib.pcap_freecode(ctypes.byref(program))
    finally:
        lib.pcap_close(handle)
