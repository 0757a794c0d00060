"""Golden tests of kube-proxy's iptables renderer, written from upstream's semantics.

Every case compares the whole restore payload. ``payload()`` wraps a case's own rules in
the fixed skeleton (KUBE-FORWARD, KUBE-POSTROUTING, KUBE-MARK-MASQ, the NodePort tail jump);
the first case spells the whole payload out literally, so the skeleton is checked too.
Names are upstream's (see test_names.py for the vectors).
"""
from __future__ import annotations

import random

import pytest

from kubeproxy_py.iptables import names
from kubeproxy_py.iptables.render import jump_rules, probability, render, render_objects
from kubeproxy_py.model import ProxyOptions, parse_services

OPTS = ProxyOptions(node_name="node1", cluster_cidr="10.0.0.0/8", random_fully=False)
P80 = [{"name": "p80", "port": 80, "protocol": "TCP"}]
SVC1 = "KUBE-SVC-XPGD46QRK7WJZT7O"
SVL1 = "KUBE-SVL-XPGD46QRK7WJZT7O"
EXT1 = "KUBE-EXT-XPGD46QRK7WJZT7O"
FW1 = "KUBE-FW-XPGD46QRK7WJZT7O"
NP_TAIL = ('-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must'
           ' be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS')
CLUSTER_IP1 = '-m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80'


def service(ns="ns1", name="svc1", ip="172.30.0.41", ports=P80, status=None, **spec):
    d = {"metadata": {"namespace": ns, "name": name},
         "spec": {"clusterIP": ip, "ports": ports, **spec}}
    if status:
        d["status"] = status
    return d


def ep(ip, node="node2", **conds):
    return {"addresses": [ip], "nodeName": node, "conditions": conds or {"ready": True}}


