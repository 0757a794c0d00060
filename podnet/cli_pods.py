"""``podnet exec | probe | probe-matrix | runner``: the pod side of the ``podnet`` command.

``exec`` and the probes find a pod's network namespace from the store alone (node name +
pod key → :func:`podnet.pods.netns_name`), so they need no runner to answer them. Probes
run in threads of this process; each creates its socket inside the source pod's netns.
"""
from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import logging
import subprocess
import sys
from typing import Any

from podnet import pods as P

log = logging.getLogger(__name__)

Json = dict[str, Any]


class CLIError(Exception):
    """One clear line for the user."""


def register(subparsers: Any) -> None:
    """Add ``exec``, ``probe``, ``probe-matrix`` and ``runner`` to the podnet parser."""
    ex = subparsers.add_parser("exec", help="run a command in a pod's network namespace")
    ex.add_argument("-n", "--namespace", default="default")
    ex.add_argument("pod")
    ex.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD...")
    ex.set_defaults(func=cmd_exec)

    pr = subparsers.add_parser("probe", help="connect from a pod to a pod, service or IP")
    pr.add_argument("src", metavar="FROM", help="ns/pod")
    pr.add_argument("dst", metavar="TO", help="ns/pod | IP | ns/service")
    _probe_args(pr)
    pr.set_defaults(func=cmd_probe)

    pm = subparsers.add_parser("probe-matrix", help="probe every pod pair, in parallel")
    _probe_args(pm)
    pm.add_argument("-o", "--output", choices=("table", "json"), default="table")
    pm.add_argument("--parallel", type=int, default=32)
    pm.set_defaults(func=cmd_probe_matrix)

    rn = subparsers.add_parser("runner", help="the pod runner daemon of one node")
    rn.add_argument("--node", required=True)
    rn.add_argument("--cni-bin", required=True, help="CNI_PATH: directory of the plugins")
    rn.add_argument("--cni-conf", required=True, help="the node's .conflist")
    rn.add_argument("--state-dir", required=True)
    rn.add_argument("--node-ip", default=None, help="status.hostIP (default: detected)")
    rn.add_argument("--resync", type=float, default=5.0, help="seconds between full passes")
    rn.add_argument("--grace", type=float, default=5.0, help="SIGTERM→SIGKILL grace, seconds")
    rn.set_defaults(func=cmd_runner)
    for sp in (ex, pr, pm, rn):
        _cluster_options(sp)


def _cluster_options(p: argparse.ArgumentParser) -> None:
    """``--lab``/``--etcd-endpoints`` after the subcommand too (not overriding the global ones)."""
    try:
        from podnet.cluster import add_cluster_options
    except ImportError:
        p.add_argument("--etcd-endpoints", default=argparse.SUPPRESS)
        return
    add_cluster_options(p, suppress=True)


def _probe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--protocol", type=str.upper, choices=("TCP", "UDP"), default="TCP")
    p.add_argument("--timeout", type=float, default=2.0)


# --- cluster access ----------------------------------------------------------------------

def connect(args: argparse.Namespace) -> tuple[Any, Any]:
    """(ObjectStore, context manager to hold while talking to etcd)."""
    try:
        from podnet.cluster import connect as cluster_connect
    except ImportError:
        cluster_connect = None
    if cluster_connect is not None:
        from podnet.cluster import ClusterError
        try:
            return cluster_connect(args)
        except ClusterError as e:
            raise CLIError(str(e)) from None
    endpoints = getattr(args, "etcd_endpoints", None)
    if not endpoints:
        raise CLIError("no cluster: give --etcd-endpoints (or --lab)")
    from podnet.etcd import Store
    from podnet.store import ObjectStore
    return ObjectStore(Store(endpoints)), contextlib.nullcontext()


def _ctx(ctx: Any):
    if ctx is None:
        return contextlib.nullcontext()
    if hasattr(ctx, "__enter__"):
        return ctx
    return ctx()


def split_ref(ref: str) -> tuple[str, str]:
    """``ns/name`` → (ns, name); a bare name is in ``default``."""
    if "/" in ref:
        ns, name = ref.split("/", 1)
        return ns or "default", name
    return "default", ref


def pod_netns(pod: Json) -> str:
    """The pod's netns name, or CLIError when it is not running on a node."""
    ns, name = P.pod_key(pod)
    node = (pod.get("spec") or {}).get("nodeName")
    phase = (pod.get("status") or {}).get("phase", "Pending")
    if not node or phase != "Running":
        raise CLIError(f"pod {ns}/{name} is not running (phase {phase}"
                       f"{', not scheduled' if not node else ', node ' + node})")
    return P.netns_name(node, ns, name)


def get_pod(store: Any, ns: str, name: str) -> Json:
    pod = store.get("pods", ns, name)
    if pod is None:
        raise CLIError(f'pod "{name}" not found in namespace "{ns}"')
    return pod


