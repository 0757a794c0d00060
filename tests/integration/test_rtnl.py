"""podnet.rtnl against the kernel, inside throwaway namespaces; cross-checked with iproute2."""
from __future__ import annotations

import errno
import json
import os
import subprocess
import threading

import pytest

from podnet import netns, rtnl
from podnet.rtnl import AF_BRIDGE, AF_INET, AF_INET6, RTNL


def ipj(ns: str, *args: str):
    out = subprocess.run(["ip", "-n", ns, "-j", *args], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out or "[]")


def bridgej(ns: str, *args: str):
    out = subprocess.run(["bridge", "-n", ns, "-j", *args], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out or "[]")


@pytest.fixture
def host(netns_factory):
    return netns_factory("rtnl")


@pytest.fixture
def nl(host):
    with RTNL(host) as r:
        yield r


# --- links ------------------------------------------------------------------------------------

def test_bridge_and_veth_with_peer_in_other_netns(netns_factory, host, nl):
    pod = netns_factory("rtnl-pod")
    nl.add_link("cni0", "bridge", mtu=1450, up=True, mac="02:42:00:00:00:01")
    nl.add_link("veth1", "veth", peer_name="eth0", peer_netns=pod, master="cni0", up=True,
                mtu=1450, peer_mac="02:42:00:00:00:02")

    br = nl.link("cni0")
    veth = nl.link("veth1")
    assert (br.kind, br.mtu, br.mac, br.up) == ("bridge", 1450, "02:42:00:00:00:01", True)
    assert (veth.kind, veth.master, veth.mtu, veth.up) == ("veth", br.index, 1450, True)
    assert veth.link_netnsid is not None  # peer lives in another namespace
    assert nl.link_index("veth1") == veth.index == nl.link(index=veth.index).index

    shown = {d["ifname"]: d for d in ipj(host, "-d", "link", "show")}
    assert shown["veth1"]["master"] == "cni0"
    assert shown["veth1"]["linkinfo"]["info_kind"] == "veth"
    assert shown["cni0"]["address"] == br.mac
    ours = {link.name: link for link in nl.links()}
    assert set(ours) == set(shown)
    for name, d in shown.items():
        assert ours[name].index == d["ifindex"] and ours[name].mtu == d["mtu"]
        assert ours[name].operstate == d["operstate"]

    with RTNL(pod) as pnl:
        eth0 = pnl.link("eth0")
        assert (eth0.kind, eth0.mtu, eth0.mac, eth0.link) == ("veth", 1450, "02:42:00:00:00:02",
                                                              veth.index)
        assert veth.link == eth0.index
    [pod_eth0] = ipj(pod, "link", "show", "eth0")
    assert pod_eth0["ifindex"] == eth0.index


def test_set_link_attributes_and_rename(host, nl):
    nl.add_link("br-a", "bridge")
    nl.add_link("br-b", "bridge")
    nl.add_link("va", "veth", peer_name="vb")
    nl.set_link("va", up=True, mtu=1400, mac="02:00:00:00:00:aa", master="br-a", txqlen=500,
                promisc=True)
    va = nl.link("va")
    assert (va.up, va.mtu, va.mac, va.master, va.txqlen) == (True, 1400, "02:00:00:00:00:aa",
                                                             nl.link_index("br-a"), 500)
    assert va.flags & rtnl.IFF_PROMISC
    nl.set_link(va.index, master="br-b", promisc=False)
    assert nl.link("va").master == nl.link_index("br-b")
    nl.set_link("va", master=0)
    assert nl.link("va").master is None
    nl.set_link("va", name="va-renamed", up=False)
    renamed = nl.link("va-renamed")
    assert renamed.index == va.index and not renamed.up
    [shown] = ipj(host, "link", "show", "va-renamed")
    assert shown["mtu"] == 1400 and "master" not in shown