def eslice(*eps, ns="ns1", svc="svc1", ports=({"name": "p80", "port": 80, "protocol": "TCP"},),
           name=None):
    return {"metadata": {"namespace": ns, "name": name or f"{svc}-abc",
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4", "ports": list(ports), "endpoints": list(eps)}


def sep(ip, port=80, pname="ns1/svc1:p80"):
    return names.endpoint_chain(pname, "tcp", f"{ip}:{port}")


def sep_rules(ip, port=80, pname="ns1/svc1:p80", comment=True, extra=""):
    c = sep(ip, port, pname)
    cm = f"-m comment --comment {pname} " if comment else ""
    return [f"-A {c} {cm}-s {ip} -j KUBE-MARK-MASQ",
            f"-A {c} {cm}{extra}-m tcp -p tcp -j DNAT --to-destination {ip}:{port}"]


def payload(*, f_nodeports=(), f_services=(), f_external=(), f_firewall=(), n_nodeports=(),
            n_services=(), chains=None, np_tail=NP_TAIL, kubelet_fw=True, mark="0x4000",
            masq_suffix=""):
    """The full restore text around a case's rules. ``chains``: {nat chain: [rules]}."""
    chains = dict(chains or {})
    chains["KUBE-MARK-MASQ"] = [f"-A KUBE-MARK-MASQ -j MARK --or-mark {mark}"]
    chains["KUBE-POSTROUTING"] = [
        f"-A KUBE-POSTROUTING -m mark ! --mark {mark}/{mark} -j RETURN",
        f"-A KUBE-POSTROUTING -j MARK --xor-mark {mark}",
        '-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT"'
        " -j MASQUERADE" + masq_suffix]
    lines = ["*filter", ":KUBE-NODEPORTS - [0:0]", ":KUBE-SERVICES - [0:0]",
             ":KUBE-EXTERNAL-SERVICES - [0:0]"]
    lines += [":KUBE-FIREWALL - [0:0]"] if kubelet_fw else []
    lines += [":KUBE-FORWARD - [0:0]", ":KUBE-PROXY-FIREWALL - [0:0]"]
    lines += [*f_nodeports, *f_services, *f_external]
    if kubelet_fw:
        lines.append('-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections"'
                     " -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate"
                     " RELATED,ESTABLISHED,DNAT -j DROP")
    lines += ["-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP",
              '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark'
              f" {mark}/{mark} -j ACCEPT",
              '-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule"'
              " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
              *f_firewall, "COMMIT",
              "*nat", ":KUBE-NODEPORTS - [0:0]", ":KUBE-SERVICES - [0:0]"]
    lines += [f":{c} - [0:0]" for c in sorted(chains)]
    lines += [*n_nodeports, *n_services, *([np_tail] if isinstance(np_tail, str) else np_tail)]
    for c in sorted(chains):
        lines += chains[c]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


GOLDEN_ONE_ENDPOINT = """\
*filter
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-PROXY-FIREWALL - [0:0]
-A KUBE-FIREWALL -m comment --comment "block incoming localnet connections" -d 127.0.0.0/8 ! -s 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding rules" -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m comment --comment "kubernetes forwarding conntrack rule" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
COMMIT
*nat
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SEP-SXIVWICOYRO3J4NJ - [0:0]
:KUBE-SVC-XPGD46QRK7WJZT7O - [0:0]
-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j KUBE-SVC-XPGD46QRK7WJZT7O
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -s 10.180.0.1 -j KUBE-MARK-MASQ
-A KUBE-SEP-SXIVWICOYRO3J4NJ -m comment --comment ns1/svc1:p80 -m tcp -p tcp -j DNAT --to-destination 10.180.0.1:80
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 cluster IP" -m tcp -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ
-A KUBE-SVC-XPGD46QRK7WJZT7O -m comment --comment "ns1/svc1:p80 -> 10.180.0.1:80" -j KUBE-SEP-SXIVWICOYRO3J4NJ
COMMIT
"""


def _svc_masq(chain=SVC1, suffix=" ! -s 10.0.0.0/8"):
    return f"-A {chain} {CLUSTER_IP1}{suffix} -j KUBE-MARK-MASQ"


def _dispatch(chain, ips, port=80, pname="ns1/svc1:p80"):
    n = len(ips)
    out = []
    for i, ip in enumerate(ips):
        stat = (f"-m statistic --mode random --probability {1 / (n - i):.10f} "
                if i < n - 1 else "")
        out.append(f'-A {chain} -m comment --comment "{pname} -> {ip}:{port}" {stat}'
                   f"-j {sep(ip, port, pname)}")
    return out


def _np_ext(chain_target):
    return (f"-A KUBE-NODEPORTS -m comment --comment ns1/svc1:p80 -m tcp -p tcp --dport 3001"
            f" -j {chain_target}")


CASES = [
    pytest.param(
        [service()], [eslice(ep("10.180.0.1"))], OPTS, GOLDEN_ONE_ENDPOINT, id="clusterip-1-endpoint"),
    pytest.param(
        # "10.180.0.10:80" sorts before "10.180.0.2:80": upstream sorts the text.
        [service()], [eslice(ep("10.180.0.2"), ep("10.180.0.10"), ep("10.180.0.3"))], OPTS,
        payload(n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}"], chains={
            SVC1: [_svc_masq(),
                   f'-A {SVC1} -m comment --comment "ns1/svc1:p80 -> 10.180.0.10:80" -m statistic'
                   f" --mode random --probability 0.3333333333 -j {sep('10.180.0.10')}",
                   f'-A {SVC1} -m comment --comment "ns1/svc1:p80 -> 10.180.0.2:80" -m statistic'
                   f" --mode random --probability 0.5000000000 -j {sep('10.180.0.2')}",
                   f'-A {SVC1} -m comment --comment "ns1/svc1:p80 -> 10.180.0.3:80"'
                   f" -j {sep('10.180.0.3')}"],
            sep("10.180.0.10"): sep_rules("10.180.0.10"),
            sep("10.180.0.2"): sep_rules("10.180.0.2"),
            sep("10.180.0.3"): sep_rules("10.180.0.3")}),
        id="clusterip-3-endpoints"),
    pytest.param(
        # Two named ports resolved to different target ports; the slice names them.
        [service(ports=[{"name": "http", "port": 80, "protocol": "TCP"},
                        {"name": "dns", "port": 53, "protocol": "UDP"}])],
        [eslice(ep("10.180.0.1"), ports=[{"name": "http", "port": 8080, "protocol": "TCP"},
                                         {"name": "dns", "port": 5353, "protocol": "UDP"}])],
        OPTS, "named-ports", id="named-ports"),
    pytest.param(
        [service(type="NodePort", ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
                 externalIPs=["192.168.99.11"])], [], OPTS,
        payload(
            f_services=['-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no endpoints"'
                        " -m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT"],
            f_external=['-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1:p80 has no'
                        ' endpoints" -m tcp -p tcp -d 192.168.99.11 --dport 80 -j REJECT',
                        '-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1:p80 has no'
                        ' endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 3001'
                        " -j REJECT"]),
        id="no-endpoints-reject"),
    pytest.param(
        [service(type="NodePort", ports=[{"name": "p80", "port": 80, "nodePort": 3001}])],
        [eslice(ep("10.180.0.1"))], OPTS,
        payload(n_nodeports=[_np_ext(EXT1)],
                n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}"], chains={
                    EXT1: [f'-A {EXT1} -m comment --comment "masquerade traffic for ns1/svc1:p80'
                           ' external destinations" -j KUBE-MARK-MASQ', f"-A {EXT1} -j {SVC1}"],
                    SVC1: [_svc_masq(), *_dispatch(SVC1, ["10.180.0.1"])],
                    sep("10.180.0.1"): sep_rules("10.180.0.1")}),
        id="nodeport"),
    pytest.param(
        [service(externalIPs=["192.168.99.11"])], [eslice(ep("10.180.0.1"))], OPTS,
        payload(n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}",
                            '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 external IP"'
                            f" -m tcp -p tcp -d 192.168.99.11 --dport 80 -j {EXT1}"], chains={
                    EXT1: [f'-A {EXT1} -m comment --comment "masquerade traffic for ns1/svc1:p80'
                           ' external destinations" -j KUBE-MARK-MASQ', f"-A {EXT1} -j {SVC1}"],
                    SVC1: [_svc_masq(), *_dispatch(SVC1, ["10.180.0.1"])],
                    sep("10.180.0.1"): sep_rules("10.180.0.1")}),
        id="external-ip"),
    pytest.param(
        [service(type="LoadBalancer", ports=[{"name": "p80", "port": 80, "nodePort": 3001}],
                 loadBalancerSourceRanges=["203.0.113.0/25", " 192.168.0.0/24 "],
                 status={"loadBalancer": {"ingress": [{"ip": "1.2.3.4"}]}})],
        [eslice(ep("10.180.0.1"))],
        ProxyOptions(node_name="node1", cluster_cidr="10.0.0.0/8", random_fully=False,
                     node_ip="192.168.0.2"),
        payload(
            f_firewall=['-A KUBE-PROXY-FIREWALL -m comment --comment "ns1/svc1:p80 traffic not'
                        f' accepted by {FW1}" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j DROP'],
            n_nodeports=[_np_ext(EXT1)],
            n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}",
                        '-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 loadbalancer IP"'
                        f" -m tcp -p tcp -d 1.2.3.4 --dport 80 -j {FW1}"],
            chains={
                EXT1: [f'-A {EXT1} -m comment --comment "masquerade traffic for ns1/svc1:p80'
                       ' external destinations" -j KUBE-MARK-MASQ', f"-A {EXT1} -j {SVC1}"],
                FW1: [f'-A {FW1} -m comment --comment "ns1/svc1:p80 loadbalancer IP"'
                      f" -s 203.0.113.0/25 -j {EXT1}",
                      f'-A {FW1} -m comment --comment "ns1/svc1:p80 loadbalancer IP"'
                      f" -s 192.168.0.0/24 -j {EXT1}",
                      # the node's own address is in a range: let the node reach the LB IP
                      f'-A {FW1} -m comment --comment "ns1/svc1:p80 loadbalancer IP"'
                      f" -s 1.2.3.4 -j {EXT1}",
                      f'-A {FW1} -m comment --comment "other traffic to ns1/svc1:p80 will be'
                      ' dropped by KUBE-PROXY-FIREWALL"'],
                SVC1: [_svc_masq(), *_dispatch(SVC1, ["10.180.0.1"])],
                sep("10.180.0.1"): sep_rules("10.180.0.1")}),
        id="loadbalancer-source-ranges"),
    pytest.param(
        [service(sessionAffinity="ClientIP",
                 sessionAffinityConfig={"clientIP": {"timeoutSeconds": 300}})],
        [eslice(ep("10.180.0.1"), ep("10.180.0.2"))], OPTS,
        payload(n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}"], chains={
            SVC1: [_svc_masq(),
                   *(f'-A {SVC1} -m comment --comment "ns1/svc1:p80 -> {ip}:80" -m recent --name'
                     f" {sep(ip)} --rcheck --seconds 300 --reap -j {sep(ip)}"
                     for ip in ("10.180.0.1", "10.180.0.2")),
                   *_dispatch(SVC1, ["10.180.0.1", "10.180.0.2"])],
            **{sep(ip): sep_rules(ip, extra=f"-m recent --name {sep(ip)} --set ")
               for ip in ("10.180.0.1", "10.180.0.2")}}),
        id="session-affinity-clientip"),
    pytest.param(
        # externalTrafficPolicy Local: EXT short-circuits pod and host traffic to SVC, the
        # rest goes to SVL (local endpoints only, no masquerade); health check port accepted.
        [service(type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=30000,
                 ports=[{"name": "p80", "port": 80, "nodePort": 3001}])],
        [eslice(ep("10.180.0.1", node="node1"), ep("10.180.0.2", node="node2"))], OPTS,
        payload(
            f_nodeports=['-A KUBE-NODEPORTS -m comment --comment "ns1/svc1:p80 health check node'
                         ' port" -m tcp -p tcp --dport 30000 -j ACCEPT'],
            n_nodeports=[_np_ext(EXT1)],
            n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}"],
            chains={
                EXT1: [f'-A {EXT1} -m comment --comment "pod traffic for ns1/svc1:p80 external'
                       f' destinations" -s 10.0.0.0/8 -j {SVC1}',
                       f'-A {EXT1} -m comment --comment "masquerade LOCAL traffic for'
                       ' ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL'
                       " -j KUBE-MARK-MASQ",
                       f'-A {EXT1} -m comment --comment "route LOCAL traffic for ns1/svc1:p80'
                       f' external destinations" -m addrtype --src-type LOCAL -j {SVC1}',
                       f"-A {EXT1} -j {SVL1}"],
                SVC1: [_svc_masq(), *_dispatch(SVC1, ["10.180.0.1", "10.180.0.2"])],
                SVL1: _dispatch(SVL1, ["10.180.0.1"]),
                sep("10.180.0.1"): sep_rules("10.180.0.1"),
                sep("10.180.0.2"): sep_rules("10.180.0.2")}),
        id="external-traffic-policy-local"),
    pytest.param(
        # ...and with no endpoint on this node: outside traffic is dropped in filter, the
        # EXT chain keeps only the short-circuits.
        [service(type="NodePort", externalTrafficPolicy="Local",
                 ports=[{"name": "p80", "port": 80, "nodePort": 3001}])],
        [eslice(ep("10.180.0.2", node="node2"))], OPTS,
        payload(
            f_external=['-A KUBE-EXTERNAL-SERVICES -m comment --comment "ns1/svc1:p80 has no'
                        ' local endpoints" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport'
                        " 3001 -j DROP"],
            n_nodeports=[_np_ext(EXT1)],
            n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}"],
            chains={
                EXT1: [f'-A {EXT1} -m comment --comment "pod traffic for ns1/svc1:p80 external'
                       f' destinations" -s 10.0.0.0/8 -j {SVC1}',
                       f'-A {EXT1} -m comment --comment "masquerade LOCAL traffic for'
                       ' ns1/svc1:p80 external destinations" -m addrtype --src-type LOCAL'
                       " -j KUBE-MARK-MASQ",
                       f'-A {EXT1} -m comment --comment "route LOCAL traffic for ns1/svc1:p80'
                       f' external destinations" -m addrtype --src-type LOCAL -j {SVC1}'],
                SVC1: [_svc_masq(), *_dispatch(SVC1, ["10.180.0.2"])],
                sep("10.180.0.2"): sep_rules("10.180.0.2")}),
        id="external-traffic-policy-local-no-local-endpoints"),
    pytest.param(
        [service(internalTrafficPolicy="Local")],
        [eslice(ep("10.180.0.1", node="node1"), ep("10.180.0.2", node="node2"))], OPTS,
        payload(n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVL1}"], chains={
            SVL1: [_svc_masq(SVL1), *_dispatch(SVL1, ["10.180.0.1"])],
            sep("10.180.0.1"): sep_rules("10.180.0.1")}),
        id="internal-traffic-policy-local"),
    pytest.param(
        [service(internalTrafficPolicy="Local")], [eslice(ep("10.180.0.2", node="node2"))], OPTS,
        payload(f_services=['-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no local'
                            ' endpoints" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j DROP']),
        id="internal-traffic-policy-local-no-local-endpoints"),
    pytest.param(
        [service()], [eslice(ep("10.180.0.1"))],
        ProxyOptions(node_name="node1", cluster_cidr="10.0.0.0/8", masquerade_all=True,
                     random_fully=False),
        payload(n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}"], chains={
            SVC1: [_svc_masq(suffix=""), *_dispatch(SVC1, ["10.180.0.1"])],
            sep("10.180.0.1"): sep_rules("10.180.0.1")}),
        id="masquerade-all"),
    pytest.param(
        # No --cluster-cidr: no local detector, so no off-cluster masquerade rule.
        [service()], [eslice(ep("10.180.0.1"))],
        ProxyOptions(node_name="node1", random_fully=False),
        payload(n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}"], chains={
            SVC1: _dispatch(SVC1, ["10.180.0.1"]),
            sep("10.180.0.1"): sep_rules("10.180.0.1")}),
        id="no-local-detector"),
    pytest.param(
        [service()], [eslice(ep("10.180.0.1"), ep("10.180.0.2", ready=False),
                             ep("10.180.0.3", ready=False, serving=True, terminating=True))],
        OPTS,
        payload(n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}"], chains={
            SVC1: [_svc_masq(), *_dispatch(SVC1, ["10.180.0.1"])],
            sep("10.180.0.1"): sep_rules("10.180.0.1")}),
        id="not-ready-and-terminating-excluded"),
    pytest.param(
        # No ready endpoint anywhere: serving+terminating ones are used; not-serving never.
        [service()], [eslice(ep("10.180.0.2", ready=False),
                             ep("10.180.0.3", ready=False, serving=True, terminating=True),
                             ep("10.180.0.4", ready=False, serving=False, terminating=True))],
        OPTS,
        payload(n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}"], chains={
            SVC1: [_svc_masq(), *_dispatch(SVC1, ["10.180.0.3"])],
            sep("10.180.0.3"): sep_rules("10.180.0.3")}),
        id="terminating-fallback"),
    pytest.param(
        [service()], [eslice(ep("10.180.0.2", ready=False))], OPTS,
        payload(f_services=['-A KUBE-SERVICES -m comment --comment "ns1/svc1:p80 has no'
                            ' endpoints" -m tcp -p tcp -d 172.30.0.41 --dport 80 -j REJECT']),
        id="only-not-ready-rejects"),
    pytest.param(
        # --nodeport-addresses resolved to addresses; localhost NodePorts off.
        [service()], [eslice(ep("10.180.0.1"))],
        ProxyOptions(node_name="node1", cluster_cidr="10.0.0.0/8", nodeport_ips=("192.168.0.2",),
                     localhost_nodeports=False, masquerade_bit=15),
        payload(n_services=[f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}"], chains={
            SVC1: [_svc_masq(), *_dispatch(SVC1, ["10.180.0.1"])],
            sep("10.180.0.1"): sep_rules("10.180.0.1")},
            np_tail=['-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE:'
                     ' this must be the last rule in this chain" -d 192.168.0.2 -j KUBE-NODEPORTS'],
            kubelet_fw=False, mark="0x8000", masq_suffix=" --random-fully"),
        id="nodeport-addresses-mark-bit-random-fully"),
]


