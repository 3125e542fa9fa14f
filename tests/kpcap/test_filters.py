"""bpf_expression, matches and compile_matcher agree with each other and with the real libpcap, frame by
frame."""

from __future__ import annotations

import ipaddress
import itertools
import random
import struct
import subprocess
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kpcap.filters import bpf_expression, compile_matcher, matches
from kpcap.model import CaptureFilter
from tests.kpcap.bpf_vm import TCPDUMP, compile_filter, libpcap_verdicts, run_filter
from tests.kpcap.frames import (
    IPV4_ADDRESSES,
    IPV6_ADDRESSES,
    PORTS,
    PROTOCOLS,
    TPIDS,
    FrameSpec,
    address_version,
    build_frame,
)

needs_tcpdump = pytest.mark.skipif(TCPDUMP is None, reason="tcpdump (libpcap) is not installed")

ALL_ADDRESSES = IPV4_ADDRESSES + IPV6_ADDRESSES


@lru_cache(maxsize=1024)
def _compiled(capture_filter: CaptureFilter) -> Callable[[bytes], bool]:
    return compile_matcher(capture_filter)


def _verdict(capture_filter: CaptureFilter, frame: bytes) -> bool:
    """The reference verdict, after checking that the compiled matcher gives the same one."""
    expected = matches(capture_filter, frame)
    assert _compiled(capture_filter)(frame) is expected, (bpf_expression(capture_filter), frame.hex())
    return expected


def _filter(
    *,
    source: str | None = None,
    destination: str | None = None,
    source_port: int | None = None,
    destination_port: int | None = None,
    protocol: int | None = None,
) -> CaptureFilter:
    return CaptureFilter(
        source_address=None if source is None else ipaddress.ip_address(source),
        destination_address=None if destination is None else ipaddress.ip_address(destination),
        source_port=source_port,
        destination_port=destination_port,
        protocol=protocol,
    )


# --- strategies -----------------------------------------------------------------------------------


@st.composite
def capture_filters(draw: st.DrawFn) -> CaptureFilter:
    version = draw(st.sampled_from((4, 6)))
    addresses = IPV4_ADDRESSES if version == 4 else IPV6_ADDRESSES
    maybe_address = st.none() | st.sampled_from(addresses)
    maybe_port = st.none() | st.sampled_from(PORTS)
    source_port = draw(maybe_port)
    destination_port = draw(maybe_port)
    has_port = source_port is not None or destination_port is not None
    protocols = (6, 17, 132) if has_port else PROTOCOLS
    return _filter(
        source=draw(maybe_address),
        destination=draw(maybe_address),
        source_port=source_port,
        destination_port=destination_port,
        protocol=draw(st.none() | st.sampled_from(protocols)),
    )


@st.composite
def frame_specs(draw: st.DrawFn) -> FrameSpec:
    kind = draw(st.sampled_from(("ipv4", "ipv4", "ipv6", "ipv6", "arp", "other")))
    addresses = IPV6_ADDRESSES if kind == "ipv6" else IPV4_ADDRESSES
    fragment_offset = draw(st.sampled_from((0, 0, 0, 1, 185)))
    return FrameSpec(
        kind=kind,
        source=draw(st.sampled_from(addresses)),
        destination=draw(st.sampled_from(addresses)),
        protocol=draw(st.sampled_from(PROTOCOLS)),
        source_port=draw(st.sampled_from(PORTS)),
        destination_port=draw(st.sampled_from(PORTS)),
        vlan_tpids=tuple(draw(st.lists(st.sampled_from(TPIDS), max_size=3))),
        ipv4_fragment_offset=fragment_offset,
        ipv4_more_fragments=draw(st.booleans()),
        ipv4_options=draw(st.booleans()),
        ipv6_extension=draw(st.sampled_from(("none", "none", "fragment", "hop-by-hop"))),
        truncate_to=draw(st.none() | st.none() | st.integers(min_value=0, max_value=90)),
    )


