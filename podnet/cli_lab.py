"""``podnet lab up|status|down`` and ``podnet rules --node``."""
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
    rs.add_argument("--daemon", choices=["runner", "flanneld", "cni-daemon"], required=True)
    rs.add_argument("--kill", action="store_true", help="SIGKILL first, as a crash would")
    rs.set_defaults(func=_lab_restart)
    rules = sub.add_parser("rules", help="a node's routes, neighbours, FDB and rules")
    rules.add_argument("--node", required=True)
    rules.add_argument("--what", default="all",
                       choices=["all", "iptables", "ipset", "ipvs", "routes", "fdb", "neigh"])
    rules.set_defaults(func=_rules)