def _named_ports_expected():
    http = "ns1/svc1:http"
    svc_http = names.service_chain(http, "tcp")
    svc_dns = names.service_chain("ns1/svc1:dns", "udp")
    sep_http = names.endpoint_chain(http, "tcp", "10.180.0.1:8080")
    sep_dns = names.endpoint_chain("ns1/svc1:dns", "udp", "10.180.0.1:5353")
    return payload(
        n_services=[
            '-A KUBE-SERVICES -m comment --comment "ns1/svc1:dns cluster IP" -m udp -p udp'
            f" -d 172.30.0.41 --dport 53 -j {svc_dns}",
            '-A KUBE-SERVICES -m comment --comment "ns1/svc1:http cluster IP" -m tcp -p tcp'
            f" -d 172.30.0.41 --dport 80 -j {svc_http}"],
        chains={
            svc_http: ['-A ' + svc_http + ' -m comment --comment "ns1/svc1:http cluster IP" -m tcp'
                       " -p tcp -d 172.30.0.41 --dport 80 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
                       f'-A {svc_http} -m comment --comment "ns1/svc1:http -> 10.180.0.1:8080"'
                       f" -j {sep_http}"],
            svc_dns: ['-A ' + svc_dns + ' -m comment --comment "ns1/svc1:dns cluster IP" -m udp'
                      " -p udp -d 172.30.0.41 --dport 53 ! -s 10.0.0.0/8 -j KUBE-MARK-MASQ",
                      f'-A {svc_dns} -m comment --comment "ns1/svc1:dns -> 10.180.0.1:5353"'
                      f" -j {sep_dns}"],
            sep_http: [f"-A {sep_http} -m comment --comment {http} -s 10.180.0.1 -j KUBE-MARK-MASQ",
                       f"-A {sep_http} -m comment --comment {http} -m tcp -p tcp -j DNAT"
                       " --to-destination 10.180.0.1:8080"],
            sep_dns: [f"-A {sep_dns} -m comment --comment ns1/svc1:dns -s 10.180.0.1"
                      " -j KUBE-MARK-MASQ",
                      f"-A {sep_dns} -m comment --comment ns1/svc1:dns -m udp -p udp -j DNAT"
                      " --to-destination 10.180.0.1:5353"]})