# --- the expression text ---------------------------------------------------------------------------


def test_empty_filter_is_the_empty_expression_and_matches_everything() -> None:
    assert bpf_expression(CaptureFilter()) == ""
    assert matches(CaptureFilter(), b"")
    assert matches(
        CaptureFilter(), build_frame(FrameSpec(kind="arp", source="198.18.0.1", destination="198.18.0.2"))
    )
    match_all = compile_matcher(CaptureFilter())
    assert match_all(b"")
    assert match_all(b"\x00" * 60)
    assert match_all(build_frame(FrameSpec(kind="arp", source="198.18.0.1", destination="198.18.0.2")))


def test_expression_text_for_every_field() -> None:
    capture_filter = _filter(
        source="198.18.0.1", destination="198.18.0.2", source_port=80, destination_port=443, protocol=6
    )
    packet = "ip src host 198.18.0.1 and ip dst host 198.18.0.2 and src port 80 and dst port 443 and (ip proto 6 or ip6 proto 6)"
    assert bpf_expression(capture_filter) == f"{packet} or (vlan and ({packet} or (vlan and ({packet}))))"


def test_ipv6_addresses_use_ip6() -> None:
    assert bpf_expression(_filter(source="2001:db8::1")).startswith("ip6 src host 2001:db8::1 or")


# --- targeted semantics ----------------------------------------------------------------------------


def _ipv4(**changes: object) -> FrameSpec:
    base: dict[str, object] = {
        "kind": "ipv4",
        "source": "198.18.0.1",
        "destination": "198.18.0.2",
        "protocol": 6,
        "source_port": 80,
        "destination_port": 443,
    }
    base.update(changes)
    return FrameSpec(**base)  # type: ignore[arg-type]


def _ipv6(**changes: object) -> FrameSpec:
    base: dict[str, object] = {
        "kind": "ipv6",
        "source": "2001:db8::1",
        "destination": "2001:db8::2",
        "protocol": 6,
        "source_port": 80,
        "destination_port": 443,
    }
    base.update(changes)
    return FrameSpec(**base)  # type: ignore[arg-type]


# Each case: the filter, the frame, the expected verdict and why.
SEMANTICS = [
    (_filter(source_port=80), _ipv4(), True, "plain TCP"),
    (_filter(source_port=80), _ipv4(protocol=17), True, "UDP has ports"),
    (_filter(source_port=80), _ipv4(protocol=132), True, "SCTP has ports"),
    (_filter(source_port=80), _ipv4(protocol=47), False, "GRE has no ports"),
    (_filter(source_port=80), _ipv4(ipv4_options=True), True, "ports found after IPv4 options"),
    (_filter(source_port=80), _ipv4(ipv4_more_fragments=True), True, "first fragment carries ports"),
    (_filter(source_port=80), _ipv4(ipv4_fragment_offset=185), False, "later fragment has no ports"),
    (_filter(protocol=6), _ipv4(ipv4_fragment_offset=185), True, "protocol matches every fragment"),
    (_filter(source="198.18.0.1"), _ipv4(ipv4_fragment_offset=185), True, "address on every fragment"),
    (
        _filter(source="198.18.0.1"),
        FrameSpec(kind="arp", source="198.18.0.1", destination="198.18.0.2"),
        False,
        "ARP is not IP",
    ),
    (_filter(source_port=80), _ipv4(vlan_tpids=(0x8100,)), True, "802.1Q"),
    (_filter(source_port=80), _ipv4(vlan_tpids=(0x88A8, 0x8100)), True, "QinQ"),
    (_filter(source_port=80), _ipv4(vlan_tpids=(0x9100, 0x9100)), True, "old QinQ TPID"),
    (_filter(source_port=80), _ipv4(vlan_tpids=(0x8100, 0x8100, 0x8100)), False, "three tags: not decoded"),
    (_filter(source_port=80), _ipv6(), True, "IPv6 TCP"),
    (
        _filter(source_port=80),
        _ipv6(ipv6_extension="fragment"),
        False,
        "IPv6 ext headers not walked for ports",
    ),
    (_filter(source_port=80), _ipv6(ipv6_extension="hop-by-hop"), False, "IPv6 ext headers not walked"),
    (_filter(protocol=6), _ipv6(ipv6_extension="fragment"), True, "ip6 proto looks past one fragment header"),
    (_filter(protocol=6), _ipv6(ipv6_extension="hop-by-hop"), False, "but not past hop-by-hop"),
    (_filter(protocol=17), _ipv6(protocol=17), True, "IPv6 UDP"),
    (_filter(source="2001:db8::1", destination_port=443), _ipv6(vlan_tpids=(0x8100,)), True, "tagged IPv6"),
    (_filter(source="198.18.0.1"), _ipv4(truncate_to=29), False, "truncated before the address"),
    (_filter(source_port=80), _ipv4(truncate_to=35), False, "truncated before the port"),
]