def test_move_links_between_namespaces(netns_factory, nl):
    other = netns_factory("rtnl-other")
    nl.add_link("m1", "veth", peer_name="m2")
    nl.set_link("m1", netns=other)                    # by name
    fd = netns.open_fd(other)
    try:
        nl.set_link("m2", netns=fd, name="moved2")    # by fd, renamed on the way
    finally:
        os.close(fd)
    with pytest.raises(rtnl.LinkNotFound):
        nl.link("m1")
    with RTNL(other) as onl:
        m1, moved = onl.link("m1"), onl.link("moved2")
        assert m1.link == moved.index and m1.link_netnsid is None
    names = {d["ifname"] for d in ipj(other, "link", "show")}
    assert {"m1", "moved2"} <= names


def test_create_link_directly_in_another_namespace(netns_factory, nl):
    other = netns_factory("rtnl-direct")
    nl.add_link("brx", "bridge", netns=netns.path(other))
    with pytest.raises(rtnl.LinkNotFound):
        nl.link("brx")
    assert ipj(other, "link", "show", "brx")[0]["ifname"] == "brx"


def test_delete_and_link_errors(nl):
    nl.add_link("gone0", "bridge")
    with pytest.raises(rtnl.AlreadyExists) as exc:
        nl.add_link("gone0", "bridge")
    assert exc.value.code == errno.EEXIST
    nl.del_link("gone0")
    for call in (lambda: nl.link("gone0"), lambda: nl.link_index("gone0"),
                 lambda: nl.del_link("gone0"), lambda: nl.set_link("gone0", up=True),
                 lambda: nl.del_link(999_999), lambda: nl.link(index=999_999)):
        with pytest.raises(rtnl.LinkNotFound) as exc:
            call()
        assert exc.value.code == errno.ENODEV
    with pytest.raises(rtnl.NetlinkError):
        nl.add_link("weird0", "no-such-kind")


# --- bridge ports and VLANs --------------------------------------------------------------------

def test_bridge_port_hairpin_learning_flood(host, nl):
    nl.add_link("br0", "bridge")
    nl.add_link("p0", "veth", peer_name="p0peer", master="br0")
    assert nl.link("p0").bridge_port["hairpin"] is False
    nl.set_bridge_port("p0", hairpin=True, learning=False, flood=False)
    port = nl.link("p0").bridge_port
    assert (port["hairpin"], port["learning"], port["flood"]) == (True, False, False)
    [shown] = ipj(host, "-d", "link", "show", "p0")
    slave = shown["linkinfo"]["info_slave_data"]
    assert (slave["hairpin"], slave["learning"], slave["flood"]) == (True, False, False)
    nl.set_bridge_port("p0", hairpin=False)
    assert nl.link("p0").bridge_port["hairpin"] is False
    with pytest.raises(rtnl.NetlinkError):
        nl.set_bridge_port("p0peer", hairpin=True)  # not a bridge port


def test_bridge_vlans(host, nl):
    try:
        nl.add_link("brv", "bridge", data={"vlan_filtering": 1})
    except rtnl.NetlinkError as e:
        if e.code == errno.EOPNOTSUPP:
            pytest.skip("kernel without CONFIG_BRIDGE_VLAN_FILTERING")
        raise
    nl.add_link("pv", "veth", peer_name="pvpeer", master="brv")
    nl.bridge_vlan_add("pv", 10, pvid=True, untagged=True)
    nl.bridge_vlan_add("pv", 20)
    nl.bridge_vlan_add("brv", 20, self_=True)
    vlans = dict(nl.bridge_vlans("pv"))
    assert vlans[10] & (rtnl.BRIDGE_VLAN_INFO_PVID | rtnl.BRIDGE_VLAN_INFO_UNTAGGED)
    assert 20 in vlans
    assert 20 in dict(nl.bridge_vlans("brv"))
    nl.bridge_vlan_del("pv", 20)
    assert 20 not in dict(nl.bridge_vlans("pv"))
    shown = {e["ifname"]: {v["vlan"] for v in e["vlans"]} for e in bridgej(host, "vlan", "show")}
    assert 10 in shown["pv"] and 20 not in shown["pv"]


# --- addresses ----------------------------------------------------------------------------------