@pytest.mark.parametrize("services,slices,options,expected", CASES)
def test_golden(services, slices, options, expected):
    if expected == "named-ports":
        expected = _named_ports_expected()
    got = render_objects(services, slices, options).text
    assert got == expected, "\n" + got


def test_services_sorted_by_name_and_input_order_irrelevant():
    svcs = [service(ns=f"ns{i}", name=f"svc{i}", ip=f"172.30.0.{40 + i}") for i in range(1, 6)]
    svcs.append(service(ns="ns1-x", name="a", ip="172.30.1.1"))
    slices = [eslice(ep(f"10.180.0.{i}"), ns=f"ns{i}", svc=f"svc{i}") for i in range(1, 6)]
    slices.append(eslice(ep("10.180.1.1"), ns="ns1-x", svc="a"))
    first = render_objects(svcs, slices, OPTS).text
    random.Random(7).shuffle(svcs)
    random.Random(8).shuffle(slices)
    assert render_objects(svcs, slices, OPTS).text == first
    kube_services = [l for l in first.split("*nat")[1].splitlines()
                     if l.startswith("-A KUBE-SERVICES")]
    # "ns1-x/a" < "ns1/svc1" as strings ('-' < '/'), as upstream's test sorter orders them
    assert [l.split('"')[1].split(" ")[0] for l in kube_services[:-1]] == [
        "ns1-x/a:p80", "ns1/svc1:p80", "ns2/svc2:p80", "ns3/svc3:p80", "ns4/svc4:p80",
        "ns5/svc5:p80"]
    assert "must be the last rule" in kube_services[-1]
    chains = [l[1:].split(" ")[0] for l in first.split("*nat")[1].splitlines() if l.startswith(":")]
    assert chains[:2] == ["KUBE-NODEPORTS", "KUBE-SERVICES"] and chains[2:] == sorted(chains[2:])


