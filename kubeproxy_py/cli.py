"""``kube-proxy``: upstream's flags where they apply, plus ``kube-proxy render -f DIR``.

    kube-proxy --etcd-endpoints URLS --hostname-override NODE [--cluster-cidr CIDR] ...
    kube-proxy ... --dry-run          # print the iptables-restore payload once and exit
    kube-proxy render -f manifests/   # Services + EndpointSlices from YAML → rules, no cluster

The daemon runs in the node's network namespace (the lab starts it there). With
``--run-endpoints-controller`` it also runs the endpoints controller, which an etcd lease
keeps active on one node only.
"""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
from typing import Any, Sequence

log = logging.getLogger(__name__)

DEFAULT_METRICS = "127.0.0.1:10249"
DEFAULT_HEALTHZ = "0.0.0.0:10256"
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def duration(text: str) -> float:
    """Go's duration syntax as flags take it (``"1s"``, ``"100ms"``, ``"1m30s"``, ``"0"``);
    a bare number is seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION.finditer(text):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNIT[m.group(2)]
            pos = m.end()
        if pos != len(text) or not text:
            raise argparse.ArgumentTypeError(f"invalid duration {text!r} (e.g. 1s, 100ms, 1m)")
    if value < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: negative")
    return value


def _cidrs(text: str) -> list[str]:
    out = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if part == "primary":
            out.append(part)
            continue
        try:
            out.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid CIDR {part!r}") from None
    return out


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kube-proxy", description="podnet's kube-proxy (iptables mode)")
    p.add_argument("--proxy-mode", choices=["iptables"], default="iptables")
    p.add_argument("--hostname-override", default=None, help="this node's name")
    p.add_argument("--cluster-cidr", default=None, help="pod CIDR: traffic from elsewhere is masqueraded")
    p.add_argument("--masquerade-all", action="store_true")
    p.add_argument("--nodeport-addresses", type=_cidrs, default=[],
                   help="CIDRs of the node addresses NodePorts answer on (default: all)")
    p.add_argument("--iptables-sync-period", type=duration, default=30.0)
    p.add_argument("--iptables-min-sync-period", type=duration, default=1.0)
    p.add_argument("--iptables-masquerade-bit", type=int, default=14)
    p.add_argument("--metrics-bind-address", default=DEFAULT_METRICS, help="ip:port, empty: off")
    p.add_argument("--healthz-bind-address", default=DEFAULT_HEALTHZ, help="ip:port, empty: off")
    p.add_argument("--etcd-endpoints", default=os.environ.get("PODNET_ETCD_ENDPOINTS", ""))
    p.add_argument("--run-endpoints-controller", action="store_true",
                   help="also run the endpoints controller (one active per cluster)")
    p.add_argument("--dry-run", action="store_true", help="print the payload and exit")
    p.add_argument("--cleanup", action="store_true", help="remove every KUBE-* rule and exit")
    p.add_argument("-v", "--v", type=int, default=2, help="log verbosity (upstream's -v)")
    return p


def render_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="kube-proxy render",
                                description="Services + EndpointSlices (YAML) → kube-proxy's rules")
    p.add_argument("-f", "--filename", action="append", required=True, help="file or directory, - for stdin")
    p.add_argument("--hostname-override", default="")
    p.add_argument("--cluster-cidr", default=None)
    p.add_argument("--masquerade-all", action="store_true")
    p.add_argument("--nodeport-addresses", type=_cidrs, default=[],
                   help="here: the node addresses themselves (CIDRs of one address each)")
    return p


# --- node facts --------------------------------------------------------------------------


def local_addresses() -> list[str]:
    """IPv4 addresses of this network namespace."""
    from podnet import rtnl
    with rtnl.RTNL() as h:
        return [a.address for a in h.addrs(family=socket.AF_INET)]


def nodeport_ips(cidrs: Sequence[str], addresses: Sequence[str], node_ip: str | None
                 ) -> tuple[str, ...] | None:
    """``--nodeport-addresses`` resolved against the node's addresses; None = all local."""
    if not cidrs:
        return None
    out = []
    for c in cidrs:
        if c == "primary":
            if node_ip:
                out.append(node_ip)
            continue
        net = ipaddress.ip_network(c)
        out += [a for a in addresses if ipaddress.ip_address(a) in net]
    return tuple(sorted(set(out)))


def node_ip_from_store(store: Any, node: str) -> str | None:
    try:
        obj = store.get("nodes", None, node)
    except Exception as e:
        log.warning("cannot read Node %s: %s", node, e)
        return None
    for a in ((obj or {}).get("status") or {}).get("addresses") or ():
        if a.get("type") == "InternalIP":
            return a.get("address")
    return None


