"""portmap executed as a runtime does (env + stdin, inside a "host" namespace), with a real
TCP server in a "pod" namespace behind a veth. Runs standalone and through the CNI daemon.
"""
from __future__ import annotations

import re
import socket
import subprocess
import sys

import pytest

from cni.portmap_rules import dnat_chain_name
from podnet import netns
from tests.conftest import ns_run

HOST_IP, POD_IP = "10.99.0.1", "10.99.0.2"
NET = "pmtest"
SERVER = r"""
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(16)
print("ready", flush=True)
while True:
    c, peer = s.accept()
    c.sendall(f"pod-answer from={peer[0]}\n".encode())
    c.close()
"""


@pytest.fixture
def topo(netns_factory):
    """(host ns, pod ns) joined by a veth: host vh 10.99.0.1/24, pod eth0 10.99.0.2/24."""
    host, pod = netns_factory("pmhost"), netns_factory("pmpod")
    ns_run(host, ["ip", "link", "add", "vh", "type", "veth", "peer", "name", "eth0",
                  "netns", pod])
    ns_run(host, ["ip", "addr", "add", f"{HOST_IP}/24", "dev", "vh"])
    ns_run(host, ["ip", "link", "set", "vh", "up"])
    ns_run(pod, ["ip", "addr", "add", f"{POD_IP}/24", "dev", "eth0"])
    ns_run(pod, ["ip", "link", "set", "eth0", "up"])
    ns_run(pod, ["ip", "route", "add", "default", "via", HOST_IP])
    return host, pod


@pytest.fixture
def server(topo):
    """A TCP server on POD_IP:80 in the pod namespace, stopped by PID afterwards."""
    _, pod = topo
    proc = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-c", SERVER, "80"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        yield proc
    finally:
        proc.kill()
        proc.wait()


def fetch(ns: str, ip: str, port: int) -> str:
    """Connect from inside ``ns`` and return the server's one-line answer."""
    with netns.entered(ns):
        sock = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET)
    with sock:
        sock.settimeout(5)
        sock.connect((ip, port))
        return sock.makefile().readline().strip()