def test_addresses_v4_v6(host, nl):
    nl.add_link("a0", "bridge", up=True)
    nl.add_addr("a0", "10.88.0.1/24")
    nl.add_addr("a0", "10.88.1.1/31")
    nl.add_addr("a0", "fd88::1/64", nodad=True)
    idx = nl.link_index("a0")
    got = {a.cidr for a in nl.addrs(idx)}
    assert {"10.88.0.1/24", "10.88.1.1/31", "fd88::1/64"} <= got
    v4 = {a.cidr: a for a in nl.addrs("a0", AF_INET)}
    assert set(v4) == {"10.88.0.1/24", "10.88.1.1/31"}
    assert v4["10.88.0.1/24"].broadcast == "10.88.0.255"
    assert all(a.family == AF_INET6 for a in nl.addrs(idx, AF_INET6))

    [shown] = ipj(host, "addr", "show", "dev", "a0")
    theirs = {f"{i['local']}/{i['prefixlen']}" for i in shown["addr_info"]}
    assert theirs == got
    assert any(i.get("broadcast") == "10.88.0.255" for i in shown["addr_info"])

    with pytest.raises(rtnl.AlreadyExists):
        nl.add_addr("a0", "10.88.0.1/24")
    nl.add_addr("a0", "10.88.0.1/24", replace=True)   # idempotent with replace
    nl.del_addr("a0", "10.88.1.1/31")
    with pytest.raises(rtnl.AddressNotAvailable) as exc:
        nl.del_addr("a0", "10.88.1.1/31")
    assert exc.value.code == errno.EADDRNOTAVAIL
    assert nl.flush_addrs("a0", AF_INET) == 1
    assert nl.addrs(idx, AF_INET) == []
    assert nl.addrs(idx, AF_INET6) != []
    nl.flush_addrs(idx)
    assert nl.addrs(idx) == []


# --- routes ------------------------------------------------------------------------------------------

def test_routes_v4_v6_gateway_onlink_default(host, nl):
    nl.add_link("r0", "bridge", up=True)
    nl.add_link("r1", "veth", peer_name="r1peer", up=True)
    nl.add_addr("r0", "10.70.0.1/24")
    nl.add_addr("r0", "fd70::1/64", nodad=True)
    idx = nl.link_index("r0")
    nl.add_route("10.71.0.0/16", gateway="10.70.0.2")
    nl.add_route("default", gateway="10.70.0.254")
    nl.add_route("10.72.0.0/16", gateway="192.168.99.1", oif="r1", onlink=True)
    nl.add_route("10.73.0.0/16", oif=idx, mtu=1400, priority=50)
    nl.add_route("10.74.0.5", oif="r0", table=100)
    nl.add_route("10.75.0.0/16", type="blackhole")
    nl.add_route("fd71::/64", gateway="fd70::2")
    nl.add_route("default", gateway="fd70::fe")

    routes = {r.dst: r for r in nl.routes(AF_INET)}
    assert routes["10.71.0.0/16"].gateway == "10.70.0.2" and routes["10.71.0.0/16"].oif == idx
    assert routes["0.0.0.0/0"].gateway == "10.70.0.254"
    onlink = routes["10.72.0.0/16"]
    assert onlink.onlink and onlink.oif == nl.link_index("r1")
    assert onlink.gateway == "192.168.99.1"
    direct = routes["10.73.0.0/16"]
    assert (direct.gateway, direct.scope, direct.mtu, direct.priority) == (
        None, rtnl.RT_SCOPE_LINK, 1400, 50)
    assert routes["10.75.0.0/16"].type == "blackhole"
    assert "10.74.0.5/32" not in routes
    [t100] = nl.routes(AF_INET, table=100)
    assert (t100.dst, t100.table) == ("10.74.0.5/32", 100)
    assert any(r.table == 100 for r in nl.routes(table=None))
    v6 = {r.dst: r for r in nl.routes(AF_INET6)}
    assert v6["fd71::/64"].gateway == "fd70::2"
    assert v6["::/0"].gateway == "fd70::fe"
    assert {r.family for r in nl.routes()} == {AF_INET, AF_INET6}

    theirs = {r["dst"]: r for r in ipj(host, "route", "show")}
    assert theirs["default"]["gateway"] == "10.70.0.254"
    assert "onlink" in theirs["10.72.0.0/16"]["flags"]
    assert theirs["10.75.0.0/16"]["type"] == "blackhole"
    assert set(theirs) == {"default" if r.dst == "0.0.0.0/0" else r.dst.removesuffix("/32")
                           for r in nl.routes(AF_INET)}

    with pytest.raises(rtnl.AlreadyExists):
        nl.add_route("10.71.0.0/16", gateway="10.70.0.2")
    nl.add_route("10.71.0.0/16", gateway="10.70.0.3", replace=True)
    assert {r.dst: r for r in nl.routes(AF_INET)}["10.71.0.0/16"].gateway == "10.70.0.3"
    with pytest.raises(rtnl.NetlinkError) as exc:
        nl.add_route("10.76.0.0/16", gateway="192.168.50.1")  # unreachable gateway, no onlink
    assert exc.value.code == errno.ENETUNREACH

    nl.del_route("10.71.0.0/16")
    nl.del_route("default", gateway="10.70.0.254")
    nl.del_route("::/0")
    nl.del_route("10.74.0.5", table=100)
    nl.del_route("10.75.0.0/16")
    left = {r.dst for r in nl.routes()}
    assert not {"10.71.0.0/16", "0.0.0.0/0", "::/0", "10.75.0.0/16"} & left
    assert nl.routes(AF_INET, table=100) == []
    with pytest.raises(rtnl.NotFound) as exc:
        nl.del_route("10.71.0.0/16")
    assert exc.value.code == errno.ESRCH


