"""The udp backend between two namespace nodes (veth underlay), pods behind a bridge on each.

Each node's backend runs in its own process inside the node namespace (see udp_topology.py);
leases are built directly, no etcd.  Checked: flannel0's set-up, ping and an intact TCP
transfer across in every proxy mode, the wire format on the underlay (scapy), ICMP
net-unreachable for a subnet without lease, route removal by reconcile, and a restart that
re-attaches to the persistent flannel0 without breaking an open TCP connection.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import select
import socket
import struct
import subprocess
import threading

import pytest

from podnet.rtnl import AF_INET, RTNL
from tests.conftest import ns_run
from tests.integration.flannel import udp_topology as topo

scapy_all = pytest.importorskip("scapy.all")
IP, TCP, UDP, ICMP = scapy_all.IP, scapy_all.TCP, scapy_all.UDP, scapy_all.ICMP

pytestmark = pytest.mark.root


@pytest.fixture
def pair(netns_factory, tmp_path, request):
    """Two started udp nodes with a pod each; ``request.param`` is the proxy mode."""
    mode = getattr(request, "param", "batch")
    a, b = topo.build_underlay(netns_factory)
    for n in (a, b):
        topo.add_pod(netns_factory, n, 1500 - 28)
    try:
        topo.start_udp_node(a, [b], mode=mode, log_path=str(tmp_path / "node1.log"))
        topo.start_udp_node(b, [a], mode=mode, log_path=str(tmp_path / "node2.log"))
        yield a, b
    finally:
        for n in (a, b):
            topo.stop_udp_node(n)


def _ping(src_ns: str, ip: str, count: int = 3) -> subprocess.CompletedProcess:
    return ns_run(src_ns, ["ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", ip],
                  check=False)


# --- helpers running inside pods ------------------------------------------------------------

def _serve_once(ns: str, port: int, ready: threading.Event, result: dict) -> None:
    """Accept one connection in ``ns``, hash everything received, send the digest back."""
    def work() -> None:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("0.0.0.0", port))
        srv.listen(1)
        srv.settimeout(30)
        ready.set()
        conn, _ = srv.accept()
        conn.settimeout(30)
        h = hashlib.sha256()
        size = int.from_bytes(conn.recv(8, socket.MSG_WAITALL), "big")
        got = 0
        while got < size:
            chunk = conn.recv(min(1 << 20, size - got))
            if not chunk:
                break
            h.update(chunk)
            got += len(chunk)
        conn.sendall(h.digest())
        result["digest"], result["size"] = h.digest(), got
        conn.close()
        srv.close()
    try:
        topo.run_in(ns, work)
    except BaseException as exc:       # reported by the test
        result["error"] = exc
        ready.set()


def _transfer(src_ns: str, dst_ns: str, dst_ip: str, data: bytes, port: int = 5555) -> dict:
    ready, result = threading.Event(), {}
    t = threading.Thread(target=_serve_once, args=(dst_ns, port, ready, result))
    t.start()
    assert ready.wait(30)

    def client() -> bytes:
        c = socket.create_connection((dst_ip, port), timeout=30)
        c.sendall(len(data).to_bytes(8, "big") + data)
        digest = c.recv(32, socket.MSG_WAITALL)
        c.close()
        return digest
    result["echo"] = topo.run_in(src_ns, client)
    t.join(60)
    return result


# --- tests ----------------------------------------------------------------------------------

def test_flannel0_is_set_up_as_upstream(pair):
    a, _b = pair
    with RTNL(a.name) as nl:
        link = nl.link("flannel0")
        addrs = [x.cidr for x in nl.addrs("flannel0", AF_INET)]
        routes = [r for r in nl.routes(AF_INET) if r.oif == link.index]
    assert link.up and link.mtu == 1500 - 28
    assert addrs == ["10.244.1.0/32"]
    assert [(r.dst, r.gateway, r.scope) for r in routes] == [("10.244.0.0/16", None, 0)]
    # the encapsulation socket: UDP 8285 on the underlay address only
    out = ns_run(a.name, ["cat", "/proc/net/udp"]).stdout
    assert "014DA8C0:205D" in out           # 192.168.77.1:8285, little-endian hex


@pytest.mark.parametrize("pair", ["batch", "tso", "simple"], indirect=True)
def test_ping_and_tcp_across(pair):
    a, b = pair
    r = _ping(a.pod_ns, b.pod_ip)
    assert r.returncode == 0, r.stdout + r.stderr
    # the reply's 64 loses 4: node B forwards, both proxies decrement (as upstream's does,
    # once on the way out and once on the way in), node A forwards
    assert set(re.findall(r"ttl=(\d+)", r.stdout)) == {"60"}
    data = os.urandom(6 << 20)
    res = _transfer(a.pod_ns, b.pod_ns, b.pod_ip, data)
    assert "error" not in res, res.get("error")
    assert res["size"] == len(data)
    assert res["digest"] == res["echo"] == hashlib.sha256(data).digest()


SOL_PACKET = 263
PACKET_VNET_HDR = 15
ETH_P_ALL = 0x0003
SO_RCVBUFFORCE = 33
GSO_UDP_L4 = 5


def _capture_socket(ns: str) -> socket.socket:
    def make() -> socket.socket:
        # ETH_P_ALL: only "all" taps see outgoing frames
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 << 20)
        s.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        s.bind((topo.UL_IF, 0))
        s.setblocking(False)
        return s
    return topo.run_in(ns, make)


def _drain(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    """(vnet header, ethernet frame) of everything captured so far."""
    out = []
    while select.select([sock], [], [], 0.3)[0]:
        data = sock.recv(1 << 17)
        out.append((data[:10], data[10:]))
    return out


def _inner_packets(captured, src: str, port: int = 8285) -> list[bytes]:
    """UDP payloads sent from ``src`` to ``port``; GSO frames cut at their gso_size (as the
    NIC would put them on the wire)."""
    inner = []
    for vhdr, frame in captured:
        p = scapy_all.Ether(frame)
        if UDP not in p or p[IP].src != src or p[UDP].dport != port:
            continue
        _flags, gso_type, _hl, gso_size, _cs, _co = struct.unpack("=BBHHHH", vhdr)
        payload = bytes(frame[14 + 20 + 8:])
        step = gso_size if gso_type == GSO_UDP_L4 and gso_size else len(payload)
        inner += [payload[o:o + step] for o in range(0, len(payload), step)]
    return inner


def test_wire_format_on_the_underlay(pair):
    a, b = pair
    cap = _capture_socket(a.name)
    try:
        assert _ping(a.pod_ns, b.pod_ip, count=2).returncode == 0
        res = _transfer(a.pod_ns, b.pod_ns, b.pod_ip, os.urandom(300_000), port=5556)
        assert res.get("digest") == res.get("echo")
        captured = _drain(cap)
    finally:
        cap.close()
    inner = _inner_packets(captured, a.underlay_ip)
    assert inner, "nothing captured on the underlay"
    icmp = tcp = 0
    for raw in inner:
        p = IP(raw)                                    # one whole IPv4 packet per datagram
        assert p.version == 4 and p.len == len(raw)
        assert (p.src, p.dst) == (a.pod_ip, b.pod_ip)
        assert p.ttl == 62                             # 64, node A forwards, the proxy
        fresh = IP(raw)
        del fresh.chksum
        if TCP in fresh:
            del fresh[TCP].chksum
        if ICMP in fresh:
            del fresh[ICMP].chksum
        again = IP(bytes(fresh))
        assert again.chksum == p.chksum
        if TCP in p:
            tcp += 1
            assert again[TCP].chksum == p[TCP].chksum
            assert len(raw) <= 1500 - 28
        if ICMP in p:
            icmp += 1
            assert again[ICMP].chksum == p[ICMP].chksum
    assert icmp >= 2 and tcp > 100


def _icmp_for_unknown_subnet(pod_ns: str, target: str) -> bytes:
    def work() -> bytes:
        raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
        raw.settimeout(5)
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(b"hello", (target, 9999))
        try:
            while True:
                data = raw.recv(2048)
                if data[20] == 3:                          # destination unreachable
                    return data
        finally:
            raw.close()
            u.close()
    return topo.run_in(pod_ns, work)


def test_icmp_net_unreachable_for_unknown_subnet(pair):
    a, _b = pair
    answer = IP(_icmp_for_unknown_subnet(a.pod_ns, "10.244.99.7"))
    assert (answer.src, answer.dst) == ("10.244.1.0", a.pod_ip)
    assert answer.ttl == 7                                 # 8, minus node A's forwarding
    assert (answer[ICMP].type, answer[ICMP].code) == (3, 0)
    quoted = answer[ICMP].payload
    assert (quoted.src, quoted.dst, quoted.proto) == (a.pod_ip, "10.244.99.7", 17)


def test_reconcile_drops_and_restores_a_peer(pair):
    a, b = pair
    assert topo.node_command(a, "reconcile []") == {"routes": {}}
    answer = IP(_icmp_for_unknown_subnet(a.pod_ns, b.pod_ip))
    assert (answer[ICMP].type, answer[ICMP].code) == (3, 0)
    # a vxlan lease is not a udp peer; upstream's empty BackendType is
    got = topo.node_command(a, "reconcile " + json.dumps(
        [[str(b.subnet), b.underlay_ip, "vxlan"], ["10.244.7.0/24", "192.168.77.7", ""]]))
    assert got == {"routes": {"10.244.7.0/24": "192.168.77.7"}}
    got = topo.node_command(a, "reconcile " + json.dumps([topo.lease_json(b)]))
    assert got == {"routes": {str(b.subnet): b.underlay_ip}}
    assert _ping(a.pod_ns, b.pod_ip).returncode == 0


def test_restart_reattaches_and_keeps_connections(pair, tmp_path):
    a, b = pair
    port = 5557
    listening = threading.Event()
    box: dict = {}

    def server() -> None:
        def work() -> None:
            srv = socket.socket()
            srv.bind(("0.0.0.0", port))
            srv.listen(1)
            srv.settimeout(30)
            listening.set()
            conn, _ = srv.accept()
            conn.settimeout(30)
            while True:
                data = conn.recv(100)
                if not data:
                    break
                conn.sendall(data.upper())
            conn.close()
            srv.close()
        try:
            topo.run_in(b.pod_ns, work)
        except BaseException as exc:
            box["error"] = exc
    t = threading.Thread(target=server)
    t.start()
    assert listening.wait(30)
    conn = topo.run_in(a.pod_ns, lambda: socket.create_connection((b.pod_ip, port), timeout=30))
    try:
        conn.sendall(b"before")
        assert conn.recv(100) == b"BEFORE"
        topo.stop_udp_node(a)
        with RTNL(a.name) as nl:                     # flannel0 outlives the daemon
            assert [x.cidr for x in nl.addrs("flannel0", AF_INET)] == ["10.244.1.0/32"]
            index = nl.link_index("flannel0")
            assert any(r.dst == "10.244.0.0/16" and r.oif == index for r in nl.routes(AF_INET))
        topo.start_udp_node(a, [b], log_path=str(tmp_path / "node1-again.log"))
        with RTNL(a.name) as nl:
            assert nl.link_index("flannel0") == index  # re-attached, not re-created
        conn.sendall(b"after")
        assert conn.recv(100) == b"AFTER"
    finally:
        conn.close()
        t.join(30)
    assert "error" not in box, box.get("error")
