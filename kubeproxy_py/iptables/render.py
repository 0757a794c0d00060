"""kube-proxy's iptables layout as a pure function: service ports + endpoints → restore text.

The rules, comments, chain names and probabilities are upstream's (``syncProxyRules`` in
``pkg/proxy/iptables/proxier.go``), so ``iptables-save`` on a podnet node reads like one on a
Kubernetes node. Upstream emits Services in Go map order; we emit the canonical order its own
tests compare against (``sortIPTablesRules``): ``*filter`` then ``*nat``; in each table
KUBE-NODEPORTS, KUBE-SERVICES, then the other chains alphabetically; rules grouped by chain, in
the order upstream writes them; KUBE-SERVICES/KUBE-NODEPORTS rules by service name, the
``NOTE: this must be the last rule`` jump last.

Speed matters (10,000 Services × 5 endpoints in well under a second), so the hot loop only
formats strings into lists: chain names were hashed when the objects were parsed
(:mod:`kubeproxy_py.model`), probabilities are cached, and the text is joined once.

What this module does not do: resolve ``--nodeport-addresses`` to addresses, read the node's
rules, or run anything. :func:`jump_rules` lists the rules the applier must keep in the
built-in chains; ``changed``/``delete_chains`` let it ask for a partial sync.
"""
from __future__ import annotations

import gc
import logging
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Collection, Iterable, Mapping, Sequence

from kubeproxy_py.iptables import names
from kubeproxy_py.model import (Endpoint, PortKey, ProxyOptions, ServicePort,
                                parse_endpoint_slices, parse_services)

log = logging.getLogger(__name__)

# Above this many endpoints (in all proxied services) the per-endpoint rules lose their
# comments, as upstream's "large cluster mode" does: ~40% less text to restore.
LARGE_CLUSTER_ENDPOINTS = 1000

_MASQ = names.MARK_MASQ
_NODEPORTS_LAST = ('"kubernetes service nodeports; NOTE: this must be the last rule in this'
                   ' chain"')

_probabilities: list[str] = ["<bad value>"]


def probability(n: int) -> str:
    """1/n printed as Go's ``%0.10f``; cached, as the conversion is the slow part."""
    cache = _probabilities
    while len(cache) <= n:
        cache.append("%0.10f" % (1.0 / len(cache)))
    return cache[n]


@dataclass(frozen=True)
class Rendered:
    """A restore payload and what the applier needs to know about it.

    ``nat_chains`` holds every per-service nat chain (KUBE-SVC/SVL/EXT/FW/SEP) that the
    current state uses, written or not — anything else of ours in the nat table is stale.
    """

    text: str
    nat_chains: frozenset[str]
    filter_rules: int
    nat_rules: int
    large_cluster: bool
    services_without_local_endpoints_internal: int = 0
    services_without_local_endpoints_external: int = 0


def categorize(sp: ServicePort, endpoints: Sequence[Endpoint], node_name: str
               ) -> tuple[list[Endpoint], list[Endpoint], list[Endpoint], bool]:
    """``(cluster, local, reachable, has_any)`` as upstream's ``CategorizeEndpoints`` (without
    topology hints): ready endpoints, or serving-and-terminating ones when none is ready."""
    if not sp.uses_local_endpoints:  # the common case, kept short
        cluster = [e for e in endpoints if e.ready]
        if not cluster:
            cluster = [e for e in endpoints if e.serving and e.terminating]
        return cluster, [], cluster, bool(cluster)
    cluster: list[Endpoint] = []
    has_any = False
    if sp.uses_cluster_endpoints:
        cluster = [e for e in endpoints if e.ready]
        if not cluster:
            cluster = [e for e in endpoints if e.serving and e.terminating]
        has_any = bool(cluster)
    local_ready = local_term = False
    for e in endpoints:
        if e.ready:
            has_any = True
            if e.node_name == node_name:
                local_ready = True
        elif e.serving and e.terminating:
            has_any = True
            if e.node_name == node_name:
                local_term = True
    local: list[Endpoint] = []
    if local_ready:
        local = [e for e in endpoints if e.ready and e.node_name == node_name]
    elif local_term:
        local = [e for e in endpoints
                 if e.serving and e.terminating and e.node_name == node_name]
    if not sp.uses_cluster_endpoints:
        return cluster, local, local, has_any
    if not local_term or local_ready:
        return cluster, local, cluster, has_any  # cluster ⊇ local
    merged = {e.text: e for e in cluster}
    merged.update((e.text, e) for e in local)
    return cluster, local, [merged[t] for t in sorted(merged)], has_any