# --- neighbours and FDB --------------------------------------------------------------------------

def test_neighbours_v4_v6(host, nl):
    nl.add_link("n0", "bridge", up=True)
    idx = nl.link_index("n0")
    nl.add_neigh(idx, "10.60.0.9", "aa:bb:cc:00:00:09")
    nl.add_neigh("n0", "fd60::9", "AA:BB:CC:00:00:0A", permanent=False)
    nl.add_neigh(idx, "10.60.0.9", "aa:bb:cc:00:00:99")  # replace is the default
    got = {n.address: n for n in nl.neighs(index=idx)}
    assert got["10.60.0.9"].mac == "aa:bb:cc:00:00:99"
    assert got["10.60.0.9"].state == rtnl.NUD_PERMANENT
    assert got["fd60::9"].mac == "aa:bb:cc:00:00:0a" and got["fd60::9"].family == AF_INET6
    assert {n.family for n in nl.neighs(AF_INET, idx)} == {AF_INET}
    theirs = {n["dst"]: n for n in ipj(host, "neigh", "show", "dev", "n0")}
    assert theirs["10.60.0.9"]["lladdr"] == "aa:bb:cc:00:00:99"
    assert "PERMANENT" in theirs["10.60.0.9"]["state"]
    assert theirs["fd60::9"]["lladdr"] == "aa:bb:cc:00:00:0a"
    with pytest.raises(rtnl.AlreadyExists):
        nl.add_neigh(idx, "10.60.0.9", "aa:bb:cc:00:00:01", replace=False)
    nl.del_neigh(idx, "10.60.0.9")
    nl.del_neigh("n0", "fd60::9")
    # the kernel may add NOARP entries for multicast groups it joins (IGMP/MLD) by itself
    assert [n for n in nl.neighs(index=idx) if not n.state & 0x40] == []
    with pytest.raises(rtnl.NotFound):
        nl.del_neigh(idx, "10.60.0.9")


