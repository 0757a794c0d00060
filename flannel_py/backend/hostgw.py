"""host-gw: a plain route per remote lease, ``<subnet> via <PublicIP> dev <iface>``.

Works only when every node is on one L2 segment, and refuses a NAT'd public IP as
upstream does.  Unlike upstream, routes of vanished leases are removed (upstream's route
list never forgets); the periodic check re-adds what was deleted behind our back.
"""
from __future__ import annotations

import logging
from ipaddress import IPv4Network
from typing import Any, Sequence

from flannel_py.backend import ExternalInterface
from flannel_py.backend.routes import (PeerBackend, DEFAULT_CHECK_INTERVAL, DesiredState, Peer, PeerProgrammer,
                                       PeriodicCheck, RouteSpec, host_gw_route, sorted_peers)
from flannel_py.config import Config
from flannel_py.subnet.registry import Lease

log = logging.getLogger(__name__)

BACKEND_TYPE = "host-gw"
NAT_ERROR = ("your PublicIP differs from interface IP, meaning that probably you're on a NAT, "
             "which is not supported by host-gw backend")


class HostGwError(RuntimeError):
    pass


def render_host_gw(remote: Sequence[Lease], dev: str) -> DesiredState:
    """Desired routes for the remote leases (non-host-gw leases are ignored, as upstream)."""
    peers = []
    for lease in remote:
        if lease.attrs.backend_type != BACKEND_TYPE:
            log.warning("Ignoring non-%s subnet %s: type=%s", BACKEND_TYPE, lease.subnet,
                        lease.attrs.backend_type)
            continue
        peers.append(Peer(lease.subnet, host_gw_route(lease, dev)))
    return DesiredState(sorted_peers(peers))


def managed_by_network(network: IPv4Network | None, own: IPv4Network | None, devs: set[str]):
    """Routes we own: via a gateway, on one of ``devs``, to a subnet inside the Network
    other than our own."""
    def managed(spec: RouteSpec) -> bool:
        if spec.dev not in devs or network is None:
            return False
        return spec.dst.subnet_of(network) and spec.dst != network and spec.dst != own
    return managed


class HostGwBackend(PeerBackend):
    check_name = "route check"

    type = BACKEND_TYPE

    def __init__(self, ext: ExternalInterface, config: Config, *, rtnl: Any = None,
                 check_interval: float = DEFAULT_CHECK_INTERVAL) -> None:
        if ext.public_ip != ext.iface_addr:
            raise HostGwError(NAT_ERROR)
        self.ext = ext
        self.config = config
        if rtnl is None:
            from podnet.rtnl import RTNL
            rtnl = RTNL()
        self.rtnl = rtnl
        self.own: Lease | None = None
        self.remote: list[Lease] = []
        self.programmer: PeerProgrammer | None = None
        self.checker = PeriodicCheck(self.resync, check_interval, "host-gw-route-check")

    def backend_data(self) -> Any:
        return None

    def mtu(self) -> int:
        return self.ext.mtu

    def start(self, own: Lease, config: Config) -> None:
        self.own, self.config = own, config
        self.programmer = PeerProgrammer(
            self.rtnl, {self.ext.name: self.ext.index},
            managed_by_network(config.network, own.subnet, {self.ext.name}))
        self.checker.start()

    def desired(self, remote: Sequence[Lease]) -> DesiredState:
        return render_host_gw(remote, self.ext.name)

