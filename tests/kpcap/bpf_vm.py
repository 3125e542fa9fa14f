"""Test helpers: compile a filter with the real libpcap (``tcpdump -ddd``) and run the resulting
classic BPF program in userspace, plus a check against libpcap's own runtime (``tcpdump -r``)."""

from __future__ import annotations

import shutil
import struct
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

TCPDUMP = shutil.which("tcpdump")


@dataclass(frozen=True, slots=True, kw_only=True)
class Instruction:
    code: int
    jt: int
    jf: int
    k: int


@lru_cache(maxsize=4096)
def compile_filter(expression: str) -> tuple[Instruction, ...]:
    """libpcap's optimised program for ``expression`` on Ethernet (DLT_EN10MB)."""
    assert TCPDUMP is not None
    result = subprocess.run(
        [TCPDUMP, "-ddd", "--", expression], capture_output=True, text=True, check=True, timeout=30
    )
    lines = result.stdout.split("\n")
    count = int(lines[0])
    program = []
    for line in lines[1 : 1 + count]:
        code, jt, jf, k = (int(part) for part in line.split())
        program.append(Instruction(code=code, jt=jt, jf=jf, k=k))
    return tuple(program)


class _OutOfBoundsError(Exception):
    pass


def _load(frame: bytes, offset: int, size: int) -> int:
    if offset < 0 or offset + size > len(frame):
        raise _OutOfBoundsError
    fmt = {4: "!I", 2: "!H", 1: "!B"}[size]
    value: int = struct.unpack_from(fmt, frame, offset)[0]
    return value


def _alu(op: int, a: int, operand: int) -> int:
    operations = {
        0x00: lambda: a + operand,
        0x10: lambda: a - operand,
        0x20: lambda: a * operand,
        0x30: lambda: a // operand,
        0x40: lambda: a | operand,
        0x50: lambda: a & operand,
        0x60: lambda: a << operand,
        0x70: lambda: a >> operand,
        0x80: lambda: -a,
        0x90: lambda: a % operand,
        0xA0: lambda: a ^ operand,
    }
    return operations[op]()


def run_filter(program: Sequence[Instruction], frame: bytes) -> bool:
    """Interpret a classic BPF program the way the kernel and libpcap do: a load past the end of
    the packet rejects it; the verdict is a non-zero return value."""
    a = x = 0
    memory = [0] * 16
    pc = 0
    mask = 0xFFFFFFFF
    try:
        while True:
            ins = program[pc]
            pc += 1
            cls = ins.code & 0x07
            if cls in (0x00, 0x01):  # LD, LDX
                size = {0x00: 4, 0x08: 2, 0x10: 1}[ins.code & 0x18]
                mode = ins.code & 0xE0
                if mode == 0x00:
                    value = ins.k
                elif mode == 0x20:
                    value = _load(frame, ins.k, size)
                elif mode == 0x40:
                    value = _load(frame, x + ins.k, size)
                elif mode == 0x60:
                    value = memory[ins.k]
                elif mode == 0x80:
                    value = len(frame)
                elif mode == 0xA0:  # ldxb 4*([k]&0xf)
                    value = (_load(frame, ins.k, 1) & 0x0F) * 4
                else:
                    raise AssertionError(f"unsupported load mode {ins.code:#x}")
                if cls == 0x00:
                    a = value
                else:
                    x = value
            elif cls == 0x02:
                memory[ins.k] = a
            elif cls == 0x03:
                memory[ins.k] = x
            elif cls == 0x04:  # ALU
                operand = x if ins.code & 0x08 else ins.k
                op = ins.code & 0xF0
                if op in (0x30, 0x90) and operand == 0:
                    return False
                a = _alu(op, a, operand) & mask
            elif cls == 0x05:  # JMP
                op = ins.code & 0xF0
                if op == 0x00:
                    pc += ins.k
                    continue
                operand = x if ins.code & 0x08 else ins.k
                taken = {
                    0x10: a == operand,
                    0x20: a > operand,
                    0x30: a >= operand,
                    0x40: bool(a & operand),
                }[op]
                pc += ins.jt if taken else ins.jf
            elif cls == 0x06:  # RET
                source = ins.code & 0x18
                value = a if source == 0x10 else x if source == 0x08 else ins.k
                return value != 0
            elif ins.code & 0xF8 == 0x00:  # MISC: tax
                x = a
            else:  # MISC: txa
                a = x
    except _OutOfBoundsError:
        return False


def libpcap_verdicts(expression: str, frames: Sequence[bytes], workdir: Path) -> list[bool]:
    """Verdicts from libpcap itself: write the frames to a pcap (timestamp = index) and let
    ``tcpdump -r`` filter them."""
    assert TCPDUMP is not None
    source = workdir / "frames.pcap"
    kept = workdir / "kept.pcap"
    with source.open("wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, 1))
        for index, frame in enumerate(frames):
            out.write(struct.pack("<IIII", index, 0, len(frame), len(frame)))
            out.write(frame)
    subprocess.run(
        [TCPDUMP, "-r", str(source), "-w", str(kept), "--", expression],
        capture_output=True,
        check=True,
        timeout=60,
    )
    data = kept.read_bytes()
    kept_indexes: set[int] = set()
    offset = 24
    while offset < len(data):
        seconds, _micros, captured, _length = struct.unpack_from("<IIII", data, offset)
        kept_indexes.add(seconds)
        offset += 16 + captured
    return [index in kept_indexes for index in range(len(frames))]