def test_vxlan_device_and_fdb(host, nl):
    nl.add_link("underlay", "bridge", up=True)
    nl.add_addr("underlay", "192.168.40.1/24")
    under = nl.link_index("underlay")
    nl.add_link("flannel.1", "vxlan", mtu=1450, up=True, mac="0e:00:00:00:00:01",
                data={"id": 1, "local": "192.168.40.1", "dev": under, "port": 8472,
                      "learning": False, "ttl": 0})
    vx = nl.link("flannel.1")
    assert vx.kind == "vxlan"
    assert {k: vx.info[k] for k in ("id", "local", "port", "learning", "link")} == {
        "id": 1, "local": "192.168.40.1", "port": 8472, "learning": False, "link": under}
    [shown] = ipj(host, "-d", "link", "show", "flannel.1")
    data = shown["linkinfo"]["info_data"]
    assert (data["id"], data["local"], data["port"], data["learning"]) == (
        1, "192.168.40.1", 8472, False)

    nl.fdb_add(vx.index, "0e:00:00:00:00:02", "192.168.40.2")
    nl.fdb_add("flannel.1", "0e:00:00:00:00:03", "192.168.40.3")
    nl.fdb_add(vx.index, "0e:00:00:00:00:02", "192.168.40.22")   # replace moves it
    with pytest.raises(rtnl.AlreadyExists):
        nl.fdb_add(vx.index, "0e:00:00:00:00:03", "192.168.40.3", replace=False)
    entries = {n.mac: n for n in nl.fdbs(vx.index)}
    assert entries["0e:00:00:00:00:02"].dst == "192.168.40.22"
    assert entries["0e:00:00:00:00:03"].dst == "192.168.40.3"
    assert all(n.family == AF_BRIDGE and n.flags & rtnl.NTF_SELF for n in entries.values())
    assert entries["0e:00:00:00:00:03"].state & rtnl.NUD_PERMANENT
    theirs = {(e["mac"], e.get("dst")) for e in bridgej(host, "fdb", "show", "dev", "flannel.1")}
    assert ("0e:00:00:00:00:02", "192.168.40.22") in theirs
    assert ("0e:00:00:00:00:03", "192.168.40.3") in theirs

    nl.fdb_del(vx.index, "0e:00:00:00:00:02", "192.168.40.22")
    nl.fdb_del("flannel.1", "0e:00:00:00:00:03")
    left = {n.mac for n in nl.fdbs(vx.index)}
    assert not {"0e:00:00:00:00:02", "0e:00:00:00:00:03"} & left
    with pytest.raises(rtnl.NotFound):
        nl.fdb_del(vx.index, "0e:00:00:00:00:03")
    nl.del_link("flannel.1")
    with pytest.raises(rtnl.LinkNotFound):
        nl.fdbs("flannel.1")


def test_vxlan_ipv6_local(nl):
    nl.add_link("vx6", "vxlan", data={"id": 77, "local": "fd40::1", "port": 4789})
    vx = nl.link("vx6")
    assert (vx.info["id"], vx.info["local"], vx.info["port"]) == (77, "fd40::1", 4789)
    nl.fdb_add("vx6", "0e:00:00:00:06:01", "fd40::2")
    assert {n.mac: n.dst for n in nl.fdbs("vx6")}["0e:00:00:00:06:01"] == "fd40::2"


# --- sockets, namespaces, threads ----------------------------------------------------------------

def test_socket_namespace_given_as_name_path_or_fd(host):
    fd = netns.open_fd(host)
    try:
        for ref in (host, netns.path(host), fd):
            with RTNL(ref) as r:
                assert [link.name for link in r.links()] == ["lo"]
    finally:
        os.close(fd)
    with pytest.raises(netns.NetnsNotFound):
        RTNL("pn-test-does-not-exist")


def test_calling_thread_keeps_its_namespace(host):
    before = os.stat("/proc/thread-self/ns/net")
    with RTNL(host) as r:
        r.add_link("tb0", "bridge")
    after = os.stat("/proc/thread-self/ns/net")
    assert (before.st_dev, before.st_ino) == (after.st_dev, after.st_ino)


def test_one_instance_shared_by_threads(nl):
    nl.add_link("shared0", "bridge")
    idx = nl.link_index("shared0")
    results, errors = [], []

    def worker(n: int) -> None:
        try:
            for i in range(50):
                assert nl.link_index("shared0") == idx
                nl.set_link(idx, mtu=1300 + n * 10 + i % 2)
                results.append(len(nl.links()))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert results == [2] * 200


def test_closed_socket_refuses_requests(host):
    r = RTNL(host)
    r.close()
    r.close()  # idempotent
    with pytest.raises(ValueError):
        r.links()

