"""The ``loopback`` CNI plugin: bring ``lo`` up in the container's network namespace.

Behaves like the reference plugin (containernetworking/plugins ``plugins/main/loopback``):
the interface name in the config is ignored (only ``lo`` makes sense); ADD reports ``lo``
with the addresses the kernel actually gave it (first IPv4, first IPv6), or passes a
prevResult through unchanged; DEL sets ``lo`` down and succeeds when the namespace is gone;
CHECK fails when ``lo`` is down.
"""
from __future__ import annotations

import sys
from typing import Any

from cni import spec
from cni.skel import Plugin, Request, main
from cni.spec import CNIError

LO = "lo"
LO_MAC = "00:00:00:00:00:00"


def _rtnl(netns: str):
    """A netlink handle inside ``netns`` (imported lazily: VERSION needs no netlink)."""
    from podnet.rtnl import RTNL
    return RTNL(netns=netns)


class Loopback(Plugin):
    name = "loopback"

    def add(self, req: Request) -> dict[str, Any]:
        prev = req.prev_result
        try:
            with _rtnl(req.netns) as rt:
                rt.set_link(LO, up=True)
                addrs = rt.addrs(rt.link(LO).index)
        except FileNotFoundError as e:
            raise CNIError(spec.INTERNAL, f"failed to open netns {req.netns!r}: {e}") from None
        except OSError as e:
            raise CNIError(spec.INTERNAL, f"failed to set {LO} up in {req.netns}: {e}") from None
        first: dict[int, str] = {}
        for addr in addrs:
            ip = _loopback_addr(addr.address)
            if ip is None:
                raise CNIError(spec.INTERNAL,
                               f"loopback interface found with non-loopback address {addr.address!r}")
            first.setdefault(ip, addr.cidr)
        if prev is not None:
            return prev
        return {
            "interfaces": [{"name": LO, "mac": LO_MAC, "sandbox": req.netns}],
            "ips": [{"interface": 0, "address": first[v]} for v in (4, 6) if v in first],
        }

    def delete(self, req: Request) -> None:
        if not req.netns:
            return
        try:
            with _rtnl(req.netns) as rt:
                rt.set_link(LO, up=False)
        except FileNotFoundError:
            return  # the namespace (or lo with it) is already gone: nothing to undo
        except OSError as e:
            raise CNIError(spec.INTERNAL, f"failed to set {LO} down in {req.netns}: {e}") from None

    def check(self, req: Request) -> None:
        try:
            with _rtnl(req.netns) as rt:
                up = rt.link(LO).up
        except OSError as e:
            raise CNIError(spec.INTERNAL, f"failed to read {LO} in {req.netns}: {e}") from None
        if not up:
            raise CNIError(spec.INTERNAL, "loopback interface is down")


def _loopback_addr(address: str) -> int | None:
    """The address family (4/6) if ``address`` is a loopback address, else None."""
    import ipaddress

    ip = ipaddress.ip_address(address)
    return ip.version if ip.is_loopback else None


PLUGIN = Loopback()

if __name__ == "__main__":
    sys.exit(main(PLUGIN))