def _endpoint_dispatch(out: list[str], chain: str, sp: ServicePort, eps: Sequence[Endpoint],
                       large: bool) -> None:
    """The SVC/SVL chain body after its masquerade rule: affinity checks, then the
    ``statistic`` cascade (probability 1/(n-i), the last rule unconditional)."""
    name = sp.name_string
    head = f"-A {chain} "
    secs = sp.session_affinity_seconds
    if secs is not None:
        for e in eps:
            c = "" if large else f'-m comment --comment "{name} -> {e.text}" '
            out.append(f"{head}{c}-m recent --name {e.chain} --rcheck --seconds {secs} --reap"
                       f" -j {e.chain}")
    last = len(eps) - 1
    for i, e in enumerate(eps):
        c = "" if large else f'-m comment --comment "{name} -> {e.text}" '
        if i < last:
            out.append(f"{head}{c}-m statistic --mode random --probability "
                       f"{probability(last + 1 - i)} -j {e.chain}")
        else:
            out.append(f"{head}{c}-j {e.chain}")


def render(ports: Iterable[ServicePort], endpoints: Mapping[PortKey, Sequence[Endpoint]],
           options: ProxyOptions, *, changed: Collection[str] | None = None,
           delete_chains: Iterable[str] = ()) -> Rendered:
    """Render kube-proxy's filter and nat tables for ``--noflush`` restore.

    * ``ports`` — every proxied service port (see :func:`kubeproxy_py.model.parse_services`);
      duplicates of one key keep the first.
    * ``endpoints`` — ``{PortKey: [Endpoint]}``, each list sorted by ``"ip:port"``.
    * ``changed`` — for a partial sync: ``"ns/name"`` of the Services whose per-service chains
      must be (re)written; the others' chains are left as they are in the kernel. ``None``
      writes everything. The top-level chains are always written whole.
    * ``delete_chains`` — stale per-service nat chains to flush and ``-X``.
    """
    # ~250,000 short-lived lists and strings for 10k services: the cyclic GC would walk
    # them many times over for nothing (nothing here makes cycles).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _render(ports, endpoints, options, changed, delete_chains)
    finally:
        if was_enabled:
            gc.enable()



class PortParts:
    """One service port's share of the tables: its rules in the shared chains and its own
    chains. ``blocks`` is ``None`` when the port's chains were not rendered (partial sync);
    ``active`` always lists the per-service nat chains the port uses."""

    __slots__ = ("sp", "f_nodeports", "f_services", "f_external", "f_firewall", "n_nodeports",
                 "n_services", "blocks", "active", "nat_rules", "no_local_int", "no_local_ext")

    def __init__(self, sp: ServicePort) -> None:
        self.sp = sp
        self.f_nodeports: list[str] = []
        self.f_services: list[str] = []
        self.f_external: list[str] = []
        self.f_firewall: list[str] = []
        self.n_nodeports: list[str] = []
        self.n_services: list[str] = []
        self.blocks: list[tuple[str, str]] | None = None  # (chain, its rules joined by "\n")
        self.active: list[str] = []
        self.nat_rules = 0  # rules in ``blocks``
        self.no_local_int = 0
        self.no_local_ext = 0


@dataclass(frozen=True)
class PortContext:
    """What :func:`render_port` needs besides the port: node settings and the cluster-wide
    large-cluster switch (which changes every KUBE-SEP chain when it flips)."""

    options: ProxyOptions
    large: bool
    if_local: str
    if_not_local: str


def port_context(options: ProxyOptions, large: bool) -> PortContext:
    if options.cluster_cidr:
        return PortContext(options, large, f"-s {options.cluster_cidr}",
                           f"! -s {options.cluster_cidr}")
    return PortContext(options, large, "", "")


def is_large(ports: Iterable[ServicePort], endpoints: Mapping[PortKey, Sequence[Endpoint]]
             ) -> bool:
    """Upstream's large-cluster mode: more than LARGE_CLUSTER_ENDPOINTS endpoints in all."""
    empty: tuple[Endpoint, ...] = ()
    return sum(len(endpoints.get(sp.key, empty)) for sp in ports) > LARGE_CLUSTER_ENDPOINTS