@pytest.mark.parametrize(
    ("capture_filter", "frame_spec", "expected", "why"), SEMANTICS, ids=[s[3] for s in SEMANTICS]
)
def test_semantics(capture_filter: CaptureFilter, frame_spec: FrameSpec, expected: bool, why: str) -> None:
    frame = build_frame(frame_spec)
    assert matches(capture_filter, frame) is expected, why
    assert compile_matcher(capture_filter)(frame) is expected, why
    if TCPDUMP is not None:
        assert run_filter(compile_filter(bpf_expression(capture_filter)), frame) is expected, why


# --- equivalence with libpcap ----------------------------------------------------------------------


def _corpus() -> list[bytes]:
    frames = []
    for kind, tags, extension, fragment in itertools.product(
        ("ipv4", "ipv6"), ((), (0x8100,), (0x88A8, 0x8100)), ("none", "fragment"), (0, 185)
    ):
        addresses = IPV4_ADDRESSES if kind == "ipv4" else IPV6_ADDRESSES
        for protocol, (source, destination), ports in itertools.product(
            (1, 6, 17, 58, 132), itertools.permutations(addresses[:2], 2), ((80, 443), (443, 80))
        ):
            frames.append(
                build_frame(
                    FrameSpec(
                        kind=kind,
                        source=source,
                        destination=destination,
                        protocol=protocol,
                        source_port=ports[0],
                        destination_port=ports[1],
                        vlan_tpids=tags,
                        ipv4_fragment_offset=fragment,
                        ipv6_extension=extension,
                    )
                )
            )
    frames.append(build_frame(FrameSpec(kind="arp", source="198.18.0.1", destination="198.18.0.2")))
    frames.append(build_frame(FrameSpec(kind="other")))
    return frames


CORPUS_FILTERS = [
    _filter(source="198.18.0.1"),
    _filter(destination="2001:db8::2"),
    _filter(source_port=80),
    _filter(destination_port=80),
    _filter(protocol=6),
    _filter(protocol=58),
    _filter(source="198.18.0.1", destination="198.18.0.2", source_port=80, destination_port=443, protocol=6),
    _filter(source="2001:db8::1", destination_port=443, protocol=17),
]


@needs_tcpdump
@pytest.mark.parametrize("capture_filter", CORPUS_FILTERS, ids=bpf_expression)
def test_matches_agrees_with_libpcap_runtime(capture_filter: CaptureFilter, tmp_path: Path) -> None:
    """The real libpcap (tcpdump -r) filters a pcap; matches() and the BPF interpreter must agree."""
    frames = _corpus()
    expression = bpf_expression(capture_filter)
    expected = libpcap_verdicts(expression, frames, tmp_path)
    program = compile_filter(expression)
    assert [run_filter(program, frame) for frame in frames] == expected
    assert [matches(capture_filter, frame) for frame in frames] == expected
    matcher = compile_matcher(capture_filter)
    assert [matcher(frame) for frame in frames] == expected
    assert any(expected), "the corpus should exercise matching frames too"


