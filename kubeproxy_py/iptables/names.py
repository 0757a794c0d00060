"""kube-proxy's chain names, computed exactly as upstream does so ``iptables-save`` output can
be compared with a real node rule by rule.

A service port's chains share one hash: the first 16 characters of
base32(sha256(``"ns/name:port"`` + lower-case protocol)) (``"ns/name"`` when the port has no
name). An endpoint chain hashes that string followed by ``"ip:port"``. Chain names stay
within iptables' 28-character limit (``KUBE-SEP-`` + 16 = 25).
"""
from __future__ import annotations

import base64
import hashlib

SERVICES = "KUBE-SERVICES"
EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
NODEPORTS = "KUBE-NODEPORTS"
POSTROUTING = "KUBE-POSTROUTING"
MARK_MASQ = "KUBE-MARK-MASQ"
FORWARD = "KUBE-FORWARD"
PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"
KUBELET_FIREWALL = "KUBE-FIREWALL"
PROXY_CANARY = "KUBE-PROXY-CANARY"

SVC_PREFIX = "KUBE-SVC-"
SVL_PREFIX = "KUBE-SVL-"
EXT_PREFIX = "KUBE-EXT-"
FW_PREFIX = "KUBE-FW-"
SEP_PREFIX = "KUBE-SEP-"
SERVICE_CHAIN_PREFIXES = (SVC_PREFIX, SVL_PREFIX, EXT_PREFIX, FW_PREFIX, SEP_PREFIX)

_sha256 = hashlib.sha256
_b32 = base64.b32encode


def _hash16(text: str) -> str:
    return _b32(_sha256(text.encode()).digest())[:16].decode()


def port_proto_hash(service_port_name: str, protocol: str) -> str:
    """The 16-character hash shared by a service port's SVC/SVL/EXT/FW chains."""
    return _hash16(service_port_name + protocol)


def service_chain(service_port_name: str, protocol: str) -> str:
    """``KUBE-SVC-…``: dispatch to all usable endpoints (Cluster traffic policy)."""
    return SVC_PREFIX + port_proto_hash(service_port_name, protocol)


def local_chain(service_port_name: str, protocol: str) -> str:
    """``KUBE-SVL-…``: dispatch to this node's endpoints (Local traffic policy)."""
    return SVL_PREFIX + port_proto_hash(service_port_name, protocol)


def external_chain(service_port_name: str, protocol: str) -> str:
    """``KUBE-EXT-…``: where NodePort, externalIP and LB traffic enters."""
    return EXT_PREFIX + port_proto_hash(service_port_name, protocol)


def firewall_chain(service_port_name: str, protocol: str) -> str:
    """``KUBE-FW-…``: ``loadBalancerSourceRanges`` filtering for LB IPs."""
    return FW_PREFIX + port_proto_hash(service_port_name, protocol)


def endpoint_chain(service_port_name: str, protocol: str, endpoint: str) -> str:
    """``KUBE-SEP-…`` for ``endpoint`` given as ``"ip:port"`` (``"[ip]:port"`` for IPv6)."""
    return SEP_PREFIX + _hash16(service_port_name + protocol + endpoint)


def is_service_chain(chain: str) -> bool:
    """True for the per-service chains kube-proxy creates and garbage-collects."""
    return chain.startswith(SERVICE_CHAIN_PREFIXES)
