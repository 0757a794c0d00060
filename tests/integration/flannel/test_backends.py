"""flanneld with the vxlan and host-gw backends on three namespace "nodes" and a real etcd."""
from __future__ import annotations

import ipaddress
import json
import time

import pytest

from tests.integration.flannel.cluster import PREFIX, Cluster, ip_j, nsx, sh, wait_for

NET = "10.44.0.0/16"


@pytest.fixture
def make_cluster(netns_factory, tmp_path, cni_dirs):
    made: list[Cluster] = []

    def make(n_nodes: int = 3, etcd_members: int = 1) -> Cluster:
        c = Cluster(netns_factory, tmp_path, cni_dirs[0])
        made.append(c)
        return c.build(n_nodes, etcd_members)

    try:
        yield make
    finally:
        for c in made:
            c.close()


def start_all(c: Cluster, backend: dict, *extra: str, config: dict | None = None) -> None:
    c.set_config(config or {"Network": NET, "Backend": backend})
    for node in c.nodes:
        c.start_flanneld(node, *extra)
    for node in c.nodes:
        c.wait_ready(node)


def vtep_mac(node) -> str:
    return ip_j(node.ns, "link", "show", "flannel.1")[0]["address"]


def expected_env(subnet: str, mtu: int, masq: bool = False) -> str:
    net = ipaddress.ip_network(subnet)
    return (f"FLANNEL_NETWORK={NET}\nFLANNEL_SUBNET={net.network_address + 1}/{net.prefixlen}\n"
            f"FLANNEL_MTU={mtu}\nFLANNEL_IPMASQ={'true' if masq else 'false'}\n")


def vxlan_view(node) -> dict:
    routes = sorted((r["dst"], r.get("gateway"), tuple(r.get("flags", [])))
                    for r in ip_j(node.ns, "route", "show", "dev", "flannel.1"))
    neighs = sorted((n["dst"], n.get("lladdr"), tuple(n.get("state", [])))
                    for n in ip_j(node.ns, "neigh", "show", "dev", "flannel.1"))
    fdb = sorted((f["mac"], f.get("dst"), tuple(f.get("flags", [])), f.get("state"))
                 for f in json.loads(sh(["bridge", "-j", "-n", node.ns, "fdb", "show", "dev",
                                         "flannel.1"]).stdout or "[]"))
    return {"routes": routes, "neighs": neighs, "fdb": fdb}


def expected_vxlan_view(c: Cluster, node) -> dict:
    others = [o for o in c.nodes if o is not node]
    routes, neighs, fdb = [], [], []
    for o in others:
        sn = ipaddress.ip_network(c.subnet_of(o))
        mac = vtep_mac(o)
        routes.append((str(sn), str(sn.network_address), ("onlink",)))
        neighs.append((str(sn.network_address), mac, ("PERMANENT",)))
        fdb.append((mac, o.ip, ("self",), "permanent"))
    return {"routes": sorted(routes), "neighs": sorted(neighs), "fdb": sorted(fdb)}


def hostgw_routes(c: Cluster, node) -> list:
    return sorted((r["dst"], r.get("gateway"), r.get("dev"))
                  for r in ip_j(node.ns, "route", "show")
                  if r["dst"] != "default" and ipaddress.ip_network(r["dst"]).subnet_of(
                      ipaddress.ip_network(NET)) and r.get("gateway"))


def expected_hostgw_routes(c: Cluster, node) -> list:
    return sorted((c.subnet_of(o), o.ip, "eth0") for o in c.nodes if o is not node)


def check_pods(c: Cluster) -> None:
    a = c.add_pod(c.nodes[0], "a")
    b = c.add_pod(c.nodes[1], "b")
    d = c.add_pod(c.nodes[2], "d")
    for src, dst in ((a, b), (b, d), (d, a)):
        sent, got = c.ping(src, dst.ip, count=3)
        assert sent == 3 and got == 3, f"{src.name}->{dst.name}: {got}/{sent}"
    assert c.tcp_session(a, b, rounds=5) == [f"MSG{i}" for i in range(5)]


