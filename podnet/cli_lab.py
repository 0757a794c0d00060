"""``podnet lab up|status|down``, ``podnet rules --node`` and ``podnet node`` (real machines)."""
from __future__ import annotations

import argparse
import json
import sys


def _progress(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _lab_up(args: argparse.Namespace) -> int:
    from podnet import lab
    spec = lab.LabSpec(name=args.name, nodes=args.nodes, backend=args.backend,
                       etcd_members=args.etcd_members, proxy_mode=args.proxy_mode,
                       netpol=args.netpol)
    state = lab.up(spec, _progress)
    for node in state.nodes:
        print(f"{node.name}\t{node.ip}\t{node.netns}")
    print(f"use: podnet --lab {state.name} get nodes")
    return 0


def _lab_down(args: argparse.Namespace) -> int:
    from podnet import lab
    names = lab.list_labs() if args.all else [args.name]
    for name in names:
        lab.down(name, _progress)
    return 0


def _lab_status(args: argparse.Namespace) -> int:
    from podnet import lab
    st = lab.status(args.name)
    if args.output == "json":
        print(json.dumps(st, indent=2))
        return 0
    print(f"lab {st['name']}: {st['phase']}, backend {st['backend']}, etcd {','.join(st['etcd'])}")
    print(f"{'NODE':<10} {'IP':<16} {'SUBNET':<16} NETNS")
    for n in st["nodes"]:
        print(f"{n['name']:<10} {n['ip']:<16} {n['subnet'] or '-':<16} {n['netns']}")
    print(f"\n{'DAEMON':<12} {'ON':<10} {'PID':<8} STATE")
    for d in st["daemons"]:
        print(f"{d['role']:<12} {d['owner']:<10} {d['pid']:<8} {'running' if d['alive'] else 'DEAD'}")
    print(f"\npods: {len(st['pods'])}")
    healthy = all(d["alive"] for d in st["daemons"]) and st["phase"] == "ready"
    return 0 if healthy else 1


def _lab_restart(args: argparse.Namespace) -> int:
    from podnet import lab
    proc = lab.restart(args.name, args.node, args.daemon, kill=args.kill)
    print(f"{proc.role} on {proc.owner}: pid {proc.pid}")
    return 0


def _rules(args: argparse.Namespace) -> int:
    from podnet import lab, rules_view
    if not args.lab:
        print("podnet rules: --lab NAME is required (it says where the node's namespace is)",
              file=sys.stderr)
        return 2
    state = lab.LabState.load(args.lab)
    node = next((n for n in state.nodes if n.name == args.node), None)
    if node is None:
        print(f"podnet rules: lab {args.lab!r} has no node {args.node!r} "
              f"(nodes: {', '.join(n.name for n in state.nodes)})", file=sys.stderr)
        return 1
    print(f"# node {node.name} ({node.ip}, netns {node.netns})")
    print(rules_view.read(node.netns, args.what))
    return 0


def _endpoints(args: argparse.Namespace) -> str:
    endpoints = getattr(args, "etcd_endpoints", None)
    if not endpoints:
        raise SystemExit(f"podnet node {args.node_cmd}: --etcd-endpoints is required")
    return endpoints


def _node_error(fn):
    def wrapped(args: argparse.Namespace) -> int:
        from podnet.node import NodeError
        try:
            return fn(args)
        except NodeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return wrapped


@_node_error
def _node_setup(args: argparse.Namespace) -> int:
    from podnet import node
    cfg = node.standard(args.name, _endpoints(args), args.iface, args.ip or _iface_ip(args.iface))
    started = not args.no_start and not args.root
    for path in node.setup(cfg, root=args.root or "", start=not args.no_start, native=args.native):
        print(path)
    if started:
        _progress(f"node {cfg.name}: podnet-cni, flanneld and podnet-runner enabled and started")
    return 0


def _iface_ip(iface: str) -> str:
    """The first global IPv4 address of ``iface`` in this namespace (read only)."""
    import socket

    from podnet import rtnl
    from podnet.node import NodeError
    try:
        with rtnl.RTNL() as h:
            index = h.link_index(iface)
            addrs = [a.address for a in h.addrs(family=socket.AF_INET)
                     if a.index == index and a.scope == 0]
    except OSError as exc:
        raise NodeError(f"--iface {iface}: {exc}; give --ip") from None
    if not addrs:
        raise NodeError(f"--iface {iface} has no IPv4 address; give --ip")
    return addrs[0]


@_node_error
def _node_etcd_unit(args: argparse.Namespace) -> int:
    from podnet import node
    print(node.setup_etcd(args.name, args.ip, args.initial_cluster, root=args.root or "",
                          start=not args.no_start, data_dir=args.data_dir))
    return 0


@_node_error
def _node_init_network(args: argparse.Namespace) -> int:
    from podnet import node
    config = node.init_network(_endpoints(args), args.backend, args.network, args.timeout)
    print(f"{node.FLANNEL_PREFIX}/config = {json.dumps(config)}")
    return 0


def _register_node(sub: argparse._SubParsersAction, backends: tuple[str, ...]) -> None:
    node = sub.add_parser("node", help="set up a real machine as a node (systemd units)")
    cmds = node.add_subparsers(dest="node_cmd", required=True)
    st = cmds.add_parser("setup", help="install the CNI plugins, the conflist and the node's "
                                       "systemd units (podnet-cni, flanneld, podnet-runner)")
    st.add_argument("--name", required=True, help="node name (as in pods' spec.nodeName)")
    st.add_argument("--iface", required=True, help="interface to the other nodes (flanneld --iface)")
    st.add_argument("--ip", help="the node's address on --iface (default: read from it)")
    st.add_argument("--root", help="write the files under this directory instead of / "
                                   "(implies --no-start)")
    st.add_argument("--no-start", action="store_true", help="do not run systemctl")
    st.add_argument("--native", dest="native", action="store_true", default=None,
                    help="install the C shim (default when a C compiler is present)")
    st.add_argument("--no-native", dest="native", action="store_false",
                    help="install Python scripts only")
    st.set_defaults(func=_node_setup)
    eu = cmds.add_parser("etcd-unit", help="write (and start) podnet-etcd.service")
    eu.add_argument("--name", required=True, help="etcd member name")
    eu.add_argument("--ip", required=True, help="address to serve clients and peers on")
    eu.add_argument("--initial-cluster", help="NAME=http://IP:2380,... (default: this member)")
    eu.add_argument("--data-dir", default="/var/lib/podnet/etcd")
    eu.add_argument("--root", help="write the unit under this directory (implies --no-start)")
    eu.add_argument("--no-start", action="store_true", help="do not run systemctl")
    eu.set_defaults(func=_node_etcd_unit)
    net = cmds.add_parser("init-network", help="store flannel's network config in etcd "
                                               "(waits for etcd to answer)")
    net.add_argument("--backend", choices=backends, default="vxlan")
    net.add_argument("--network", default="10.244.0.0/16")
    net.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for etcd")
    net.set_defaults(func=_node_init_network)
    for p in (st, net):
        p.add_argument("--etcd-endpoints", metavar="URLS", default=argparse.SUPPRESS,
                       help="comma-separated etcd URLs")


def register(sub: argparse._SubParsersAction) -> None:
    from podnet.lab import BACKENDS
    lab = sub.add_parser("lab", help="a multi-node lab on this machine").add_subparsers(
        dest="lab_cmd", required=True)
    up = lab.add_parser("up", help="create a lab and wait until every node is ready")
    up.add_argument("--name", default="lab")
    up.add_argument("--nodes", type=int, default=3)
    up.add_argument("--backend", choices=BACKENDS, default="vxlan")
    up.add_argument("--proxy-mode", choices=["iptables", "ipvs", "none"], default="iptables")
    up.add_argument("--netpol", action=argparse.BooleanOptionalAction, default=True)
    up.add_argument("--etcd-members", type=int, choices=[1, 3], default=1)
    up.set_defaults(func=_lab_up)
    st = lab.add_parser("status", help="nodes, subnets, pods and daemon health")
    st.add_argument("--name", default="lab")
    st.add_argument("-o", "--output", choices=["text", "json"], default="text")
    st.set_defaults(func=_lab_status)
    dn = lab.add_parser("down", help="remove everything the lab made")
    dn.add_argument("--name", default="lab")
    dn.add_argument("--all", action="store_true", help="every lab on this machine")
    dn.set_defaults(func=_lab_down)
    rs = lab.add_parser("restart", help="restart one node daemon (it adopts its state)")
    rs.add_argument("--name", default="lab")
    rs.add_argument("--node", required=True)
    rs.add_argument("--daemon", choices=["runner", "flanneld", "cni-daemon", "kube-proxy"], required=True)
    rs.add_argument("--kill", action="store_true", help="SIGKILL first, as a crash would")
    rs.set_defaults(func=_lab_restart)
    rules = sub.add_parser("rules", help="a node's routes, neighbours, FDB and rules")
    rules.add_argument("--node", required=True)
    rules.add_argument("--what", default="all",
                       choices=["all", "iptables", "ipset", "ipvs", "routes", "fdb", "neigh"])
    rules.set_defaults(func=_rules)
    _register_node(sub, BACKENDS)