@needs_tcpdump
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(capture_filter=capture_filters(), specs=st.lists(frame_specs(), min_size=1, max_size=25))
def test_matches_agrees_with_compiled_bpf(capture_filter: CaptureFilter, specs: list[FrameSpec]) -> None:
    program = compile_filter(bpf_expression(capture_filter))
    for spec in specs:
        frame = build_frame(spec)
        assert _verdict(capture_filter, frame) == run_filter(program, frame), (
            bpf_expression(capture_filter),
            spec,
        )


@needs_tcpdump
@settings(max_examples=200, deadline=None)
@given(capture_filter=capture_filters(), frame=st.binary(min_size=0, max_size=80))
def test_matches_agrees_with_compiled_bpf_on_arbitrary_bytes(
    capture_filter: CaptureFilter, frame: bytes
) -> None:
    program = compile_filter(bpf_expression(capture_filter))
    # Random bytes rarely look like IP; give them an IP or VLAN EtherType half of the time.
    for ethertype in (b"", b"\x08\x00", b"\x86\xdd", b"\x81\x00"):
        candidate = frame[:12] + ethertype + frame[12:] if ethertype else frame
        assert _verdict(capture_filter, candidate) == run_filter(program, candidate)


@needs_tcpdump
@pytest.mark.parametrize("protocol", range(256))
def test_every_protocol_number_compiles(protocol: int) -> None:
    assert compile_filter(bpf_expression(_filter(protocol=protocol)))


@needs_tcpdump
@pytest.mark.parametrize("address", ALL_ADDRESSES)
def test_addresses_compile(address: str) -> None:
    capture_filter = _filter(source=address, destination=address)
    assert compile_filter(bpf_expression(capture_filter))
    assert address_version(address) in (4, 6)


# --- compile_matcher: the same verdict as matches on every frame -----------------------------------

# Filters whose clauses can never all hold on one family, or only through an IPv6 Fragment header.
UNUSUAL_FILTERS = [
    _filter(source="198.18.0.1", destination="2001:db8::2"),  # IPv4 and IPv6 at once: never
    _filter(source_port=80, protocol=47),  # GRE carries no ports: never
    _filter(destination_port=53, protocol=44),  # 44 is not a port protocol
    _filter(protocol=44),  # the IPv6 Fragment header number itself
    _filter(source_port=443, destination_port=80),
    _filter(source="2001:db8::2", source_port=443),
    _filter(destination="198.18.0.1", protocol=17),
]
ALL_FILTERS = CORPUS_FILTERS + UNUSUAL_FILTERS


def _libpcap_verdict(capture_filter: CaptureFilter, frame: bytes) -> bool:
    """The compiled BPF's verdict; an expression libpcap refuses as rejecting all packets is False."""
    try:
        program = compile_filter(bpf_expression(capture_filter))
    except subprocess.CalledProcessError as error:
        if "expression rejects all packets" in error.stderr:
            return False
        raise
    return run_filter(program, frame)


def _patched(frame: bytes, offset: int, value: bytes) -> bytes:
    return frame[:offset] + value + frame[offset + len(value) :]


def _with_ipv4_fragment_field(frame: bytes, field: int) -> bytes:
    """An untagged IPv4 frame with its flags/fragment-offset field set (header checksum left stale)."""
    return _patched(frame, 20, struct.pack("!H", field))


IPV4_TCP = build_frame(_ipv4())
IPV6_TCP = build_frame(_ipv6())
TAGGED_IPV4_TCP = build_frame(_ipv4(vlan_tpids=(0x8100,)))

