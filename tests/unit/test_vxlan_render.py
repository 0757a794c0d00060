"""Golden renders of the vxlan backend's desired state and its device checks."""
from __future__ import annotations

from ipaddress import IPv4Address, ip_network

import pytest

from flannel_py.backend import ExternalInterface
from flannel_py.backend.vxlan import VxlanDeviceSpec, device_spec, incompatibility, render_vxlan
from flannel_py.config import parse_config
from flannel_py.subnet.registry import Lease, LeaseAttrs
from podnet.rtnl import Link


def vx(subnet: str, ip: str, mac: str, btype: str = "vxlan") -> Lease:
    return Lease(ip_network(subnet), LeaseAttrs(IPv4Address(ip), btype, {"VNI": 1, "VtepMAC": mac}))


REMOTE = [vx("10.244.3.0/24", "192.168.1.3", "AA:BB:CC:00:00:03"),
          vx("10.244.2.0/24", "192.168.1.2", "aa:bb:cc:00:00:02"),
          vx("10.244.9.0/24", "192.168.1.9", "aa:bb:cc:00:00:09", btype="host-gw"),
          Lease(ip_network("10.244.8.0/24"), LeaseAttrs(IPv4Address("192.168.1.8"), "vxlan", None))]


def test_render_golden():
    state = render_vxlan(REMOTE, dev="flannel.1", ext_dev="eth0", vni=1)
    assert state.render() == (
        "neigh 10.244.2.0 lladdr aa:bb:cc:00:00:02 dev flannel.1 PERMANENT\n"
        "fdb aa:bb:cc:00:00:02 dev flannel.1 dst 192.168.1.2 self permanent\n"
        "route 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink\n"
        "neigh 10.244.3.0 lladdr aa:bb:cc:00:00:03 dev flannel.1 PERMANENT\n"
        "fdb aa:bb:cc:00:00:03 dev flannel.1 dst 192.168.1.3 self permanent\n"
        "route 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink\n")


def test_render_direct_routing_same_l2_only():
    remote = [vx("10.244.2.0/24", "192.168.1.2", "aa:bb:cc:00:00:02"),
              vx("10.244.5.0/24", "172.16.0.5", "aa:bb:cc:00:00:05")]
    state = render_vxlan(remote, dev="flannel.1", ext_dev="eth0", vni=1, direct_routing=True,
                         local_networks=[ip_network("192.168.1.0/24")])
    assert state.render() == (
        "route 10.244.2.0/24 via 192.168.1.2 dev eth0\n"
        "neigh 10.244.5.0 lladdr aa:bb:cc:00:00:05 dev flannel.1 PERMANENT\n"
        "fdb aa:bb:cc:00:00:05 dev flannel.1 dst 172.16.0.5 self permanent\n"
        "route 10.244.5.0/24 via 10.244.5.0 dev flannel.1 onlink\n")


def test_render_is_order_independent():
    a = render_vxlan(REMOTE, dev="flannel.1", ext_dev="eth0", vni=1)
    b = render_vxlan(list(reversed(REMOTE)), dev="flannel.1", ext_dev="eth0", vni=1)
    assert a == b


EXT = ExternalInterface("eth0", 7, IPv4Address("192.168.1.1"), IPv4Address("192.168.1.1"), 1500)


@pytest.mark.parametrize("backend,expected", [
    ({"Type": "vxlan"}, VxlanDeviceSpec("flannel.1", 1, 8472, IPv4Address("192.168.1.1"), 7, 1450)),
    ({"Type": "vxlan", "VNI": 4, "Port": 4789, "MTU": 9000},
     VxlanDeviceSpec("flannel.4", 4, 4789, IPv4Address("192.168.1.1"), 7, 8950)),
])
def test_device_spec(backend, expected):
    config = parse_config('{"Network": "10.244.0.0/16", "Backend": %s}' % __import__("json").dumps(backend))
    assert device_spec(EXT, config) == expected


SPEC = VxlanDeviceSpec("flannel.1", 1, 8472, IPv4Address("192.168.1.1"), 7, 1450)


@pytest.mark.parametrize("info,kind,why", [
    ({"id": 1, "port": 8472, "local": "192.168.1.1", "link": 7}, "vxlan", ""),
    ({"id": 2, "port": 8472, "local": "192.168.1.1", "link": 7}, "vxlan", "vni: 2 vs 1"),
    ({"id": 1, "port": 4789, "local": "192.168.1.1", "link": 7}, "vxlan", "port: 4789 vs 8472"),
    ({"id": 1, "port": 8472, "local": "192.168.1.9", "link": 7}, "vxlan",
     "vtep (external) IP: 192.168.1.9 vs 192.168.1.1"),
    ({}, "bridge", "link type: bridge vs vxlan"),
])
def test_incompatibility(info, kind, why):
    link = Link(index=9, name="flannel.1", kind=kind, info=info)
    assert incompatibility(SPEC, link) == why