def test_large_cluster_mode_drops_per_endpoint_comments():
    eps = [ep(f"10.180.{i // 250}.{i % 250 + 1}") for i in range(1001)]
    r = render_objects([service()], [eslice(*eps)], OPTS)
    assert r.large_cluster
    c = sep("10.180.0.1")
    assert f"-A {c} -s 10.180.0.1 -j KUBE-MARK-MASQ" in r.text.splitlines()
    # the last endpoint in "ip:port" text order gets the unconditional jump
    assert f"-A {SVC1} -j {sep('10.180.4.1')}" in r.text.splitlines()
    assert f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}" in r.text  # top-level comments stay
    assert r.nat_rules == r.text.split("*nat")[1].count("\n-A ")
    small = render_objects([service()], [eslice(*eps[:1000])], OPTS)
    assert not small.large_cluster


def test_partial_sync_writes_only_changed_services_chains():
    svcs = [service(), service(ns="ns2", name="svc2", ip="172.30.0.42")]
    slices = [eslice(ep("10.180.0.1")), eslice(ep("10.180.0.2"), ns="ns2", svc="svc2")]
    full = render_objects(svcs, slices, OPTS)
    part = render_objects(svcs, slices, OPTS, changed={"ns2/svc2"},
                          delete_chains=["KUBE-SEP-STALESTALESTALE1"])
    assert part.nat_chains == full.nat_chains == {SVC1, sep("10.180.0.1"),
                                                  names.service_chain("ns2/svc2:p80", "tcp"),
                                                  sep("10.180.0.2", pname="ns2/svc2:p80")}
    assert f":{SVC1} " not in part.text and f"-A {SVC1} " not in part.text
    assert f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVC1}" in part.text  # top level is whole
    assert ":KUBE-SEP-STALESTALESTALE1 - [0:0]" in part.text
    assert part.text.endswith("-X KUBE-SEP-STALESTALESTALE1\nCOMMIT\n")
    with pytest.raises(ValueError, match="in use"):
        render_objects(svcs, slices, OPTS, delete_chains=[SVC1])