# Byte-level cases the frame builder does not produce; (filter, frame, expected, why).
RAW_SEMANTICS = [
    (_filter(source_port=80), _with_ipv4_fragment_field(IPV4_TCP, 0x4000), True, "DF set, offset 0"),
    (_filter(source_port=80), _with_ipv4_fragment_field(IPV4_TCP, 0x8000), True, "reserved bit set"),
    (_filter(source_port=80), _with_ipv4_fragment_field(IPV4_TCP, 0xE000), True, "all flags, offset 0"),
    (_filter(source_port=80), _with_ipv4_fragment_field(IPV4_TCP, 0x4001), False, "DF, offset 1"),
    (_filter(source_port=80), _with_ipv4_fragment_field(IPV4_TCP, 0x1FFF), False, "largest offset"),
    (_filter(protocol=6), _with_ipv4_fragment_field(IPV4_TCP, 0x5FFF), True, "protocol on any fragment"),
    (_filter(source_port=80), _patched(IPV4_TCP, 14, b"\x65"), True, "version nibble is not checked"),
    (_filter(source="198.18.0.1"), _patched(IPV4_TCP, 14, b"\x4f"), True, "IHL not read for addresses"),
    # IHL 4: libpcap reads the ports 16 bytes into the IP header, i.e. the source address bytes.
    (_filter(source_port=0xC612), _patched(IPV4_TCP, 14, b"\x44"), True, "IHL 4 is taken as given"),
    (_filter(source_port=80), _patched(IPV4_TCP, 14, b"\x44"), False, "IHL 4: not the real port"),
    (_filter(source_port=0x4500), _patched(IPV4_TCP, 14, b"\x40"), False, "IHL 0: the IP header is read"),
    (_filter(source_port=0x4000), _patched(IPV4_TCP, 14, b"\x40"), True, "IHL 0: the IP header is read"),
    (_filter(protocol=6), _patched(IPV6_TCP, 12, b"\x08\x00"), False, "IPv6 bytes as IPv4: proto 0x40?"),
    (_filter(source_port=80), IPV4_TCP[:37], True, "frame ends right after the source port"),
    (_filter(destination_port=443), IPV4_TCP[:37], False, "frame ends inside the destination port"),
    (_filter(destination="2001:db8::2"), IPV6_TCP[:54], True, "IPv6 frame ends after the address"),
    (_filter(destination="2001:db8::2"), IPV6_TCP[:53], False, "IPv6 frame ends inside the address"),
    (_filter(source="198.18.0.1"), IPV6_TCP, False, "an IPv4 filter on an IPv6 frame"),
    (_filter(source="2001:db8::1"), IPV4_TCP, False, "an IPv6 filter on an IPv4 frame"),
    (_filter(source_port=80), IPV4_TCP[:12] + b"\x81\x00" + IPV4_TCP[12:], False, "TPID, no tag"),
    (_filter(source_port=80), IPV4_TCP[:16] + b"\x81\x00\x00\x01" + IPV4_TCP[12:], False, "VLAN, no tag"),
    (_filter(source_port=80), build_frame(_ipv4(vlan_tpids=(0x8100,), truncate_to=41)), True, "tag, short"),
    (_filter(protocol=6), build_frame(_ipv4(vlan_tpids=(0x8100,) * 2, truncate_to=32)), True, "2 tags"),
    (_filter(protocol=6), build_frame(_ipv4(vlan_tpids=(0x8100,) * 2, truncate_to=31)), False, "2 tags"),
    (_filter(protocol=6), build_frame(_ipv6(vlan_tpids=(0x8100,), ipv6_extension="fragment")), True, "tag"),
    # Shorter than the fixed-offset layout (which reads the ports 20 bytes in), yet a match.
    (_filter(source_port=0x4000), _patched(TAGGED_IPV4_TCP, 18, b"\x40")[:32], True, "tag, IHL 0, short"),
    (UNUSUAL_FILTERS[0], IPV4_TCP, False, "IPv4 and IPv6 addresses at once"),
    (_filter(protocol=44), build_frame(_ipv6(ipv6_extension="fragment")), True, "next header 44 itself"),
]