def options_from(args: argparse.Namespace, node_name: str, node_ip: str | None,
                 addresses: Sequence[str]):
    from kubeproxy_py.model import ProxyOptions
    return ProxyOptions(node_name=node_name, cluster_cidr=args.cluster_cidr,
                        masquerade_all=args.masquerade_all,
                        masquerade_bit=getattr(args, "iptables_masquerade_bit", 14),
                        nodeport_ips=nodeport_ips(args.nodeport_addresses, addresses, node_ip),
                        node_ip=node_ip)


# --- syncer ------------------------------------------------------------------------------


def make_syncer(options: Any) -> Any:
    from kubeproxy_py.iptables.apply import IptablesSyncer
    return IptablesSyncer(options)


# --- commands ------------------------------------------------------------------------------


def cmd_render(argv: list[str]) -> int:
    from podnet import manifests
    from kubeproxy_py.iptables.render import render_objects
    args = render_parser().parse_args(argv)
    docs = manifests.load(args.filename, sys.stdin)
    objs = [manifests.normalize(d.obj) for d in docs if isinstance(d.obj, dict)]
    services = [o for o in objs if o.get("kind") == "Service"]
    slices = [o for o in objs if o.get("kind") == "EndpointSlice"]
    ips = [c.split("/")[0] for c in args.nodeport_addresses if c != "primary"]
    from kubeproxy_py.model import ProxyOptions
    opts = ProxyOptions(node_name=args.hostname_override, cluster_cidr=args.cluster_cidr,
                        masquerade_all=args.masquerade_all, nodeport_ips=tuple(ips) or None)
    sys.stdout.write(render_objects(services, slices, opts).text)
    return 0


def _setup_logging(v: int) -> None:
    level = logging.DEBUG if v >= 4 else logging.INFO if v >= 2 else logging.WARNING
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def run(args: argparse.Namespace) -> int:
    from podnet.etcd import Store
    from podnet.store import ObjectStore
    from kubeproxy_py.proxier import HealthCheckServers, Proxier

    if not args.etcd_endpoints:
        print("kube-proxy: --etcd-endpoints is required", file=sys.stderr)
        return 2
    node_name = args.hostname_override or socket.gethostname()
    store = ObjectStore(Store(args.etcd_endpoints, timeout=5.0))
    node_ip = node_ip_from_store(store, node_name)
    try:
        addresses = local_addresses()
    except OSError as e:
        log.warning("cannot list local addresses: %s", e)
        addresses = []
    options = options_from(args, node_name, node_ip, addresses)
    syncer = make_syncer(options)
    if args.cleanup:
        syncer.cleanup()
        return 0
    if args.dry_run:
        proxier = Proxier(syncer, options)
        proxier.on_service(("snapshot", store.list("services")[0]))
        proxier.on_slice(("snapshot", store.list("endpointslices")[0]))
        ports, eps = proxier.state()
        sys.stdout.write(syncer.dry_run(ports, eps))
        return 0

    from kubeproxy_py.metrics import Metrics, healthz_body, serve, split_hostport
    from podnet.conntrack import Conntrack
    metrics = Metrics()
    proxier = Proxier(syncer, options, min_sync_period=args.iptables_min_sync_period,
                      sync_period=args.iptables_sync_period, conntrack=Conntrack(),
                      health=HealthCheckServers(), metrics=metrics)
    stop = threading.Event()
    servers = []
    if args.metrics_bind_address:
        servers.append(serve(split_hostport(args.metrics_bind_address, 10249),
                             {"/metrics": lambda: (200, "text/plain; version=0.0.4",
                                                   metrics.text())}, "metrics"))
    if args.healthz_bind_address:
        def healthz() -> tuple[int, str, bytes]:
            now = time.time()
            return healthz_body(proxier.last_success, now, proxier.healthy(now))
        servers.append(serve(split_hostport(args.healthz_bind_address, 10256),
                             {"/healthz": healthz, "/livez": healthz}, "healthz"))

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("signal %d: stopping (rules stay in place)", signum)
        stop.set()
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    threads = []
    if args.run_endpoints_controller:
        from kubeproxy_py.endpoints import EndpointsController, LeaderElector
        elector = LeaderElector(store.etcd, f"{node_name}/{os.getpid()}")
        ctl = EndpointsController(store, elector)
        t = threading.Thread(target=ctl.run, args=(stop,), name="endpoints-controller", daemon=True)
        t.start()
        threads.append(t)
    log.info("kube-proxy on %s (node IP %s): iptables mode, min sync %.3fs, sync %.0fs",
             node_name, node_ip, args.iptables_min_sync_period, args.iptables_sync_period)
    proxier.run(store, stop)
    for t in threads:
        t.join(timeout=3.0)
    for s in servers:
        s.shutdown()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "render":
        _setup_logging(1)
        return cmd_render(argv[1:])
    args = parser().parse_args(argv)
    _setup_logging(args.v)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