def test_bad_service_is_skipped_and_others_render(caplog):
    bad = service(name="bad", ports=[{"name": "x", "port": 70000}])
    parsed = parse_services([bad, service(), service(name="hl", ip="None")])
    assert [p.name for p in parsed] == ["svc1"]
    assert "70000 is out of range" in caplog.text
    r = render(parsed, {}, OPTS)
    assert "ns1/svc1:p80 has no endpoints" in r.text


@pytest.mark.parametrize("spec,message", [
    ({"clusterIP": "10.0.0.300", "ports": P80}, "not an IP address"),
    ({"clusterIP": "10.0.0.1", "ports": [{"port": 80, "protocol": "ICMP"}]}, "unknown protocol"),
    ({"clusterIP": "10.0.0.1", "ports": [{"name": "a", "port": 80}, {"name": "a", "port": 81}]},
     "duplicate port"),
])
def test_parse_errors_are_clear(spec, message):
    from kubeproxy_py.model import service_ports
    with pytest.raises(ValueError, match=message):
        service_ports({"metadata": {"namespace": "ns", "name": "s"}, "spec": spec})


def test_duplicate_endpoint_across_slices_prefers_ready():
    slices = [eslice(ep("10.180.0.1", ready=False), name="a"), eslice(ep("10.180.0.1"), name="b")]
    r = render_objects([service()], slices, OPTS)
    assert r.text == GOLDEN_ONE_ENDPOINT


