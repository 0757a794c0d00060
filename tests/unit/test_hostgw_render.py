"""Golden renders of host-gw routes; the applier converging an in-memory fake kernel."""
from __future__ import annotations

from ipaddress import IPv4Address, ip_network

import pytest

from flannel_py.backend import ExternalInterface
from flannel_py.backend.hostgw import NAT_ERROR, HostGwBackend, HostGwError, render_host_gw
from flannel_py.config import parse_config
from flannel_py.subnet.registry import Lease, LeaseAttrs
from podnet.rtnl import NotFound, Route


def hg(subnet: str, ip: str, btype: str = "host-gw") -> Lease:
    return Lease(ip_network(subnet), LeaseAttrs(IPv4Address(ip), btype))


def test_render_golden():
    remote = [hg("10.244.3.0/24", "192.168.1.3"), hg("10.244.2.0/24", "192.168.1.2"),
              hg("10.244.4.0/24", "192.168.1.4", btype="vxlan")]
    assert render_host_gw(remote, "eth0").render() == (
        "route 10.244.2.0/24 via 192.168.1.2 dev eth0\n"
        "route 10.244.3.0/24 via 192.168.1.3 dev eth0\n")


class FakeRtnl:
    """Main routing table only: {dst: Route}."""

    def __init__(self) -> None:
        self.table: dict[str, Route] = {}

    def routes(self, family=None, table=254):
        return list(self.table.values())

    def neighs(self, family=None, index=None):
        return []

    def fdbs(self, index):
        return []

    def add_route(self, dst, *, gateway=None, oif=None, onlink=False, replace=False, **kw):
        self.table[dst] = Route(2, dst, gateway=gateway, oif=oif, onlink=onlink)

    def del_route(self, dst, *, gateway=None, oif=None, **kw):
        if dst not in self.table:
            raise NotFound(2, "no such route")
        del self.table[dst]


EXT = ExternalInterface("eth0", 7, IPv4Address("192.168.1.1"), IPv4Address("192.168.1.1"), 1500)
CONFIG = parse_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "host-gw"}}')
OWN = hg("10.244.1.0/24", "192.168.1.1")


def view(fake: FakeRtnl) -> set[tuple]:
    return {(r.dst, r.gateway, r.oif) for r in fake.table.values()}


def test_converges_adds_and_removes_only_its_routes():
    fake = FakeRtnl()
    fake.add_route("0.0.0.0/0", gateway="192.168.1.254", oif=7)           # not ours
    fake.add_route("10.244.9.0/24", gateway="192.168.1.9", oif=7)         # stale flannel route
    fake.add_route("10.245.0.0/24", gateway="192.168.1.5", oif=7)         # outside the Network
    be = HostGwBackend(EXT, CONFIG, rtnl=fake, check_interval=0)
    be.start(OWN, CONFIG)
    be.reconcile([hg("10.244.2.0/24", "192.168.1.2"), hg("10.244.3.0/24", "192.168.1.3")])
    assert view(fake) == {("0.0.0.0/0", "192.168.1.254", 7), ("10.245.0.0/24", "192.168.1.5", 7),
                          ("10.244.2.0/24", "192.168.1.2", 7), ("10.244.3.0/24", "192.168.1.3", 7)}
    be.reconcile([hg("10.244.3.0/24", "192.168.1.3")])
    assert ("10.244.2.0/24", "192.168.1.2", 7) not in view(fake)
    # deleted behind our back: the periodic check (resync) puts it back
    del fake.table["10.244.3.0/24"]
    be.resync()
    assert ("10.244.3.0/24", "192.168.1.3", 7) in view(fake)
    before = dict(fake.table)
    be.resync()
    assert fake.table == before


def test_refuses_nat():
    ext = ExternalInterface("eth0", 7, IPv4Address("192.168.1.1"), IPv4Address("203.0.113.1"), 1500)
    with pytest.raises(HostGwError, match="differs from interface IP"):
        HostGwBackend(ext, CONFIG, rtnl=FakeRtnl())
    assert "NAT" in NAT_ERROR
