"""Pod-to-pod TCP throughput and ping latency across two namespace "nodes" for flannel's
backends, against node-to-node on the same veth underlay, all in one run.

    python benchmarks/flannel_throughput.py [--seconds 5] [--rounds 1] [--pings 50]
        [--only underlay,udp,udp-tso,udp-simple,vxlan,host-gw]

Each scenario gets a fresh topology (tests/integration/flannel/udp_topology.py): two node
namespaces joined by a veth pair (MTU 1500) and, for the backends, one pod namespace per
node behind a ``cni0`` bridge, as the bridge CNI plugin makes it (pod MTU = the backend's
FLANNEL_MTU).  Traffic crosses the overlay both ways (data one way, ACKs back).

* ``underlay``: iperf3 node A -> node B on the veth addresses.
* ``udp``: podnet's udp backend (flannel0 + the Python proxy in its default ``batch`` mode:
  UDP GSO/GRO batches, merged GSO writes into the TUN), one process per node as flanneld
  would run it.
* ``udp-tso``: the same with ``mode="tso"`` (TSO super-packets from the TUN, cut in Python).
* ``udp-simple``: the same with ``mode="simple"`` (upstream's one-packet-at-a-time loop).
* ``vxlan``: ``flannel_py.backend.vxlan`` (kernel VTEP flannel.1, static neigh/FDB, onlink
  routes); if that module is missing, the same state set up directly with podnet.rtnl.
* ``vxlan-vtep``: the reference for vxlan — node to node through the same kernel VTEPs, no
  pod hops: what the kernel's VXLAN itself costs on this machine.
* ``host-gw``: ``flannel_py.backend.hostgw`` (routes via the peer), or the routes directly.

iperf3 servers are started by PID and stopped in ``finally``; every namespace is removed.
Prints JSON: Gbit/s, retransmits and median ping RTT per scenario, and ratios to underlay.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from ipaddress import IPv4Address, ip_network

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from podnet.netns import Scratch  # noqa: E402
from podnet.rtnl import RTNL  # noqa: E402
from tests.integration.flannel import udp_topology as topo  # noqa: E402

NS_PREFIX = "pn-bench-fl-"
SCENARIOS = ("underlay", "udp", "udp-tso", "udp-simple", "vxlan", "vxlan-vtep", "host-gw")
UDP_MODES = {"udp": "batch", "udp-tso": "tso", "udp-simple": "simple"}
UNDERLAY_MTU = 1500



# --- measuring ----------------------------------------------------------------------------

def iperf(server_ns: str, client_ns: str, server_ip: str, seconds: float) -> dict:
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, "iperf3", "-s", "-1"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        out = None
        for _attempt in range(50):
            r = subprocess.run(["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip,
                                "-t", str(seconds), "-O", "1", "-J"],
                               capture_output=True, text=True, timeout=seconds + 60)
            try:
                out = json.loads(r.stdout)
            except ValueError:
                out = {"error": r.stderr.strip() or r.stdout[-300:]}
            if "error" not in out:
                break
            if "refused" not in out["error"]:
                raise RuntimeError(f"iperf3 failed: {out['error']}")
            time.sleep(0.1)
        if "error" in out:
            raise RuntimeError(f"iperf3 failed: {out['error']}")
        end = out["end"]
        return {"gbit_s": round(end["sum_received"]["bits_per_second"] / 1e9, 3),
                "retransmits": end["sum_sent"].get("retransmits")}
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def ping_median_ms(ns: str, ip: str, count: int) -> float | None:
    r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-n", "-c", str(count), "-i", "0.02",
                        "-W", "1", ip], capture_output=True, text=True, timeout=count + 30)
    times = [float(m) for m in re.findall(r"time=([\d.]+) ms", r.stdout)]
    return round(statistics.median(times), 4) if times else None


# --- scenarios ----------------------------------------------------------------------------

def _leases(nodes, backend_type: str, data=None):
    from flannel_py.subnet.registry import Lease, LeaseAttrs
    data = data or {}
    return {n.name: Lease(n.subnet, LeaseAttrs(public_ip=IPv4Address(n.underlay_ip),
                                               backend_type=backend_type,
                                               backend_data=data.get(n.name)))
            for n in nodes}


def _ext(node):
    from flannel_py.backend import ExternalInterface
    with RTNL(node.name) as nl:
        link = nl.link(topo.UL_IF)
    ip = IPv4Address(node.underlay_ip)
    return ExternalInterface(name=link.name, index=link.index, iface_addr=ip, public_ip=ip,
                             mtu=link.mtu)


def _config(btype: str):
    from flannel_py.config import parse_config
    return parse_config(json.dumps({"Network": str(topo.NETWORK), "Backend": {"Type": btype}}))


def setup_kernel_backend(nodes, btype: str) -> list:
    """Start flannel_py's vxlan/host-gw backend on each node (in a thread inside the node's
    netns); returns the backends to stop.  Falls back to programming the same state with
    podnet.rtnl when the module cannot be used."""
    try:
        if btype == "vxlan":
            from flannel_py.backend.vxlan import VxlanBackend as cls
        else:
            from flannel_py.backend.hostgw import HostGwBackend as cls
    except ImportError:
        _manual_kernel_backend(nodes, btype)
        return []
    config = _config(btype)
    backends = {n.name: topo.run_in(n.name, lambda n=n: cls(_ext(n), config)) for n in nodes}
    data = {n.name: topo.run_in(n.name, backends[n.name].backend_data) for n in nodes}
    leases = _leases(nodes, btype, data)
    for n in nodes:
        be = backends[n.name]
        topo.run_in(n.name, be.start, leases[n.name], config)
        topo.run_in(n.name, be.reconcile, [leases[p.name] for p in nodes if p is not n])
    return list(backends.values())


def _manual_kernel_backend(nodes, btype: str) -> None:
    macs = {}
    if btype == "vxlan":
        for n in nodes:
            with RTNL(n.name) as nl:
                ul = nl.link_index(topo.UL_IF)
                nl.add_link("flannel.1", "vxlan", mtu=UNDERLAY_MTU - 50,
                            data={"id": 1, "local": n.underlay_ip, "dev": ul, "port": 8472,
                                  "learning": 0})
                nl.add_addr("flannel.1", f"{n.subnet.network_address}/32", broadcast=False)
                nl.set_link("flannel.1", up=True)
                macs[n.name] = nl.link("flannel.1").mac
    for n in nodes:
        with RTNL(n.name) as nl:
            for p in nodes:
                if p is n:
                    continue
                if btype == "vxlan":
                    gw = str(p.subnet.network_address)
                    nl.add_neigh("flannel.1", gw, macs[p.name])
                    nl.fdb_add("flannel.1", macs[p.name], p.underlay_ip)
                    nl.add_route(str(p.subnet), gateway=gw, oif="flannel.1", onlink=True)
                else:
                    nl.add_route(str(p.subnet), gateway=p.underlay_ip, oif=topo.UL_IF)


def run_scenario(name: str, seconds: float, pings: int, logdir: str) -> dict:
    ns = Scratch(NS_PREFIX)
    started: list = []
    kernel_backends: list = []
    nodes: list = []
    try:
        nodes = topo.build_underlay(ns, mtu=UNDERLAY_MTU)
        a, b = nodes
        if name == "underlay":
            src_ns, dst_ns, dst_ip = a.name, b.name, b.underlay_ip
        elif name == "vxlan-vtep":
            # the kernel's own VXLAN cost: node to node through flannel.1, no pod hops
            kernel_backends = setup_kernel_backend(nodes, "vxlan")
            src_ns, dst_ns, dst_ip = a.name, b.name, str(b.subnet.network_address)
        else:
            mtu = 28 if name in UDP_MODES else {"vxlan": 50, "host-gw": 0}[name]
            for n in nodes:
                topo.add_pod(ns, n, UNDERLAY_MTU - mtu)
            if name.startswith("udp"):
                for n, peer in ((a, b), (b, a)):
                    topo.start_udp_node(n, [peer], mode=UDP_MODES[name],
                                        log_path=os.path.join(logdir, f"{name}-{n.index}.log"))
                    started.append(n)
            else:
                kernel_backends = setup_kernel_backend(nodes, name)
            src_ns, dst_ns, dst_ip = a.pod_ns, b.pod_ns, b.pod_ip
        result = {"ping_ms": ping_median_ms(src_ns, dst_ip, pings)}
        result.update(iperf(dst_ns, src_ns, dst_ip, seconds))
        if started:
            result["proxy_stats"] = {f"node{n.index}": topo.node_command(n, "stats")
                                     for n in started}
        return result
    finally:
        for n in started:
            topo.stop_udp_node(n)
        for be in kernel_backends:
            try:
                be.stop()
            except Exception as exc:           # cleanup continues; namespaces go anyway
                print(f"stopping backend: {exc}", file=sys.stderr)
        ns.cleanup()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--pings", type=int, default=50)
    ap.add_argument("--only", default=",".join(SCENARIOS))
    ap.add_argument("--logdir", default="/tmp")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    wanted = [s for s in args.only.split(",") if s]
    for s in wanted:
        if s not in SCENARIOS:
            ap.error(f"unknown scenario {s}")
    runs: dict[str, list[dict]] = {s: [] for s in wanted}
    for _round in range(args.rounds):
        for s in wanted:
            runs[s].append(run_scenario(s, args.seconds, args.pings, args.logdir))
    summary = {}
    for s, rs in runs.items():
        summary[s] = {"gbit_s": statistics.median(r["gbit_s"] for r in rs),
                      "ping_ms": statistics.median(r["ping_ms"] for r in rs
                                                   if r["ping_ms"] is not None)
                      if any(r["ping_ms"] is not None for r in rs) else None,
                      "runs": rs}
    base = summary.get("underlay", {}).get("gbit_s")
    if base:
        for s, v in summary.items():
            v["ratio_to_underlay"] = round(v["gbit_s"] / base, 4)
    print(json.dumps({"seconds": args.seconds, "rounds": args.rounds, "cpus": os.cpu_count(),
                      "underlay_mtu": UNDERLAY_MTU, "results": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
