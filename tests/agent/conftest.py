"""Network-namespace fixtures: deleted in teardown, also when the test or the setup fails."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.agent.netns import Namespaces, Routed, VethPair, run


@pytest.fixture
def namespaces() -> Iterator[Namespaces]:
    created = Namespaces()
    try:
        yield created
    finally:
        created.delete()


@pytest.fixture
def veth_pair(namespaces: Namespaces) -> VethPair:
    left_ns, right_ns = namespaces.netns("a"), namespaces.netns("b")
    left, right = namespaces.veth(
        left_ns=left_ns, right_ns=right_ns, role="p", left_ip="198.18.200.1/24", right_ip="198.18.200.2/24"
    )
    return VethPair(left=left, right=right)


@pytest.fixture
def routed(namespaces: Namespaces) -> Routed:
    client_ns, router_ns, server_ns = namespaces.netns("c"), namespaces.netns("r"), namespaces.netns("s")
    client, router_client_side = namespaces.veth(
        left_ns=client_ns, right_ns=router_ns, role="c", left_ip="198.18.200.2/25", right_ip="198.18.200.1/25"
    )
    router_server_side, server = namespaces.veth(
        left_ns=router_ns,
        right_ns=server_ns,
        role="s",
        left_ip="198.18.200.129/25",
        right_ip="198.18.200.130/25",
    )
    run("ip", "-n", client_ns, "route", "add", "default", "via", router_client_side.address)
    run("ip", "-n", server_ns, "route", "add", "default", "via", router_server_side.address)
    run("ip", "netns", "exec", router_ns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    return Routed(
        client=client,
        router_client_side=router_client_side,
        router_server_side=router_server_side,
        server=server,
    )