def test_vxlan_cluster(make_cluster):
    c = make_cluster(3)
    start_all(c, {"Type": "vxlan"})
    # leases: upstream JSON, byte for byte
    leases = c.leases()
    assert len(leases) == 3
    for node in c.nodes:
        key = c.subnet_of(node).replace("/", "-")
        assert leases[key] == ('{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan",'
                               '"BackendData":{"VNI":1,"VtepMAC":"%s"}}' % (node.ip, vtep_mac(node)))
        assert node.subnet_file.read_text() == expected_env(c.subnet_of(node), 1450)
    # the VTEP as upstream makes it
    for node in c.nodes:
        link = ip_j(node.ns, "-d", "link", "show", "flannel.1")[0]
        data = link["linkinfo"]["info_data"]
        assert (data["id"], data["port"], data["local"], data["learning"], link["mtu"]) == \
            (1, 8472, node.ip, False, 1450)
        addrs = [f"{a['local']}/{a['prefixlen']}" for a in ip_j(node.ns, "addr", "show", "flannel.1")[0]["addr_info"]
                 if a["family"] == "inet"]
        assert addrs == [f"{ipaddress.ip_network(c.subnet_of(node)).network_address}/32"]
        assert "UP" in link["flags"]
    for node in c.nodes:
        wait_for(lambda: vxlan_view(node) == expected_vxlan_view(c, node), 10,
                 what=f"vxlan state on {node.name}")
    # the forward rules are in place (ip-masq off: no masquerade chain)
    save = nsx(c.nodes[0].ns, ["iptables-save"]).stdout
    assert f'-A FLANNEL-FWD -s {NET} -m comment --comment "flanneld forward" -j ACCEPT' in save
    assert '-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD' in save
    assert "FLANNEL-POSTRTG" not in save
    check_pods(c)

    # a deleted lease vanishes from the other nodes
    gone = c.nodes[2]
    gone_subnet = c.subnet_of(gone)
    t0 = time.monotonic()
    c.etcdctl("del", f"{PREFIX}/subnets/{gone_subnet.replace('/', '-')}")

    def vanished() -> bool:
        return all(gone_subnet not in [r[0] for r in vxlan_view(n)["routes"]]
                   and vtep_mac(gone) not in [f[0] for f in vxlan_view(n)["fdb"]]
                   for n in c.nodes[:2])
    _, took = wait_for(vanished, 20, 0.02, "deleted lease to vanish")
    took = time.monotonic() - t0
    for n in c.nodes[:2]:
        view = vxlan_view(n)
        assert all(ipaddress.ip_network(gone_subnet).network_address.compressed != x[0]
                   for x in view["neighs"]), (view, f"measured {took:.3f}s")
    print(f"deleted lease removed from the other nodes in {took:.3f}s")
    # upstream behaviour: the node whose lease was revoked shuts down
    wait_for(lambda: gone.proc.poll() is not None, 20, what="revoked node to exit")
    assert "Lease has been revoked" in c.log(gone)


def test_vxlan_changed_vtep_mac_replaces_entries(make_cluster):
    c = make_cluster(2)
    start_all(c, {"Type": "vxlan"})
    a, b = c.nodes
    wait_for(lambda: vxlan_view(a) == expected_vxlan_view(c, a), 10, what="initial state")
    key = f"{PREFIX}/subnets/{c.subnet_of(b).replace('/', '-')}"
    value = json.loads(c.get(key))
    value["BackendData"]["VtepMAC"] = "0a:00:00:00:be:ef"
    lease_id = json.loads(c.etcdctl("get", key, "-w", "json").stdout)["kvs"][0]["lease"]
    c.etcdctl("put", key, json.dumps(value, separators=(",", ":")), f"--lease={lease_id:x}")
    sn = ipaddress.ip_network(c.subnet_of(b))

    def replaced() -> bool:
        v = vxlan_view(a)
        return (v["fdb"] == [("0a:00:00:00:be:ef", b.ip, ("self",), "permanent")]
                and v["neighs"] == [(str(sn.network_address), "0a:00:00:00:be:ef", ("PERMANENT",))])
    wait_for(replaced, 10, what="new VtepMAC in FDB and neighbour, old one gone")