def render_port(sp: ServicePort, eps: Sequence[Endpoint], ctx: PortContext,
                write_chains: bool = True) -> PortParts:
    """Render one service port (see :func:`render`); ``write_chains=False`` leaves its own
    chains out, as a partial sync does for unchanged services."""
    o = ctx.options
    node = o.node_name
    large = ctx.large
    if_local, if_not_local = ctx.if_local, ctx.if_not_local
    parts = PortParts(sp)
    f_nodeports = parts.f_nodeports
    f_services = parts.f_services
    f_external = parts.f_external
    f_firewall = parts.f_firewall
    n_nodeports = parts.n_nodeports
    n_services = parts.n_services
    active = parts.active
    blocks: list[tuple[str, str]] = []
    nat_rules = 0
    no_local_int = no_local_ext = 0
    name = sp.name_string
    proto = sp.proto
    pm = f"-m {proto} -p {proto}"
    cluster, local, reachable, has_any = categorize(sp, eps, node)
    svc, svl, ext, fw = sp.svc_chain, sp.svl_chain, sp.ext_chain, sp.fw_chain
    uses_cluster = bool(cluster) and sp.uses_cluster_endpoints
    uses_local = bool(local) and sp.uses_local_endpoints

    internal_chain, has_internal = svc, has_any
    if sp.internal_policy_local:
        internal_chain = svl
        if not local:
            has_internal = False
    external_policy_chain, has_external = svc, has_any
    if sp.external_policy_local:
        external_policy_chain = svl
        if not local:
            has_external = False
    uses_ext = has_any and sp.externally_accessible
    lb_ips = sp.load_balancer_ips
    uses_fw = has_any and bool(lb_ips) and bool(sp.load_balancer_source_ranges)
    lb_chain = fw if uses_fw else ext

    int_target = ext_target = int_comment = ext_comment = ""
    if not has_any:
        int_target = ext_target = "REJECT"
        int_comment = ext_comment = f'"{name} has no endpoints"'
    else:
        if not has_internal:
            int_target, int_comment = "DROP", f'"{name} has no local endpoints"'
            no_local_int += 1
        if not has_external:
            ext_target, ext_comment = "DROP", f'"{name} has no local endpoints"'
            no_local_ext += 1

    port = sp.port
    cluster_match = (f'-m comment --comment "{name} cluster IP" {pm} -d {sp.cluster_ip}'
                     f" --dport {port}")
    if has_internal:
        n_services.append(f"-A KUBE-SERVICES {cluster_match} -j {internal_chain}")
    else:
        f_services.append(f"-A KUBE-SERVICES -m comment --comment {int_comment} {pm}"
                          f" -d {sp.cluster_ip} --dport {port} -j {int_target}")

    for ip in sp.external_ips:
        if has_any:
            n_services.append(f'-A KUBE-SERVICES -m comment --comment "{name} external IP"'
                              f" {pm} -d {ip} --dport {port} -j {ext}")
        if not has_external:
            f_external.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {ext_comment}"
                              f" {pm} -d {ip} --dport {port} -j {ext_target}")
    for ip in lb_ips:
        if has_any:
            n_services.append(f'-A KUBE-SERVICES -m comment --comment "{name} loadbalancer IP"'
                              f" {pm} -d {ip} --dport {port} -j {lb_chain}")
        if uses_fw:
            f_firewall.append(f'-A KUBE-PROXY-FIREWALL -m comment --comment "{name} traffic'
                              f' not accepted by {fw}" {pm} -d {ip} --dport {port} -j DROP')
    if not has_external:
        for ip in lb_ips:
            f_external.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {ext_comment}"
                              f" {pm} -d {ip} --dport {port} -j {ext_target}")
    if sp.node_port:
        if has_any:
            n_nodeports.append(f"-A KUBE-NODEPORTS -m comment --comment {name} {pm}"
                               f" --dport {sp.node_port} -j {ext}")
        if not has_external:
            f_external.append(f"-A KUBE-EXTERNAL-SERVICES -m comment --comment {ext_comment}"
                              f" -m addrtype --dst-type LOCAL {pm} --dport {sp.node_port}"
                              f" -j {ext_target}")
    if sp.health_check_node_port:
        f_nodeports.append(f'-A KUBE-NODEPORTS -m comment --comment "{name} health check'
                           f' node port" -m tcp -p tcp --dport {sp.health_check_node_port}'
                           " -j ACCEPT")

    # Per-service chains. Their names are active even when a partial sync skips them.
    if uses_ext:
        active.append(ext)
    if uses_fw:
        active.append(fw)
    if uses_cluster:
        active.append(svc)
    if uses_local:
        active.append(svl)
    for e in reachable:
        active.append(e.chain)
    parts.no_local_int, parts.no_local_ext = no_local_int, no_local_ext
    if not write_chains:
        return parts

    svc_lines: list[str] = []
    svl_lines: list[str] = []
    if has_internal:
        masq_into = svl_lines if internal_chain == svl else svc_lines
        if o.masquerade_all:
            masq_into.append(f"-A {internal_chain} {cluster_match} -j {_MASQ}")
        elif if_not_local:
            masq_into.append(f"-A {internal_chain} {cluster_match} {if_not_local} -j {_MASQ}")

    if uses_ext:
        lines = []
        if not sp.external_policy_local:
            lines.append(f'-A {ext} -m comment --comment "masquerade traffic for {name}'
                         f' external destinations" -j {_MASQ}')
        else:
            if if_local:
                lines.append(f'-A {ext} -m comment --comment "pod traffic for {name} external'
                             f' destinations" {if_local} -j {svc}')
            lines.append(f'-A {ext} -m comment --comment "masquerade LOCAL traffic for {name}'
                         f' external destinations" -m addrtype --src-type LOCAL -j {_MASQ}')
            lines.append(f'-A {ext} -m comment --comment "route LOCAL traffic for {name}'
                         f' external destinations" -m addrtype --src-type LOCAL -j {svc}')
        if has_external:
            lines.append(f"-A {ext} -j {external_policy_chain}")
        blocks.append((ext, "\n".join(lines)))
        nat_rules += len(lines)

    if uses_fw:
        head = f'-A {fw} -m comment --comment "{name} loadbalancer IP"'
        lines = []
        allow_node = False
        node_ip = o.node_ip
        for cidr in sp.load_balancer_source_ranges:
            lines.append(f"{head} -s {cidr} -j {ext}")
            if node_ip and _cidr_contains(cidr, node_ip):
                allow_node = True
        if allow_node:
            lines.extend(f"{head} -s {ip} -j {ext}" for ip in lb_ips)
        lines.append(f'-A {fw} -m comment --comment "other traffic to {name} will be dropped'
                     ' by KUBE-PROXY-FIREWALL"')
        blocks.append((fw, "\n".join(lines)))
        nat_rules += len(lines)

    if uses_cluster:
        _endpoint_dispatch(svc_lines, svc, sp, cluster, large)
        blocks.append((svc, "\n".join(svc_lines)))
        nat_rules += len(svc_lines)
    if uses_local:
        _endpoint_dispatch(svl_lines, svl, sp, local, large)
        blocks.append((svl, "\n".join(svl_lines)))
        nat_rules += len(svl_lines)

    cm = "" if large else f"-m comment --comment {name} "
    affinity = sp.session_affinity_seconds is not None
    for e in reachable:
        c = e.chain
        recent = f"-m recent --name {c} --set " if affinity else ""
        blocks.append((c, f"-A {c} {cm}-s {e.ip} -j {_MASQ}\n"
                           f"-A {c} {cm}{recent}{pm} -j DNAT --to-destination {e.text}"))
    nat_rules += 2 * len(reachable)
    parts.blocks = blocks
    parts.nat_rules = nat_rules
    return parts


