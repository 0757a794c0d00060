"""Faults: flanneld restarts, etcd outages, a 3-member etcd losing its leader, racing nodes."""
from __future__ import annotations

import signal
import sys
import time

import pytest

from tests.integration.flannel.cluster import PREFIX, nsx, parse_ping, stop_proc, wait_for
from tests.integration.flannel.test_backends import (NET, expected_vxlan_view, make_cluster,  # noqa: F401
                                                     start_all, vxlan_view)

FAKE_MAC = "0a:00:00:00:0f:0f"


def fake_lease(c, subnet: str, public_ip: str = "192.168.77.99") -> None:
    """Write a lease as another (imaginary) vxlan node would, under a 1 h etcd lease."""
    out = c.etcdctl("lease", "grant", "3600").stdout
    lease_id = out.split()[1]
    value = ('{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan",'
             '"BackendData":{"VNI":1,"VtepMAC":"%s"}}' % (public_ip, FAKE_MAC))
    c.etcdctl("put", f"{PREFIX}/subnets/{subnet.replace('/', '-')}", value, f"--lease={lease_id}")


def has_route(node, subnet: str) -> bool:
    return subnet in [r[0] for r in vxlan_view(node)["routes"]]


def two_pods(c):
    a = c.add_pod(c.nodes[0], "a")
    b = c.add_pod(c.nodes[1], "b")
    assert c.ping(a, b.ip, count=2) == (2, 2)
    return a, b


def test_restart_keeps_subnet_and_traffic(make_cluster):
    c = make_cluster(2)
    start_all(c, {"Type": "vxlan"}, "--healthz-ip=127.0.0.1", "--healthz-port=10755")
    n0 = c.nodes[0]
    health = nsx(n0.ns, [sys.executable, "-c",
                         "import urllib.request as u;r=u.urlopen('http://127.0.0.1:10755/healthz');"
                         "print(r.status, r.read().decode())"]).stdout.strip()
    assert health == "200 flanneld is running"
    a, b = two_pods(c)
    before = c.subnet_of(n0)
    env_before = n0.subnet_file.read_bytes()
    wait_for(lambda: vxlan_view(n0) == expected_vxlan_view(c, n0), 10, what="vxlan state")
    pinger = c.start_ping(a, b.ip, count=40, interval=0.1)
    try:
        time.sleep(0.5)
        assert c.stop_flanneld(n0) == 0, c.log(n0)
        assert vxlan_view(n0) == expected_vxlan_view(c, n0)    # stopping removed nothing
        c.start_flanneld(n0, "--healthz-ip=127.0.0.1", "--healthz-port=10755")
        wait_for(lambda: "Running backend" in c.log(n0), 40, what="restarted flanneld")
        out, _ = pinger.communicate(timeout=60)
    finally:
        stop_proc(pinger)
    sent, got = parse_ping(out)
    assert sent == 40 and got == 40, out
    assert c.subnet_of(n0) == before
    assert n0.subnet_file.read_bytes() == env_before
    assert vxlan_view(n0) == expected_vxlan_view(c, n0)
    assert "reusing existing VXLAN device" in c.log(n0)
    assert c.tcp_session(a, b, rounds=3) == ["MSG0", "MSG1", "MSG2"]


@pytest.mark.parametrize("outage", [10, 30])
def test_etcd_outage(make_cluster, outage):
    c = make_cluster(2)
    start_all(c, {"Type": "vxlan"})
    a, b = two_pods(c)
    count = int(outage / 0.2) + 10
    pinger = c.start_ping(a, b.ip, count=count, interval=0.2)
    try:
        time.sleep(0.5)
        c.etcd[0].stop()
        time.sleep(outage)
        for node in c.nodes:
            assert node.proc.poll() is None, c.log(node)
        c.etcd[0].start()
        c.wait_etcd()
        out, _ = pinger.communicate(timeout=outage + 60)
    finally:
        stop_proc(pinger)
    sent, got = parse_ping(out)
    assert sent == count and got == count, out
    # flanneld reconnected: a new lease written now reaches both nodes
    fake_lease(c, "10.44.200.0/24")
    for node in c.nodes:
        wait_for(lambda: has_route(node, "10.44.200.0/24"), 30, what=f"new lease on {node.name}")
        assert node.proc.poll() is None
    assert any("cannot list" in c.log(n) or "watch of" in c.log(n) for n in c.nodes)


def test_three_member_etcd_leader_killed(make_cluster):
    c = make_cluster(2, etcd_members=3)
    start_all(c, {"Type": "vxlan"})
    a, b = two_pods(c)
    leader = c.leader()
    leader.stop(signal.SIGKILL)
    c.wait_etcd()
    pinger = c.start_ping(a, b.ip, count=10, interval=0.1)
    out, _ = pinger.communicate(timeout=60)
    assert parse_ping(out) == (10, 10), out
    fake_lease(c, "10.44.201.0/24")
    for node in c.nodes:
        wait_for(lambda: has_route(node, "10.44.201.0/24"), 40,
                 what=f"new lease on {node.name} after the leader ({leader.name}) died")
        assert node.proc.poll() is None, c.log(node)


def test_simultaneous_start_on_nearly_full_network(make_cluster):
    c = make_cluster(3)
    # four subnets in all; two are taken by other nodes: two left for our two nodes
    c.set_config({"Network": NET, "SubnetLen": 24, "SubnetMin": "10.44.1.0",
                  "SubnetMax": "10.44.4.0", "Backend": {"Type": "vxlan"}})
    fake_lease(c, "10.44.1.0/24", "192.168.77.97")
    fake_lease(c, "10.44.3.0/24", "192.168.77.98")
    n0, n1, n2 = c.nodes
    c.start_flanneld(n0)
    c.start_flanneld(n1)
    c.wait_ready(n0)
    c.wait_ready(n1)
    assert {c.subnet_of(n0), c.subnet_of(n1)} == {"10.44.2.0/24", "10.44.4.0/24"}
    # the third node finds nothing free: it says so and keeps trying, without exiting
    c.start_flanneld(n2)
    wait_for(lambda: "out of subnets" in c.log(n2), 30, what="out-of-subnets message")
    time.sleep(1)
    for node in c.nodes:
        assert node.proc.poll() is None, c.log(node)
    # freeing one lets it in
    c.etcdctl("del", f"{PREFIX}/subnets/10.44.1.0-24")
    c.wait_ready(n2, 60)
    assert c.subnet_of(n2) == "10.44.1.0/24"


def test_waits_for_config_and_unreachable_etcd(make_cluster):
    c = make_cluster(2)
    n0, n1 = c.nodes
    c.start_flanneld(n0)                                      # no config yet
    c.start_flanneld(n1, endpoints=f"http://{c.etcd[0].ip}:2399")   # nothing listens there
    wait_for(lambda: "Couldn't fetch network config" in c.log(n0)
             and "Couldn't fetch network config" in c.log(n1), 30, what="retry messages")
    assert "flannel config not found" in c.log(n0)
    c.set_config({"Network": NET, "Backend": {"Type": "vxlan"}})
    c.wait_ready(n0)
    assert n1.proc.poll() is None and not n1.subnet_file.exists()