@pytest.mark.parametrize(
    ("capture_filter", "frame", "expected", "why"), RAW_SEMANTICS, ids=[s[3] for s in RAW_SEMANTICS]
)
def test_raw_semantics(capture_filter: CaptureFilter, frame: bytes, expected: bool, why: str) -> None:
    assert _verdict(capture_filter, frame) is expected, why
    if TCPDUMP is not None:
        assert _libpcap_verdict(capture_filter, frame) is expected, why


def test_compiled_matcher_is_a_plain_predicate() -> None:
    matcher = compile_matcher(_filter(destination_port=53))
    assert matcher(build_frame(_ipv4(protocol=17, destination_port=53))) is True
    assert matcher(build_frame(_ipv4(protocol=17, destination_port=54))) is False
    assert matcher(b"") is False
    assert compile_matcher(CaptureFilter())(b"") is True


@pytest.mark.parametrize("capture_filter", ALL_FILTERS, ids=bpf_expression)
def test_compiled_matcher_agrees_on_the_corpus_and_every_truncation(capture_filter: CaptureFilter) -> None:
    matcher = compile_matcher(capture_filter)
    checked = matched = 0
    for frame in _corpus():
        for length in range(len(frame) + 1):
            prefix = frame[:length]
            verdict = matcher(prefix)
            assert verdict is matches(capture_filter, prefix), (bpf_expression(capture_filter), prefix.hex())
            checked += 1
            matched += verdict
    assert checked > 10_000
    if capture_filter not in UNUSUAL_FILTERS[:3]:
        assert matched, "the corpus should exercise matching frames too"


# Values that steer the fixed-offset fields into (and out of) the fast paths' layouts.
_INTERESTING_BYTES = (
    0x00, 0x01, 0x06, 0x08, 0x11, 0x1F, 0x20, 0x2C, 0x40, 0x44, 0x45, 0x46, 0x4F, 0x50, 0x65, 0x81, 0x84,
    0x86, 0x88, 0x91, 0xA8, 0xDD, 0xE0, 0xFF,
)  # fmt: skip


@st.composite
def mutated_frames(draw: st.DrawFn) -> bytes:
    frame = bytearray(build_frame(draw(frame_specs())))
    for _ in range(draw(st.integers(min_value=0, max_value=4))):
        if not frame:
            break
        offset = draw(st.integers(min_value=min(12, len(frame) - 1), max_value=min(62, len(frame) - 1)))
        frame[offset] = draw(st.sampled_from(_INTERESTING_BYTES) | st.integers(0, 255))
    return bytes(frame)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capture_filter=capture_filters() | st.sampled_from(ALL_FILTERS),
    frames=st.lists(mutated_frames(), min_size=1, max_size=10),
)
def test_compiled_matcher_agrees_on_mutated_frames(
    capture_filter: CaptureFilter, frames: list[bytes]
) -> None:
    for frame in frames:
        verdict = _verdict(capture_filter, frame)
        if TCPDUMP is not None:
            assert verdict == _libpcap_verdict(capture_filter, frame), (
                bpf_expression(capture_filter),
                frame.hex(),
            )


def test_compiled_matcher_agrees_on_random_frames() -> None:
    """Seeded bulk check: real frames with random bytes overwritten in the headers, and noise."""
    rng = random.Random(20_240_611)
    templates = [frame for frame in _corpus() if len(frame) > 20]
    filters = ALL_FILTERS
    for _ in range(20_000):
        frame = bytearray(rng.choice(templates))
        for _ in range(rng.randrange(4)):
            frame[rng.randrange(12, min(len(frame), 64))] = rng.choice(
                (*_INTERESTING_BYTES, rng.randrange(256))
            )
        if rng.random() < 0.2:
            del frame[rng.randrange(len(frame) + 1) :]
        if rng.random() < 0.05:
            frame = bytearray(rng.randbytes(rng.randrange(80)))
        _verdict(rng.choice(filters), bytes(frame))
