"""Typed inputs of kube-proxy's renderers, parsed from API objects as the API serves them.

A ``v1 Service`` becomes one :class:`ServicePort` per ``spec.ports`` entry; ``discovery.k8s.io/v1
EndpointSlice`` objects become :class:`Endpoint` lists keyed by :data:`PortKey` (namespace,
service, port name, protocol), the key upstream calls a ``ServicePortName``. Parsing does the
work upstream does when an object arrives (``newServiceInfo`` / ``newEndpointInfo``): it
normalises addresses and computes the iptables chain names once, so a sync only formats text.

Parsing is strict about what it keeps: a malformed Service raises :class:`ValueError` naming
the object and the field; :func:`parse_services` logs it and skips it, so one bad Service never
stops the others from being rendered.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

from kubeproxy_py.iptables import names

log = logging.getLogger(__name__)

PROTOCOLS = ("TCP", "UDP", "SCTP")
DEFAULT_STICKY_SECONDS = 10800  # v1.DefaultClientIPServiceAffinitySeconds
SERVICE_NAME_LABEL = "kubernetes.io/service-name"

# (namespace, service name, port name, protocol): upstream's ServicePortName.
PortKey = tuple[str, str, str, str]


def port_name_string(namespace: str, name: str, port_name: str) -> str:
    """``"ns/name:port"``, or ``"ns/name"`` for an unnamed port (ServicePortName.String())."""
    return f"{namespace}/{name}:{port_name}" if port_name else f"{namespace}/{name}"


def join_host_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    """One port of one Service, with everything the iptables renderer needs.

    ``session_affinity_seconds`` is ``None`` unless ``sessionAffinity: ClientIP``. The
    ``*_local`` flags are already reduced as upstream reduces them: ``external_policy_local``
    is only true for externally reachable Services.
    """

    namespace: str
    name: str
    port_name: str
    protocol: str  # "TCP" | "UDP" | "SCTP"
    cluster_ip: str
    port: int
    node_port: int = 0
    external_ips: tuple[str, ...] = ()
    load_balancer_ips: tuple[str, ...] = ()
    load_balancer_source_ranges: tuple[str, ...] = ()
    session_affinity_seconds: int | None = None
    external_policy_local: bool = False
    internal_policy_local: bool = False
    health_check_node_port: int = 0
    # Derived (computed in __post_init__).
    name_string: str = field(init=False, compare=False)
    proto: str = field(init=False, compare=False)  # lower-case protocol, as in rules
    svc_chain: str = field(init=False, compare=False)
    svl_chain: str = field(init=False, compare=False)
    ext_chain: str = field(init=False, compare=False)
    fw_chain: str = field(init=False, compare=False)
    key: PortKey = field(init=False, compare=False)
    service_name: str = field(init=False, compare=False)  # "ns/name"
    externally_accessible: bool = field(init=False, compare=False)
    # Upstream's UsesClusterEndpoints / UsesLocalEndpoints.
    uses_cluster_endpoints: bool = field(init=False, compare=False)
    uses_local_endpoints: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        s = port_name_string(self.namespace, self.name, self.port_name)
        proto = self.protocol.lower()
        h = names.port_proto_hash(s, proto)
        set_ = object.__setattr__
        set_(self, "name_string", s)
        set_(self, "proto", proto)
        set_(self, "svc_chain", names.SVC_PREFIX + h)
        set_(self, "svl_chain", names.SVL_PREFIX + h)
        set_(self, "ext_chain", names.EXT_PREFIX + h)
        set_(self, "fw_chain", names.FW_PREFIX + h)
        set_(self, "key", (self.namespace, self.name, self.port_name, self.protocol))
        set_(self, "service_name", f"{self.namespace}/{self.name}")
        accessible = bool(self.node_port or self.load_balancer_ips or self.external_ips)
        set_(self, "externally_accessible", accessible)
        # As upstream's UsesClusterEndpoints: an externally reachable port needs its cluster
        # chain even with externalTrafficPolicy Local — pod and node traffic to the external
        # destinations short-circuits to it.
        set_(self, "uses_cluster_endpoints", not self.internal_policy_local or accessible)
        set_(self, "uses_local_endpoints", self.internal_policy_local or (
            accessible and self.external_policy_local))

@dataclass(frozen=True, slots=True)
class Endpoint:
    """One address:port of an EndpointSlice for one service port.

    ``ready``/``serving``/``terminating`` follow the API defaults: a missing ``ready`` or
    ``serving`` means true, a missing ``terminating`` means false. ``chain`` is the KUBE-SEP
    chain, computed from the service port name, protocol and ``"ip:port"``.
    """

    ip: str
    port: int
    node_name: str = ""
    ready: bool = True
    serving: bool = True
    terminating: bool = False
    text: str = ""   # "ip:port" (brackets for IPv6)
    chain: str = ""

    @classmethod
    def for_port(cls, key: PortKey, ip: str, port: int, *, node_name: str = "",
                 ready: bool = True, serving: bool = True,
                 terminating: bool = False) -> "Endpoint":
        text = join_host_port(ip, port)
        chain = names.endpoint_chain(port_name_string(key[0], key[1], key[2]), key[3].lower(),
                                     text)
        return cls(ip, port, node_name, ready, serving, terminating, text, chain)


@dataclass(frozen=True)
class ProxyOptions:
    """Node-level settings (kube-proxy's flags and what it probed on the node).

    * ``cluster_cidr`` — the ``--cluster-cidr`` local-traffic detector; ``None`` disables it.
    * ``nodeport_ips`` — the node's addresses selected by ``--nodeport-addresses``, already
      resolved by the caller; ``None`` means every local address (``--dst-type LOCAL``).
    * ``node_ip`` — the node's primary address (lets the node reach LB IPs behind
      ``loadBalancerSourceRanges`` that contain it).
    * ``random_fully`` — the MASQUERADE rule gets ``--random-fully`` (iptables ≥ 1.6.2).
    * ``conntrack_tcp_liberal`` — ``nf_conntrack_tcp_be_liberal`` is set: no INVALID drop rule.
    """

    node_name: str = ""
    cluster_cidr: str | None = None
    masquerade_all: bool = False
    masquerade_bit: int = 14
    nodeport_ips: tuple[str, ...] | None = None
    node_ip: str | None = None
    localhost_nodeports: bool = True
    random_fully: bool = True
    conntrack_tcp_liberal: bool = False
    ip_family: int = 4

    @property
    def masquerade_mark(self) -> str:
        return hex(1 << self.masquerade_bit)


# --- parsing ------------------------------------------------------------------------------


def _family(ip: str) -> int:
    return 6 if ":" in ip else 4


def _ip(value: Any, what: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value).strip()))
    except ValueError:
        raise ValueError(f"{what}: {value!r} is not an IP address") from None


def _port(value: Any, what: str, *, allow_zero: bool = False) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what}: {value!r} is not an integer")
    if not (0 if allow_zero else 1) <= value <= 65535:
        raise ValueError(f"{what}: {value} is out of range 1-65535")
    return value


def service_ports(service: Mapping[str, Any], *, ip_family: int = 4) -> list[ServicePort]:
    """The :class:`ServicePort` list of one v1 Service dict; ``[]`` for headless and
    ExternalName Services (not proxied). Raises :class:`ValueError` on malformed input."""
    meta = service.get("metadata") or {}
    spec = service.get("spec") or {}
    ns, name = meta.get("namespace") or "default", meta.get("name")
    if not name:
        raise ValueError("Service without metadata.name")
    where = f"Service {ns}/{name}"
    svc_type = spec.get("type") or "ClusterIP"
    cluster_ip = spec.get("clusterIP") or ""
    if svc_type == "ExternalName" or cluster_ip in ("", "None"):
        return []
    cluster_ip = _ip(cluster_ip, f"{where}: spec.clusterIP")
    if _family(cluster_ip) != ip_family:
        for other in spec.get("clusterIPs") or ():
            other = _ip(other, f"{where}: spec.clusterIPs")
            if _family(other) == ip_family:
                cluster_ip = other
                break
        else:
            return []

    def fam(ips: Iterable[str]) -> tuple[str, ...]:
        return tuple(ip for ip in ips if _family(ip) == ip_family)

    external_ips = fam(_ip(ip, f"{where}: spec.externalIPs") for ip in spec.get("externalIPs") or ())
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or ()
    lb_ips = fam(_ip(i["ip"], f"{where}: status.loadBalancer.ingress")
                 for i in ingress if i.get("ip") and i.get("ipMode", "VIP") != "Proxy")
    ranges = []
    for cidr in spec.get("loadBalancerSourceRanges") or ():
        try:
            net = ipaddress.ip_network(str(cidr).strip(), strict=False)
        except ValueError:
            raise ValueError(f"{where}: spec.loadBalancerSourceRanges: {cidr!r} is not a CIDR") from None
        if net.version == ip_family:
            ranges.append(str(net))
    accessible_type = svc_type in ("NodePort", "LoadBalancer") or (
        svc_type == "ClusterIP" and bool(spec.get("externalIPs")))
    ext_local = accessible_type and spec.get("externalTrafficPolicy") in ("Local", "OnlyLocal")
    int_local = spec.get("internalTrafficPolicy") == "Local"
    sticky = None
    if spec.get("sessionAffinity") == "ClientIP":
        cfg = ((spec.get("sessionAffinityConfig") or {}).get("clientIP") or {})
        sticky = cfg.get("timeoutSeconds") or DEFAULT_STICKY_SECONDS
        if not isinstance(sticky, int) or not 0 < sticky <= 86400:
            raise ValueError(f"{where}: sessionAffinityConfig.clientIP.timeoutSeconds {sticky!r}"
                             " must be 1-86400")
    hc_port = 0
    if svc_type == "LoadBalancer" and ext_local:
        hc_port = _port(spec.get("healthCheckNodePort") or 0, f"{where}: spec.healthCheckNodePort",
                        allow_zero=True)

    out: list[ServicePort] = []
    seen: set[tuple[str, str]] = set()
    for i, p in enumerate(spec.get("ports") or ()):
        pwhere = f"{where}: spec.ports[{i}]"
        pname = p.get("name") or ""
        proto = p.get("protocol") or "TCP"
        if proto not in PROTOCOLS:
            raise ValueError(f"{pwhere}: unknown protocol {proto!r} (want one of {PROTOCOLS})")
        if (pname, proto) in seen:
            raise ValueError(f"{pwhere}: duplicate port name {pname!r}/{proto}")
        seen.add((pname, proto))
        port = _port(p.get("port"), f"{pwhere}.port")
        node_port = _port(p.get("nodePort") or 0, f"{pwhere}.nodePort", allow_zero=True)
        if svc_type not in ("NodePort", "LoadBalancer"):
            node_port = 0
        out.append(ServicePort(
            namespace=ns, name=name, port_name=pname, protocol=proto, cluster_ip=cluster_ip,
            port=port, node_port=node_port, external_ips=external_ips,
            load_balancer_ips=lb_ips, load_balancer_source_ranges=tuple(ranges),
            session_affinity_seconds=sticky, external_policy_local=bool(ext_local),
            internal_policy_local=int_local, health_check_node_port=hc_port))
    return out


def parse_services(services: Iterable[Mapping[str, Any]], *, ip_family: int = 4) -> list[ServicePort]:
    """All ports of all Services; a Service that fails to parse is logged and skipped."""
    out: list[ServicePort] = []
    for svc in services:
        try:
            out.extend(service_ports(svc, ip_family=ip_family))
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            meta = svc.get("metadata") or {} if isinstance(svc, Mapping) else {}
            log.error("skipping Service %s/%s: %s", meta.get("namespace"), meta.get("name"), e)
    return out


def _cond(conds: Mapping[str, Any], key: str, default: bool) -> bool:
    v = conds.get(key)
    return default if v is None else bool(v)


def parse_endpoint_slices(slices: Iterable[Mapping[str, Any]], *,
                          ip_family: int = 4) -> dict[PortKey, list[Endpoint]]:
    """Merge EndpointSlices into ``{PortKey: [Endpoint, ...]}``, each list sorted by
    ``"ip:port"`` text as upstream sorts it. Only the first address of an endpoint counts;
    slices of the other family, FQDN slices, ports without a number and slices without the
    ``kubernetes.io/service-name`` label are ignored. When two slices carry the same
    address:port, the ready copy wins."""
    want = "IPv6" if ip_family == 6 else "IPv4"
    merged: dict[PortKey, dict[str, Endpoint]] = {}
    for sl in slices:
        meta = sl.get("metadata") or {}
        svc = (meta.get("labels") or {}).get(SERVICE_NAME_LABEL)
        if not svc or sl.get("addressType", want) != want:
            continue
        ns = meta.get("namespace") or "default"
        for p in sl.get("ports") or ():
            num = p.get("port")
            if not isinstance(num, int) or isinstance(num, bool) or not 0 < num <= 65535:
                continue
            key = (ns, svc, p.get("name") or "", p.get("protocol") or "TCP")
            bucket = merged.setdefault(key, {})
            for e in sl.get("endpoints") or ():
                addrs = e.get("addresses") or ()
                if not addrs:
                    continue
                try:
                    ip = str(ipaddress.ip_address(addrs[0]))
                except ValueError:
                    log.warning("EndpointSlice %s/%s: bad address %r", ns,
                                meta.get("name"), addrs[0])
                    continue
                conds = e.get("conditions") or {}
                ready = _cond(conds, "ready", True)
                ep = Endpoint.for_port(key, ip, num, node_name=e.get("nodeName") or "",
                                       ready=ready, serving=_cond(conds, "serving", True),
                                       terminating=_cond(conds, "terminating", False))
                old = bucket.get(ep.text)
                if old is None or (ep.ready and not old.ready):
                    bucket[ep.text] = ep
    return {k: [v[t] for t in sorted(v)] for k, v in merged.items() if v}


def endpoints_total(ports: Sequence[ServicePort], endpoints: Mapping[PortKey, Sequence[Endpoint]]) -> int:
    return sum(len(endpoints.get(sp.key, ())) for sp in ports)