def _render(ports: Iterable[ServicePort], endpoints: Mapping[PortKey, Sequence[Endpoint]],
            options: ProxyOptions, changed: Collection[str] | None,
            delete_chains: Iterable[str]) -> Rendered:
    # Services sorted by "ns/name" then port name, so KUBE-SERVICES comes out in the order
    # upstream's tests sort it (the name string, not the (ns, name) tuple).
    by_key: dict[PortKey, ServicePort] = {}
    for sp in ports:
        by_key.setdefault(sp.key, sp)
    ordered = sorted(by_key.values(), key=port_order)
    empty: tuple[Endpoint, ...] = ()
    large = is_large(ordered, endpoints)
    ctx = port_context(options, large)
    parts = [render_port(sp, endpoints.get(sp.key, empty), ctx,
                         changed is None or sp.service_name in changed) for sp in ordered]
    top = render_top(parts, options)
    blocks = list(top.nat_blocks)
    nat_rules = top.nat_rules
    active: set[str] = set()
    no_local_int = no_local_ext = 0
    for p in parts:
        active.update(p.active)
        no_local_int += p.no_local_int
        no_local_ext += p.no_local_ext
        if p.blocks is not None:
            blocks += p.blocks
            nat_rules += p.nat_rules
    deleted = sorted(set(delete_chains))
    clash = active.intersection(deleted)
    if clash:
        raise ValueError(f"chains both in use and to be deleted: {sorted(clash)}")
    blocks.extend((c, "") for c in deleted)
    blocks.sort(key=itemgetter(0))
    chains = [c for c, _ in blocks]
    out = [top.filter_text, "*nat", ":KUBE-NODEPORTS - [0:0]", ":KUBE-SERVICES - [0:0]"]
    if chains:
        out.append(":" + " - [0:0]\n:".join(chains) + " - [0:0]")
    out += top.nat_lines
    out += [text for _, text in blocks if text]
    out += [f"-X {c}" for c in deleted]
    out.append("COMMIT\n")
    return Rendered(text="\n".join(out), nat_chains=frozenset(active),
                    filter_rules=top.filter_rules, nat_rules=nat_rules, large_cluster=large,
                    services_without_local_endpoints_internal=no_local_int,
                    services_without_local_endpoints_external=no_local_ext)


