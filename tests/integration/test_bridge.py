"""bridge + host-local executed as a runtime does (env + stdin), in throwaway namespaces.

Every test runs twice: standalone executables and through the CNI daemon.
"""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from cni.names import chain_name
from tests.conftest import ns_run
from tests.integration.conftest import ip_json


def netconf(tmp_path, version="1.0.0", **kw):
    ipam = kw.pop("ipam", None) or {"type": "host-local", "subnet": "10.22.0.0/24",
                                    "dataDir": str(tmp_path / "ipam")}
    conf = {"cniVersion": version, "name": "testnet", "type": "bridge", "bridge": "cni0",
            "isGateway": True, "ipam": ipam}
    conf.update(kw)
    return conf


def reservations(tmp_path, net="testnet"):
    d = tmp_path / "ipam" / net
    return sorted(p.name for p in d.iterdir() if p.name[0].isdigit() or ":" in p.name) if d.exists() else []


def host_veths(ns):
    return [l["ifname"] for l in ip_json(ns, "-n", ns, "link", "show", "type", "veth")]


def eventually(check, timeout=5.0):
    """The kernel tears a deleted netns down asynchronously: poll for the outcome."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def ping(ns, ip):
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c1", "-W1", ip],
                          capture_output=True).returncode == 0


def test_add_two_pods_ping_check_del(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pods = [netns_factory("pod") for _ in range(2)]
    conf = netconf(tmp_path, ipMasq=True)
    results = []
    for i, pod in enumerate(pods):
        code, res, err = cni(host, "bridge", "ADD", conf, container_id=f"c{i}",
                             netns=f"/run/netns/{pod}")
        assert code == 0, (res, err)
        results.append(res)
    r0 = results[0]
    assert r0["cniVersion"] == "1.0.0"
    assert [i["name"] for i in r0["interfaces"]][0] == "cni0"
    assert r0["interfaces"][1]["name"].startswith("veth") and len(r0["interfaces"][1]["name"]) == 12
    assert r0["interfaces"][2] == {"name": "eth0", "mac": r0["interfaces"][2]["mac"],
                                   "sandbox": f"/run/netns/{pods[0]}"}
    assert r0["ips"] == [{"interface": 2, "address": "10.22.0.2/24", "gateway": "10.22.0.1"}]
    assert results[1]["ips"][0]["address"] == "10.22.0.3/24"
    # kernel state matches the result
    addrs = ip_json(pods[0], "-n", pods[0], "addr", "show", "eth0")
    assert {(a["local"], a["prefixlen"]) for a in addrs[0]["addr_info"] if a["family"] == "inet"} \
        == {("10.22.0.2", 24)}
    assert addrs[0]["address"] == r0["interfaces"][2]["mac"]
    br = ip_json(host, "-n", host, "addr", "show", "cni0")[0]
    assert ("10.22.0.1", 24) in {(a["local"], a["prefixlen"]) for a in br["addr_info"]}
    assert br["address"] == r0["interfaces"][0]["mac"]
    # connectivity: pod ↔ pod and pod → gateway
    assert ping(pods[0], "10.22.0.3")
    assert ping(pods[1], "10.22.0.2")
    assert ping(pods[0], "10.22.0.1")
    # masquerade chain with the Go plugin's name and comment
    nat = ns_run(host, ["iptables-save", "-t", "nat"]).stdout
    chain = chain_name("testnet", "c0")
    assert f':{chain} - ' in nat
    assert f'-A POSTROUTING -s 10.22.0.2/32 -m comment --comment "name: \\"testnet\\" id: \\"c0\\"" -j {chain}' in nat
    assert f"-A {chain} -d 10.22.0.0/24" in nat and "-j MASQUERADE" in nat
    # CHECK with prevResult
    code, res, err = cni(host, "bridge", "CHECK", {**conf, "prevResult": r0}, container_id="c0",
                         netns=f"/run/netns/{pods[0]}")
    assert (code, res) == (0, None), err
    # DEL three times, then nothing is left of pod 0
    for _ in range(3):
        code, res, err = cni(host, "bridge", "DEL", conf, container_id="c0",
                             netns=f"/run/netns/{pods[0]}")
        assert (code, res) == (0, None), err
    assert reservations(tmp_path) == ["10.22.0.3"]
    assert r0["interfaces"][1]["name"] not in host_veths(host)
    assert ip_json(pods[0], "-n", pods[0], "link", "show", "type", "veth") == []
    assert chain not in ns_run(host, ["iptables-save", "-t", "nat"]).stdout


def test_del_after_netns_deleted_removes_reservation_and_masq(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    conf = netconf(tmp_path, ipMasq=True)
    pod = f"pn-test-gone-{os.getpid()}-{cni.mode}"
    subprocess.run(["ip", "netns", "add", pod], check=True)
    try:
        code, res, err = cni(host, "bridge", "ADD", conf, container_id="gone", netns=f"/run/netns/{pod}")
        assert code == 0, err
    finally:
        subprocess.run(["ip", "netns", "del", pod], check=True)
    for _ in range(2):
        code, res, err = cni(host, "bridge", "DEL", conf, container_id="gone", netns=f"/run/netns/{pod}")
        assert (code, res) == (0, None), err
    assert reservations(tmp_path) == []
    assert eventually(lambda: host_veths(host) == []), host_veths(host)
    assert chain_name("testnet", "gone") not in ns_run(host, ["iptables-save", "-t", "nat"]).stdout


def test_failed_add_rolls_back_everything(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pods = [netns_factory("pod") for _ in range(2)]
    # the bridge already holds a different address in the subnet: the ADD fails after IPAM
    ns_run(host, ["ip", "link", "add", "cni0", "type", "bridge"])
    ns_run(host, ["ip", "addr", "add", "10.22.0.200/24", "dev", "cni0"])
    conf = netconf(tmp_path, ipMasq=True)
    code, res, err = cni(host, "bridge", "ADD", conf, container_id="x", netns=f"/run/netns/{pods[0]}")
    assert code == 1 and "already has an IP address different from 10.22.0.1/24" in res["msg"]
    assert reservations(tmp_path) == []
    assert host_veths(host) == []
    assert ip_json(pods[0], "-n", pods[0], "link", "show", "type", "veth") == []
    assert "CNI-" not in ns_run(host, ["iptables-save", "-t", "nat"]).stdout
    # forceAddress replaces it
    code, res, err = cni(host, "bridge", "ADD", {**conf, "forceAddress": True}, container_id="x",
                         netns=f"/run/netns/{pods[1]}")
    assert code == 0, err
    locals_ = {a["local"] for a in ip_json(host, "-n", host, "addr", "show", "cni0")[0]["addr_info"]}
    assert "10.22.0.1" in locals_ and "10.22.0.200" not in locals_


def test_exhausted_range_leaves_no_veth(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pods = [netns_factory("pod") for _ in range(2)]
    ipam = {"type": "host-local", "subnet": "10.23.0.0/29", "rangeStart": "10.23.0.2",
            "rangeEnd": "10.23.0.2", "dataDir": str(tmp_path / "ipam")}
    conf = netconf(tmp_path, ipam=ipam)
    assert cni(host, "bridge", "ADD", conf, container_id="a", netns=f"/run/netns/{pods[0]}")[0] == 0
    code, res, _ = cni(host, "bridge", "ADD", conf, container_id="b", netns=f"/run/netns/{pods[1]}")
    assert code == 1 and res["code"] == 11 and "no IP addresses available" in res["msg"]
    assert len(host_veths(host)) == 1
    assert ip_json(pods[1], "-n", pods[1], "link", "show", "type", "veth") == []


def test_not_a_bridge_and_missing_netns(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pod = netns_factory("pod")
    ns_run(host, ["ip", "link", "add", "cni0", "type", "veth", "peer", "name", "other0"])
    code, res, _ = cni(host, "bridge", "ADD", netconf(tmp_path), netns=f"/run/netns/{pod}")
    assert code == 1 and "already exists but is not a bridge" in res["msg"]
    code, res, _ = cni(host, "bridge", "ADD", netconf(tmp_path, bridge="br9"),
                       netns="/run/netns/pn-test-does-not-exist")
    assert code == 1 and res["code"] == 3
    assert reservations(tmp_path) == []


def test_link_options_default_gateway_and_dual_stack(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pod = netns_factory("pod")
    ipam = {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
            "ranges": [[{"subnet": "10.24.0.0/24"}], [{"subnet": "fd24::/64"}]]}
    conf = netconf(tmp_path, "0.4.0", ipam=ipam, isDefaultGateway=True, mtu=1400,
                   hairpinMode=True, bridge="br-opts")
    mac = "0a:58:0a:18:00:99"
    code, res, err = cni(host, "bridge", "ADD", conf, netns=f"/run/netns/{pod}", args=f"MAC={mac}")
    assert code == 0, err
    assert [ip["version"] for ip in res["ips"]] == ["4", "6"]
    assert res["interfaces"][2]["mac"] == mac
    link = ip_json(pod, "-n", pod, "-d", "link", "show", "eth0")[0]
    assert link["mtu"] == 1400 and link["address"] == mac
    routes = ip_json(pod, "-n", pod, "route", "show", "default")
    assert routes and routes[0]["gateway"] == "10.24.0.1"
    routes6 = ip_json(pod, "-n", pod, "-6", "route", "show", "default")
    assert routes6 and routes6[0]["gateway"] == "fd24::1"
    veth = res["interfaces"][1]["name"]
    port = ip_json(host, "-n", host, "-d", "link", "show", veth)[0]
    assert port["master"] == "br-opts"
    assert port["linkinfo"]["info_slave_data"]["hairpin"] is True
    fwd = ns_run(host, ["sysctl", "-n", "net.ipv4.ip_forward"]).stdout.strip()
    assert fwd == "1"
    dad = ns_run(pod, ["sysctl", "-n", "net.ipv6.conf.eth0.accept_dad"]).stdout.strip()
    assert dad == "0"
    assert ping(pod, "10.24.0.1")


def kernel_has_vlan_filtering(ns: str) -> bool:
    probe = subprocess.run(["ip", "-n", ns, "link", "add", "pnprobe0", "type", "bridge",
                            "vlan_filtering", "1"], capture_output=True)
    subprocess.run(["ip", "-n", ns, "link", "del", "pnprobe0"], capture_output=True)
    return probe.returncode == 0


def test_promisc(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pod = netns_factory("pod")
    conf = netconf(tmp_path, promiscMode=True, bridge="br-pr")
    code, res, err = cni(host, "bridge", "ADD", conf, netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    br = ip_json(host, "-n", host, "-d", "link", "show", "br-pr")[0]
    assert "PROMISC" in br["flags"]
    code, res, err = cni(host, "bridge", "ADD", {**conf, "hairpinMode": True},
                         container_id="c2", netns=f"/run/netns/{pod}", ifname="eth1")
    assert code == 1 and res["code"] == 7 and "hairpin mode and promiscuous mode" in res["msg"]


def test_vlan(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pod = netns_factory("pod")
    if not kernel_has_vlan_filtering(host):
        pytest.skip("this kernel lacks bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING): "
                    "`ip link add type bridge vlan_filtering 1` fails with EOPNOTSUPP")
    conf = netconf(tmp_path, vlan=100, bridge="br-vlan")
    code, res, err = cni(host, "bridge", "ADD", conf, netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    br = ip_json(host, "-n", host, "-d", "link", "show", "br-vlan")[0]
    assert br["linkinfo"]["info_data"]["vlan_filtering"] == 1
    veth = res["interfaces"][1]["name"]
    vlans = ip_json(host, "-n", host, "bridge", "vlan", "show", "dev", veth)
    entry = vlans[0]["vlans"]
    assert any(v["vlan"] == 100 and "PVID" in v.get("flags", []) for v in entry)
    assert any(i["name"] == "br-vlan.100" for i in res["interfaces"])
    assert ping(pod, "10.22.0.1")


def test_macspoofchk(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pod = netns_factory("pod")
    conf = netconf(tmp_path, macspoofchk=True)
    code, res, err = cni(host, "bridge", "ADD", conf, container_id="spoof", netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    table = ns_run(host, ["nft", "list", "table", "bridge", "nat"]).stdout
    assert "chain cni-br-iface-spoof-eth0 " in table
    assert f'ether saddr {res["interfaces"][2]["mac"]} return' in table
    assert f'iifname "{res["interfaces"][1]["name"]}" jump cni-br-iface-spoof-eth0' in table
    assert ping(pod, "10.22.0.1")
    # a spoofed source MAC is dropped
    ns_run(pod, ["ip", "link", "set", "eth0", "address", "0a:00:00:00:00:01"])
    assert not ping(pod, "10.22.0.1")
    code, _, err = cni(host, "bridge", "DEL", conf, container_id="spoof", netns=f"/run/netns/{pod}")
    assert code == 0, err
    table = ns_run(host, ["nft", "list", "table", "bridge", "nat"]).stdout
    assert "cni-br-iface-spoof" not in table


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_result_version_shapes(netns_factory, tmp_path, cni, version):
    host = netns_factory("host")
    pod = netns_factory("pod")
    code, res, err = cni(host, "bridge", "ADD", netconf(tmp_path, version), netns=f"/run/netns/{pod}")
    assert code == 0, err
    assert res["cniVersion"] == version
    assert ("version" in res["ips"][0]) == version.startswith("0.")
    assert res["dns"] == {}