def test_hostgw_cluster(make_cluster):
    c = make_cluster(3)
    start_all(c, {"Type": "host-gw"}, "--ip-masq")
    leases = c.leases()
    for node in c.nodes:
        key = c.subnet_of(node).replace("/", "-")
        assert leases[key] == ('{"PublicIP":"%s","PublicIPv6":null,"BackendType":"host-gw"}'
                               % node.ip)
        assert node.subnet_file.read_text() == expected_env(c.subnet_of(node), 1500, masq=True)
    for node in c.nodes:
        wait_for(lambda: hostgw_routes(c, node) == expected_hostgw_routes(c, node), 10,
                 what=f"host-gw routes on {node.name}")
    save = nsx(c.nodes[0].ns, ["iptables-save", "-t", "nat"]).stdout
    sub = c.subnet_of(c.nodes[0])
    assert f'-A FLANNEL-POSTRTG -s {sub} -d {NET} -m comment --comment "flanneld masq" -j RETURN' in save
    assert '-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG' in save
    check_pods(c)

    # a route deleted by hand comes back (periodic check); a stale one goes
    n0 = c.nodes[0]
    victim = c.subnet_of(c.nodes[1])
    sh(["ip", "-n", n0.ns, "route", "del", victim])
    sh(["ip", "-n", n0.ns, "route", "add", "10.44.250.0/24", "via", c.nodes[2].ip, "dev", "eth0"])
    wait_for(lambda: hostgw_routes(c, n0) == expected_hostgw_routes(c, n0), 30,
             what="periodic route check to repair the routes")

    gone = c.nodes[2]
    gone_subnet = c.subnet_of(gone)
    t0 = time.monotonic()
    c.etcdctl("del", f"{PREFIX}/subnets/{gone_subnet.replace('/', '-')}")
    wait_for(lambda: all(gone_subnet not in [r[0] for r in hostgw_routes(c, n)] for n in c.nodes[:2]),
             20, 0.02, "deleted lease's route to vanish")
    print(f"deleted lease removed from the other nodes in {time.monotonic() - t0:.3f}s")


def test_hostgw_refuses_nat(make_cluster):
    c = make_cluster(1)
    c.set_config({"Network": NET, "Backend": {"Type": "host-gw"}})
    node = c.nodes[0]
    proc = c.start_flanneld(node, "--public-ip=192.168.200.1")
    assert proc.wait(60) == 1
    assert "your PublicIP differs from interface IP" in c.log(node)
    assert not node.subnet_file.exists()


def test_vxlan_recreates_incompatible_device(make_cluster):
    c = make_cluster(1)
    node = c.nodes[0]
    sh(["ip", "-n", node.ns, "link", "add", "flannel.1", "type", "vxlan", "id", "1", "dstport", "4789",
        "local", node.ip, "dev", "eth0"])
    start_all(c, {"Type": "vxlan"})
    data = ip_j(node.ns, "-d", "link", "show", "flannel.1")[0]["linkinfo"]["info_data"]
    assert (data["id"], data["port"]) == (1, 8472)
    assert "already exists with incompatible configuration: port: 4789 vs 8472" in c.log(node)


def test_udp_cluster(make_cluster):
    c = make_cluster(3)
    start_all(c, {"Type": "udp"})
    leases = c.leases()
    for node in c.nodes:
        key = c.subnet_of(node).replace("/", "-")
        # upstream's udp backend publishes no BackendType
        assert leases[key] == '{"PublicIP":"%s","PublicIPv6":null}' % node.ip
        assert node.subnet_file.read_text() == expected_env(c.subnet_of(node), 1472)
        link = ip_j(node.ns, "-d", "link", "show", "flannel0")[0]
        assert link["mtu"] == 1472 and "UP" in link["flags"]
        addrs = [f"{a['local']}/{a['prefixlen']}" for a in
                 ip_j(node.ns, "addr", "show", "flannel0")[0]["addr_info"] if a["family"] == "inet"]
        assert addrs == [f"{ipaddress.ip_network(c.subnet_of(node)).network_address}/32"]
        routes = [r["dst"] for r in ip_j(node.ns, "route", "show", "dev", "flannel0")]
        assert NET in routes
    check_pods(c)


def test_vxlan_device_deleted_is_recreated_with_the_same_mac(make_cluster):
    c = make_cluster(2)
    start_all(c, {"Type": "vxlan"})
    n0 = c.nodes[0]
    wait_for(lambda: vxlan_view(n0) == expected_vxlan_view(c, n0), 10, what="vxlan state")
    mac = vtep_mac(n0)
    sh(["ip", "-n", n0.ns, "link", "del", "flannel.1"])
    # the periodic check (10 s) brings the VTEP back with the MAC other nodes know
    wait_for(lambda: sh(["ip", "-n", n0.ns, "link", "show", "flannel.1"],
                        check=False).returncode == 0, 30, 0.2, "flannel.1 to be recreated")
    assert vtep_mac(n0) == mac
    wait_for(lambda: vxlan_view(n0) == expected_vxlan_view(c, n0), 30, 0.2,
             "neighbours, FDB and routes to come back")
    a = c.add_pod(n0, "a")
    b = c.add_pod(c.nodes[1], "b")
    sent, got = c.ping(a, b.ip, count=3)
    assert got == sent == 3