def config(pod: str, version: str = "1.0.0", mappings=None, prev=True, **kw) -> dict:
    conf = {"cniVersion": version, "name": NET, "type": "portmap",
            "runtimeConfig": {"portMappings": mappings if mappings is not None else [
                {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
                {"hostPort": 8081, "containerPort": 80, "protocol": "tcp", "hostIP": HOST_IP},
            ]}}
    if prev:
        conf["prevResult"] = {
            "cniVersion": version,
            "interfaces": [{"name": "vh"}, {"name": "eth0", "sandbox": f"/run/netns/{pod}"}],
            "ips": [{"address": f"{POD_IP}/24", "gateway": HOST_IP, "interface": 1}],
        }
    conf.update(kw)
    return conf


def nat_rules(ns: str) -> str:
    """The nat table without comments and counters, for before/after comparisons."""
    text = ns_run(ns, ["iptables-save", "-t", "nat"]).stdout
    return "\n".join(re.sub(r"\[\d+:\d+\]", "", l) for l in text.splitlines()
                     if not l.startswith("#"))


def test_add_forwards_host_ports_then_del_removes(topo, server, cni):
    host, pod = topo
    chain = dnat_chain_name(NET, "ctr1")
    conf = config(pod)
    code, res, err = cni(host, "portmap", "ADD", conf, netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    # the previous result is passed through
    assert res["ips"] == [{"interface": 1, "address": f"{POD_IP}/24", "gateway": HOST_IP}]
    assert res["interfaces"][1] == {"name": "eth0", "sandbox": f"/run/netns/{pod}"}

    assert fetch(host, HOST_IP, 8080) == f"pod-answer from={HOST_IP}"
    assert fetch(host, HOST_IP, 8081) == f"pod-answer from={HOST_IP}"
    # localhost: DNAT + mark + masquerade, needs route_localnet on the host-side veth
    assert fetch(host, "127.0.0.1", 8080) == f"pod-answer from={HOST_IP}"
    assert ns_run(host, ["cat", "/proc/sys/net/ipv4/conf/vh/route_localnet"]).stdout.strip() == "1"
    # hostIP-bound mapping: 127.0.0.1:8081 is not forwarded
    with pytest.raises(ConnectionRefusedError):
        fetch(host, "127.0.0.1", 8081)

    before = nat_rules(host)
    assert f":{chain} - " in before
    assert before.count(f"-j {chain}") == 1            # one multiport entry (tcp)
    assert before.count("-j CNI-HOSTPORT-DNAT") == 2   # PREROUTING and OUTPUT
    assert before.count("-j CNI-HOSTPORT-MASQ") == 1

    # ADD again changes nothing
    code, res, err = cni(host, "portmap", "ADD", conf, netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    assert nat_rules(host) == before

    code, res, err = cni(host, "portmap", "CHECK", conf, netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)

    code, res, err = cni(host, "portmap", "DEL", conf, netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    after = nat_rules(host)
    assert "CNI-DN-" not in after
    with pytest.raises(ConnectionRefusedError):
        fetch(host, HOST_IP, 8080)
    code, res, err = cni(host, "portmap", "CHECK", conf, netns=f"/run/netns/{pod}")
    assert code != 0 and chain in res["msg"]

    # DEL again, and DEL with neither prevResult nor runtimeConfig, both succeed
    code, res, err = cni(host, "portmap", "DEL", conf, netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    bare = {"cniVersion": "1.0.0", "name": NET, "type": "portmap"}
    code, res, err = cni(host, "portmap", "DEL", bare, netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    assert nat_rules(host) == after


def test_del_without_prev_result_after_netns_gone(topo, server, cni):
    host, pod = topo
    chain = dnat_chain_name(NET, "ctr2")
    code, res, err = cni(host, "portmap", "ADD", config(pod), container_id="ctr2",
                         netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    assert chain in nat_rules(host)
    # the container's namespace disappears before DEL (as after a node reboot)
    subprocess.run(["ip", "netns", "del", pod], check=True)
    code, res, err = cni(host, "portmap", "DEL", config(pod, prev=False), container_id="ctr2",
                         netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    assert chain not in nat_rules(host)


def test_two_containers_keep_each_others_rules(topo, server, cni):
    host, pod = topo
    one = config(pod, mappings=[{"hostPort": 9001, "containerPort": 80, "protocol": "tcp"}])
    two = config(pod, mappings=[{"hostPort": 9002, "containerPort": 80, "protocol": "tcp"}])
    for cid, conf in (("a", one), ("b", two)):
        code, res, err = cni(host, "portmap", "ADD", conf, container_id=cid,
                             netns=f"/run/netns/{pod}")
        assert code == 0, (res, err)
    assert fetch(host, HOST_IP, 9001).startswith("pod-answer")
    assert fetch(host, HOST_IP, 9002).startswith("pod-answer")
    code, res, err = cni(host, "portmap", "DEL", one, container_id="a", netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    with pytest.raises(ConnectionRefusedError):
        fetch(host, HOST_IP, 9001)
    assert fetch(host, HOST_IP, 9002).startswith("pod-answer")
    text = nat_rules(host)
    assert dnat_chain_name(NET, "a") not in text and dnat_chain_name(NET, "b") in text


@pytest.mark.parametrize("mapping,needle", [
    ({"hostPort": 0, "containerPort": 80, "protocol": "tcp"}, "Invalid host port number: 0"),
    ({"hostPort": 8080, "containerPort": -1, "protocol": "tcp"}, "Invalid container port number: -1"),
    ({"hostPort": 70000, "containerPort": 80, "protocol": "tcp"}, "Invalid host port number: 70000"),
])
def test_bad_ports_are_config_errors(topo, cni, mapping, needle):
    host, pod = topo
    code, res, err = cni(host, "portmap", "ADD", config(pod, mappings=[mapping]),
                         netns=f"/run/netns/{pod}")
    assert code == 1 and res["code"] == 7 and needle in res["msg"], (res, err)
    assert "CNI-" not in nat_rules(host)


def test_add_without_prev_result_is_config_error(topo, cni):
    host, pod = topo
    code, res, err = cni(host, "portmap", "ADD", config(pod, prev=False),
                         netns=f"/run/netns/{pod}")
    assert code == 1 and res["code"] == 7 and "chained" in res["msg"], (res, err)


def test_dual_stack_forwards_ipv6_too(topo, cni):
    host, pod = topo
    ns_run(host, ["ip", "addr", "add", "fd00:99::1/64", "dev", "vh", "nodad"])
    ns_run(pod, ["ip", "addr", "add", "fd00:99::2/64", "dev", "eth0", "nodad"])
    server6 = ("import socket\ns = socket.socket(socket.AF_INET6)\n"
               "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
               "s.bind(('::', 80)); s.listen(4); print('ready', flush=True)\n"
               "while True:\n c, p = s.accept(); c.sendall(('v6 from=' + p[0] + '\\n').encode()); c.close()\n")
    proc = subprocess.Popen(["ip", "netns", "exec", pod, sys.executable, "-c", server6],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        conf = config(pod, mappings=[{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}])
        conf["prevResult"]["ips"].append(
            {"address": "fd00:99::2/64", "gateway": "fd00:99::1", "interface": 1})
        code, res, err = cni(host, "portmap", "ADD", conf, container_id="ds",
                             netns=f"/run/netns/{pod}")
        assert code == 0, (res, err)
        assert fetch(host, "fd00:99::1", 8080) == "v6 from=fd00:99::1"
        v6 = ns_run(host, ["ip6tables-save", "-t", "nat"]).stdout
        assert "--to-destination [fd00:99::2]:80" in v6
        code, res, err = cni(host, "portmap", "CHECK", conf, container_id="ds",
                             netns=f"/run/netns/{pod}")
        assert code == 0, (res, err)
        code, res, err = cni(host, "portmap", "DEL", conf, container_id="ds",
                             netns=f"/run/netns/{pod}")
        assert code == 0, (res, err)
        assert "CNI-DN-" not in ns_run(host, ["ip6tables-save", "-t", "nat"]).stdout
        assert "CNI-DN-" not in nat_rules(host)
    finally:
        proc.kill()
        proc.wait()