def test_probability_format_matches_go():
    assert [probability(n) for n in (1, 2, 3, 7)] == [
        "1.0000000000", "0.5000000000", "0.3333333333", "0.1428571429"]


def test_jump_rules_cover_builtin_entry_points():
    rules = jump_rules(OPTS)
    assert ("nat", "PREROUTING", '-m comment --comment "kubernetes service portals"'
            " -j KUBE-SERVICES") in rules
    assert ("filter", "INPUT", '-m conntrack --ctstate NEW -m comment --comment "kubernetes'
            ' externally-visible service portals" -j KUBE-EXTERNAL-SERVICES') in rules
    assert ("filter", "INPUT", "-j KUBE-FIREWALL") in rules
    assert ("filter", "INPUT", "-j KUBE-FIREWALL") not in jump_rules(
        ProxyOptions(localhost_nodeports=False))


def test_both_traffic_policies_local_still_write_the_cluster_chain():
    """With externalTrafficPolicy and internalTrafficPolicy both Local, the EXT chain's
    short-circuits jump to KUBE-SVC, so it must be written (upstream: UsesClusterEndpoints
    is true for an externally accessible port); every jump target must be declared, or the
    whole restore fails."""
    svc = service(type="NodePort", externalTrafficPolicy="Local", internalTrafficPolicy="Local",
                  ports=[{"name": "p80", "port": 80, "nodePort": 3001}])
    slices = [eslice(ep("10.180.0.1", node="node1"), ep("10.180.0.2", node="node2"))]
    text = render_objects([svc], slices, OPTS).text
    nat = text[text.index("*nat"):]
    declared = {line[1:].split()[0] for line in nat.splitlines() if line.startswith(":")}
    targets = {line.rsplit(" -j ", 1)[1].split()[0] for line in nat.splitlines()
               if line.startswith("-A ") and " -j KUBE-" in line}
    assert SVC1 in declared and SVL1 in declared and EXT1 in declared
    assert targets <= declared | {"KUBE-MARK-MASQ", "KUBE-POSTROUTING"}, targets - declared
    svc_rules = [line for line in nat.splitlines() if line.startswith(f"-A {SVC1} ")]
    assert any("10.180.0.2" in r or "-j KUBE-SEP-" in r for r in svc_rules)
    # ClusterIP traffic (internal, Local) still goes to the local endpoint only
    assert f"-A KUBE-SERVICES {CLUSTER_IP1} -j {SVL1}" in nat