def resolve_target(store: Any, ref: str) -> str:
    """An IP as it is; ns/pod → its podIP; ns/service → its clusterIP."""
    try:
        return str(ipaddress.ip_address(ref))
    except ValueError:
        pass
    ns, name = split_ref(ref)
    pod = store.get("pods", ns, name)
    if pod is not None:
        ip = (pod.get("status") or {}).get("podIP")
        if not ip:
            raise CLIError(f"pod {ns}/{name} has no IP yet (phase "
                           f"{(pod.get('status') or {}).get('phase', 'Pending')})")
        return ip
    svc = store.get("services", ns, name)
    if svc is not None:
        ip = (svc.get("spec") or {}).get("clusterIP")
        if not ip or ip == "None":
            raise CLIError(f"service {ns}/{name} has no cluster IP")
        return ip
    raise CLIError(f'"{ref}" is neither an IP nor a pod or service in namespace "{ns}"')


# --- commands ----------------------------------------------------------------------------

def _fail(e: Exception) -> int:
    print(f"error: {e}", file=sys.stderr)
    return 2


def cmd_exec(args: argparse.Namespace) -> int:
    from podnet import netns
    argv = list(args.argv)
    if argv and argv[0] == "--":
        argv = argv[1:]
    if not argv:
        return _fail(CLIError("exec needs a command: podnet exec POD -- CMD..."))
    try:
        store, ctx = connect(args)
        with _ctx(ctx):
            ns, name = split_ref(args.pod) if "/" in args.pod else (args.namespace, args.pod)
            ns_name = pod_netns(get_pod(store, ns, name))
        preexec = netns.preexec(ns_name)
    except (CLIError, OSError) as e:
        return _fail(e)
    try:
        return subprocess.run(argv, preexec_fn=preexec).returncode
    except OSError as e:
        return _fail(CLIError(f"{argv[0]}: {e.strerror or e}"))


def cmd_probe(args: argparse.Namespace) -> int:
    from podnet.probe import describe, probe
    try:
        store, ctx = connect(args)
        with _ctx(ctx):
            ns, name = split_ref(args.src)
            src_ns = pod_netns(get_pod(store, ns, name))
            ip = resolve_target(store, args.dst)
    except CLIError as e:
        return _fail(e)
    result = probe(src_ns, ip, args.port, args.protocol, args.timeout)
    dst = args.dst if args.dst == ip else f"{args.dst} ({ip})"
    print(describe(f"{ns}/{name}", dst, args.port, args.protocol, result))
    return 0 if result.ok else 1


def running_pods(pods: list[Json]) -> list[tuple[str, str, str]]:
    """(ns/name, netns, podIP) of every Running pod with an address, sorted."""
    out = []
    for pod in pods:
        st = pod.get("status") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        if st.get("phase") == "Running" and st.get("podIP") and node:
            ns, name = P.pod_key(pod)
            out.append((f"{ns}/{name}", P.netns_name(node, ns, name), st["podIP"]))
    return sorted(out)


def run_matrix(targets: list[tuple[str, str, str]], port: int, protocol: str, timeout: float,
               parallel: int = 32) -> dict[tuple[str, str], Any]:
    """Probe every (from, to) pair in a thread pool; each thread enters the source netns."""
    from concurrent.futures import ThreadPoolExecutor

    from podnet.probe import probe
    pairs = [(s, d) for s in targets for d in targets]
    with ThreadPoolExecutor(max(1, min(parallel, len(pairs) or 1)),
                            thread_name_prefix="probe") as pool:
        results = list(pool.map(lambda sd: probe(sd[0][1], sd[1][2], port, protocol, timeout),
                                pairs))
    return {(s[0], d[0]): r for (s, d), r in zip(pairs, results)}


def cmd_probe_matrix(args: argparse.Namespace) -> int:
    from podnet.probe import matrix_table
    try:
        store, ctx = connect(args)
        with _ctx(ctx):
            pods, _ = store.list("pods")
    except CLIError as e:
        return _fail(e)
    targets = running_pods(pods)
    if not targets:
        return _fail(CLIError("no running pods with an address"))
    results = run_matrix(targets, args.port, args.protocol, args.timeout, args.parallel)
    ok = all(r.ok for r in results.values())
    if args.output == "json":
        print(json.dumps({
            "port": args.port, "protocol": args.protocol, "allReachable": ok,
            "pods": [{"name": n, "ip": ip} for n, _, ip in targets],
            "results": [dict(r.to_json(), **{"from": s, "to": d})
                        for (s, d), r in sorted(results.items())],
        }, indent=2))
    else:
        names = [n for n, _, _ in targets]
        print(matrix_table(names, results))
        bad = sum(1 for r in results.values() if not r.ok)
        print(f"\n{len(results) - bad}/{len(results)} reachable on port {args.port}/{args.protocol}")
    return 0 if ok else 1


def cmd_runner(args: argparse.Namespace) -> int:
    import signal
    import threading

    from podnet.runner import Runner
    try:
        store, _scope = connect(args)   # the store enters the cluster's netns per request
    except CLIError as e:
        return _fail(e)
    try:
        runner = Runner(store, args.node, args.cni_bin, args.cni_conf,
                        args.state_dir, resync=args.resync, grace=args.grace,
                        node_ip=args.node_ip)
    except (OSError, ValueError) as e:
        return _fail(CLIError(f"{args.cni_conf}: {e}"))
    stop = threading.Event()
    # like the kubelet: a stopped runner leaves its pods running
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    runner.run(stop)
    return 0
