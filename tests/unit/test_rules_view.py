"""`podnet rules` prints routes, neighbours and FDB entries the way ip/bridge do."""
from __future__ import annotations

from podnet import rtnl, rules_view

NAMES = {2: "eth0", 5: "flannel.1"}


def test_route_lines():
    r = rtnl.Route(family=2, dst="10.244.2.0/24", gateway="10.244.2.0", oif=5, onlink=True)
    assert rules_view.format_route(r, NAMES) == "10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink"
    d = rtnl.Route(family=2, dst="0.0.0.0/0", gateway="192.168.200.1", oif=2)
    assert rules_view.format_route(d, NAMES) == "default via 192.168.200.1 dev eth0"


def test_neigh_and_fdb_lines():
    n = rtnl.Neigh(family=2, index=5, address="10.244.2.0", mac="aa:bb:cc:dd:ee:ff", state=0x80)
    assert rules_view.format_neigh(n, NAMES) == "10.244.2.0 dev flannel.1 lladdr aa:bb:cc:dd:ee:ff PERMANENT"
    f = rtnl.Neigh(family=7, index=5, mac="aa:bb:cc:dd:ee:ff", dst="192.168.200.12", state=0x80)
    assert rules_view.format_fdb(f, NAMES) == "aa:bb:cc:dd:ee:ff dev flannel.1 dst 192.168.200.12 permanent"
    assert rules_view.section("x", []) == "== x ==\n(none)\n"
