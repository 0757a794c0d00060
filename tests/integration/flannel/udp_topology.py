"""Two namespace "nodes" on a veth underlay, each with a pod behind a bridge, for the udp
backend's tests and for benchmarks/flannel_throughput.py.

    pod-a (10.244.1.2) ─veth─ cni0 [node-a] flannel0 ┐            ┌ flannel0 [node-b] cni0 ─veth─ pod-b
                                          ul0 192.168.77.1 ══veth══ 192.168.77.2 ul0

A node's flanneld stand-in runs as a child process (``python -m
tests.integration.flannel.udp_topology node …``) inside the node's namespace: it builds a
:class:`UdpBackend` exactly as the daemon does, starts it for its lease, reconciles the
peers' leases, prints ``ready`` and then obeys lines on stdin (``reconcile <json>``,
``stats``; EOF stops it).  Namespaces are created through the caller's ``make_ns`` and are
deleted by the caller (the tests' ``netns_factory`` or the benchmark's ``finally``).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_network

from podnet import netns
from podnet.rtnl import RTNL

NETWORK = IPv4Network("10.244.0.0/16")
UNDERLAY = "192.168.77.{}"
UL_IF = "ul0"
BRIDGE = "cni0"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))


@dataclass
class Node:
    name: str                      # netns name
    index: int                     # 1, 2, …
    pod_ns: str | None = None
    proc: subprocess.Popen | None = None
    extra: dict = field(default_factory=dict)

    @property
    def underlay_ip(self) -> str:
        return UNDERLAY.format(self.index)

    @property
    def subnet(self) -> IPv4Network:
        return ip_network(f"10.244.{self.index}.0/24")

    @property
    def pod_ip(self) -> str:
        return f"10.244.{self.index}.2"

    @property
    def gateway(self) -> str:
        return f"10.244.{self.index}.1"


def sysctl(ns: str, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"], check=True)


def build_underlay(make_ns, count: int = 2, mtu: int = 1500) -> list[Node]:
    """``count`` node namespaces; node 1 and 2 joined by a veth pair (both called ul0)."""
    if count != 2:
        raise ValueError("only two nodes are supported")
    nodes = [Node(make_ns(f"node{i}"), i) for i in (1, 2)]
    a, b = nodes
    with RTNL(a.name) as nl:
        nl.add_link(UL_IF, "veth", mtu=mtu, peer_name="ul0peer", peer_netns=b.name)
    with RTNL(b.name) as nl:
        nl.set_link("ul0peer", name=UL_IF)
    for node in nodes:
        with RTNL(node.name) as nl:
            nl.set_link("lo", up=True)
            nl.add_addr(UL_IF, f"{node.underlay_ip}/24")
            nl.set_link(UL_IF, up=True)
        sysctl(node.name, "net.ipv4.ip_forward", "1")
    return nodes


def add_pod(make_ns, node: Node, mtu: int) -> str:
    """A pod namespace on ``node`` as the bridge CNI plugin would make it (veth into cni0,
    the gateway on the bridge, default route via it)."""
    pod = make_ns(f"pod{node.index}")
    host_if = f"veth{node.index}p"
    with RTNL(node.name) as nl:
        try:
            nl.link(BRIDGE)
        except Exception:
            nl.add_link(BRIDGE, "bridge", mtu=mtu)
            nl.add_addr(BRIDGE, f"{node.gateway}/24")
            nl.set_link(BRIDGE, up=True)
        nl.add_link(host_if, "veth", mtu=mtu, peer_name="eth0", peer_netns=pod)
        nl.set_link(host_if, master=BRIDGE, up=True)
    with RTNL(pod) as nl:
        nl.set_link("lo", up=True)
        nl.add_addr("eth0", f"{node.pod_ip}/24")
        nl.set_link("eth0", up=True)
        nl.add_route("default", gateway=node.gateway)
    node.pod_ns = pod
    return pod


def lease_json(node: Node, backend_type: str = "udp") -> list:
    return [str(node.subnet), node.underlay_ip, backend_type]


def start_udp_node(node: Node, peers: list[Node], *, mode: str = "batch",
                   mtu: int = 1500, log_path: str | None = None) -> subprocess.Popen:
    """Run a udp backend for ``node`` in a child process; returns once it printed ready."""
    argv = [sys.executable, "-m", "tests.integration.flannel.udp_topology", "node",
            "--netns", node.name, "--subnet", str(node.subnet), "--public-ip", node.underlay_ip,
            "--mode", mode,
            "--peers", json.dumps([lease_json(p) for p in peers])]
    err = open(log_path, "ab") if log_path else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(argv, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=err, text=True, bufsize=1)
    finally:
        if log_path:
            err.close()
    line = proc.stdout.readline()
    if line.strip() != "ready":
        proc.kill()
        proc.wait()
        raise RuntimeError(f"udp node {node.name} did not start: {line!r}")
    node.proc = proc
    return proc


def node_command(node: Node, line: str) -> dict:
    """Send one command to a running node process and return its JSON answer."""
    node.proc.stdin.write(line + "\n")
    node.proc.stdin.flush()
    return json.loads(node.proc.stdout.readline())


def stop_udp_node(node: Node) -> None:
    proc, node.proc = node.proc, None
    if proc is None:
        return
    try:
        proc.stdin.close()
    except OSError:
        pass
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_in(ns: str, fn, *args):
    """Run ``fn(*args)`` on a fresh thread inside ``ns``; returns its result (or raises)."""
    box: dict = {}

    def work() -> None:
        try:
            with netns.entered(ns):
                box["v"] = fn(*args)
        except BaseException as exc:     # re-raised in the caller
            box["e"] = exc
    t = threading.Thread(target=work)
    t.start()
    t.join()
    if "e" in box:
        raise box["e"]
    return box.get("v")


# --- the child process ------------------------------------------------------------------------

def _leases(spec: list) -> list:
    from flannel_py.subnet.registry import Lease, LeaseAttrs
    return [Lease(ip_network(s), LeaseAttrs(public_ip=IPv4Address(ip), backend_type=bt))
            for s, ip, bt in spec]


def _node_main(args) -> int:
    from flannel_py.backend import ExternalInterface
    from flannel_py.backend.udp import UdpBackend
    from flannel_py.config import parse_config
    from flannel_py.subnet.registry import Lease, LeaseAttrs

    with netns.entered(args.netns):        # this thread stays inside; its children inherit
        with RTNL() as nl:
            link = nl.link(args.iface)
        ext = ExternalInterface(name=link.name, index=link.index,
                                iface_addr=IPv4Address(args.public_ip),
                                public_ip=IPv4Address(args.public_ip), mtu=link.mtu)
        config = parse_config(json.dumps({"Network": args.network,
                                          "Backend": {"Type": "udp", "Port": args.port}}))
        backend = UdpBackend(ext, config, mode=args.mode)
        own = Lease(ip_network(args.subnet),
                    LeaseAttrs(public_ip=IPv4Address(args.public_ip), backend_type="udp"))
        backend.start(own, config)
        backend.reconcile(_leases(json.loads(args.peers)))
        print("ready", flush=True)
        try:
            for line in sys.stdin:
                cmd, _, rest = line.strip().partition(" ")
                if cmd == "reconcile":
                    backend.reconcile(_leases(json.loads(rest)))
                    print(json.dumps({"routes": {str(k): str(v)
                                                 for k, v in backend.routes.items()}}),
                          flush=True)
                elif cmd == "stats":
                    print(json.dumps(backend.stats), flush=True)
                elif cmd:
                    print(json.dumps({"error": f"unknown command {cmd}"}), flush=True)
        finally:
            backend.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="udp_topology")
    sub = parser.add_subparsers(dest="cmd", required=True)
    node = sub.add_parser("node", help="run a udp backend in a node namespace")
    node.add_argument("--netns", required=True)
    node.add_argument("--iface", default=UL_IF)
    node.add_argument("--subnet", required=True)
    node.add_argument("--public-ip", required=True)
    node.add_argument("--network", default=str(NETWORK))
    node.add_argument("--port", type=int, default=8285)
    node.add_argument("--mode", default="batch")
    node.add_argument("--peers", default="[]")
    args = parser.parse_args(argv)
    if os.environ.get("UDP_TOPOLOGY_DEBUG"):
        import logging
        logging.basicConfig(level=logging.DEBUG)
    return _node_main(args)


if __name__ == "__main__":
    sys.exit(main())