def port_order(sp: ServicePort) -> tuple[str, str, str]:
    """The order of service ports in KUBE-SERVICES and friends."""
    return (sp.service_name, sp.port_name, sp.protocol)


@dataclass(frozen=True)
class TopLevel:
    """The shared chains: ``filter_text`` is the whole ``*filter`` section (without a
    trailing newline); ``nat_lines`` the KUBE-NODEPORTS and KUBE-SERVICES rules;
    ``nat_blocks`` KUBE-POSTROUTING and KUBE-MARK-MASQ as ``(chain, rules)``;
    ``nat_rules`` counts the rules of both."""

    filter_text: str
    nat_lines: list[str]
    nat_blocks: tuple[tuple[str, str], ...]
    filter_rules: int
    nat_rules: int


def render_top(parts: Iterable[PortParts], options: ProxyOptions) -> TopLevel:
    """Assemble the shared chains from the ports' parts, given in :func:`port_order`."""
    o = options
    mark = o.masquerade_mark
    v6 = o.ip_family == 6
    f_nodeports: list[str] = []
    f_services: list[str] = []
    f_external: list[str] = []
    f_firewall: list[str] = []
    n_nodeports: list[str] = []
    n_services: list[str] = []
    for p in parts:
        if p.f_nodeports:
            f_nodeports += p.f_nodeports
        if p.f_services:
            f_services += p.f_services
        if p.f_external:
            f_external += p.f_external
        if p.f_firewall:
            f_firewall += p.f_firewall
        if p.n_nodeports:
            n_nodeports += p.n_nodeports
        n_services += p.n_services
    # Top-level nat chains.
    blocks = [(names.POSTROUTING, "\n".join([
        f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
        " -j MASQUERADE" + (" --random-fully" if o.random_fully else ""),
    ]))]
    blocks.append((names.MARK_MASQ, f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}"))
    nat_rules = 4

    localhost_nodeports = o.localhost_nodeports and not v6 and (
        o.nodeport_ips is None or any(_is_loopback(ip) for ip in o.nodeport_ips))
    if o.nodeport_ips is None:
        dst = "-m addrtype --dst-type LOCAL"
        if v6:
            dst += " ! -d ::1/128"
        elif not localhost_nodeports:
            dst += " ! -d 127.0.0.0/8"
        n_services.append(f"-A KUBE-SERVICES -m comment --comment {_NODEPORTS_LAST} {dst}"
                          " -j KUBE-NODEPORTS")
    else:
        for ip in o.nodeport_ips:
            if _is_loopback(ip) and (v6 or not localhost_nodeports):
                log.error("--nodeport-addresses includes %s but localhost NodePorts are off", ip)
                continue
            n_services.append(f"-A KUBE-SERVICES -m comment --comment {_NODEPORTS_LAST} -d {ip}"
                              " -j KUBE-NODEPORTS")

    f_forward = []
    if not o.conntrack_tcp_liberal:
        f_forward.append("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP")
    f_forward.append('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules"'
                     f" -m mark --mark {mark}/{mark} -j ACCEPT")
    f_forward.append('-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule"'
                     " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT")

    out: list[str] = ["*filter", ":KUBE-NODEPORTS - [0:0]", ":KUBE-SERVICES - [0:0]",
                      ":KUBE-EXTERNAL-SERVICES - [0:0]"]
    f_kubelet: list[str] = []
    if localhost_nodeports:
        out.append(":KUBE-FIREWALL - [0:0]")
        f_kubelet.append('-A KUBE-FIREWALL -m comment --comment "block incoming localnet'
                         ' connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate'
                         " RELATED,ESTABLISHED,DNAT -j DROP")
    out += [":KUBE-FORWARD - [0:0]", ":KUBE-PROXY-FIREWALL - [0:0]"]
    for part in (f_nodeports, f_services, f_external, f_kubelet, f_forward, f_firewall):
        out += part
    out.append("COMMIT")
    filter_rules = (len(f_nodeports) + len(f_services) + len(f_external) + len(f_kubelet)
                    + len(f_forward) + len(f_firewall))

    nat_rules += len(n_nodeports) + len(n_services)
    return TopLevel(filter_text="\n".join(out), nat_lines=n_nodeports + n_services,
                    nat_blocks=tuple(blocks), filter_rules=filter_rules, nat_rules=nat_rules)


def render_objects(services: Iterable[Mapping[str, Any]],
                   endpoint_slices: Iterable[Mapping[str, Any]], options: ProxyOptions,
                   **kwargs: Any) -> Rendered:
    """Parse v1 Service and discovery.k8s.io/v1 EndpointSlice dicts, then :func:`render`."""
    fam = options.ip_family
    return render(parse_services(services, ip_family=fam),
                  parse_endpoint_slices(endpoint_slices, ip_family=fam), options, **kwargs)


def _is_loopback(ip: str) -> bool:
    return ip.startswith("127.") or ip == "::1"


def _cidr_contains(cidr: str, ip: str) -> bool:
    import ipaddress  # only reached for LB services with source ranges
    try:
        return ipaddress.ip_address(ip) in ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False


# (table, built-in chain, rule spec): the jumps into kube-proxy's chains, which the applier
# inserts once (upstream's iptablesJumpChains, in its order).
JUMP_RULES: tuple[tuple[str, str, str], ...] = tuple(
    (table, src, " ".join(filter(None, (extra, f'-m comment --comment "{comment}"',
                                         f"-j {dst}"))))
    for table, dst, src, comment, extra in (
        ("filter", "KUBE-EXTERNAL-SERVICES", "INPUT",
         "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"),
        ("filter", "KUBE-EXTERNAL-SERVICES", "FORWARD",
         "kubernetes externally-visible service portals", "-m conntrack --ctstate NEW"),
        ("filter", "KUBE-NODEPORTS", "INPUT", "kubernetes health check service ports", ""),
        ("filter", "KUBE-SERVICES", "FORWARD", "kubernetes service portals",
         "-m conntrack --ctstate NEW"),
        ("filter", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals",
         "-m conntrack --ctstate NEW"),
        ("filter", "KUBE-FORWARD", "FORWARD", "kubernetes forwarding rules", ""),
        ("filter", "KUBE-PROXY-FIREWALL", "INPUT", "kubernetes load balancer firewall",
         "-m conntrack --ctstate NEW"),
        ("filter", "KUBE-PROXY-FIREWALL", "OUTPUT", "kubernetes load balancer firewall",
         "-m conntrack --ctstate NEW"),
        ("filter", "KUBE-PROXY-FIREWALL", "FORWARD", "kubernetes load balancer firewall",
         "-m conntrack --ctstate NEW"),
        ("nat", "KUBE-SERVICES", "OUTPUT", "kubernetes service portals", ""),
        ("nat", "KUBE-SERVICES", "PREROUTING", "kubernetes service portals", ""),
        ("nat", "KUBE-POSTROUTING", "POSTROUTING", "kubernetes postrouting rules", ""),
    ))


def jump_rules(options: ProxyOptions | None = None) -> list[tuple[str, str, str]]:
    """The jumps from built-in chains, plus kubelet's KUBE-FIREWALL ones when localhost
    NodePorts are on (kube-proxy then owns that chain's anti-martian rule too)."""
    rules = list(JUMP_RULES)
    o = options or ProxyOptions()
    if o.localhost_nodeports and o.ip_family == 4:
        rules += [("filter", "INPUT", "-j KUBE-FIREWALL"), ("filter", "OUTPUT", "-j KUBE-FIREWALL")]
    return rules
