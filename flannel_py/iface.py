"""Finding the external interface (upstream ``LookupExtIface`` for IPv4).

``--iface`` may name an interface or give one of its IPv4 addresses (and may be given
several times: the first that matches wins).  Without it, the interface of the default
route is used, else the only non-loopback interface that has an IPv4 address.
``--public-ip`` defaults to the interface address.
"""
from __future__ import annotations

import ipaddress
import logging
from ipaddress import IPv4Address
from typing import Any, Sequence

from flannel_py.backend import ExternalInterface

log = logging.getLogger(__name__)

AF_INET = 2


class InterfaceError(RuntimeError):
    pass


def _ipv4_addrs(rtnl: Any, index: int) -> list[IPv4Address]:
    return [IPv4Address(a.address) for a in rtnl.addrs(index, AF_INET)]


def _by_ip(rtnl: Any, ip: IPv4Address) -> Any:
    for a in rtnl.addrs(family=AF_INET):
        if IPv4Address(a.address) == ip:
            return rtnl.link(index=a.index)
    raise InterfaceError(f"no interface with given IP found: {ip}")


def _by_name(rtnl: Any, name: str) -> Any:
    from podnet.rtnl import LinkNotFound
    try:
        return rtnl.link(name=name)
    except LinkNotFound:
        raise InterfaceError(f"error looking up interface {name}: no such interface") from None


def _default(rtnl: Any) -> Any:
    for r in rtnl.routes(family=AF_INET):
        if r.dst == "0.0.0.0/0" and r.oif:
            return rtnl.link(index=r.oif)
    candidates = [l for l in rtnl.links() if l.name != "lo" and _ipv4_addrs(rtnl, l.index)]
    if len(candidates) == 1:
        return candidates[0]
    raise InterfaceError("no default route and not exactly one interface with an IPv4 address "
                         f"({', '.join(l.name for l in candidates) or 'none'}); use --iface")


def _parse_ip(text: str) -> IPv4Address | None:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        return None
    return addr if isinstance(addr, IPv4Address) else None


def lookup_ext_iface(rtnl: Any, ifaces: Sequence[str] = (), public_ip: str | None = None) -> ExternalInterface:
    """The :class:`ExternalInterface` to use; :class:`InterfaceError` when none fits."""
    link, iface_addr = None, None
    if ifaces:
        errors = []
        for spec in ifaces:
            ip = _parse_ip(spec)
            try:
                link = _by_ip(rtnl, ip) if ip else _by_name(rtnl, spec)
            except InterfaceError as exc:
                log.info("Could not find valid interface matching %s: %s", spec, exc)
                errors.append(str(exc))
                continue
            iface_addr = ip
            break
        if link is None:
            raise InterfaceError("Failed to find interface to use that matches the interfaces "
                                 "provided: " + "; ".join(errors))
    else:
        link = _default(rtnl)
        log.info("Determining IP address of default interface")
    if iface_addr is None:
        addrs = _ipv4_addrs(rtnl, link.index)
        if not addrs:
            raise InterfaceError(f"failed to find IPv4 address for interface {link.name}")
        iface_addr = addrs[0]
    if public_ip:
        pub = _parse_ip(public_ip)
        if pub is None:
            raise InterfaceError(f"invalid public IP address: {public_ip}")
    else:
        pub = iface_addr
    if not link.mtu:
        raise InterfaceError(f"failed to determine MTU for {link.name} interface")
    log.info("Using interface with name %s and address %s", link.name, iface_addr)
    log.info("Using %s as external address", pub)
    return ExternalInterface(name=link.name, index=link.index, iface_addr=iface_addr,
                             public_ip=pub, mtu=link.mtu)
