"""vxlan: a kernel VTEP ``flannel.<VNI>`` with static ARP and FDB entries per remote lease.

Per remote lease (BackendType ``vxlan``), in this order, as upstream:

1. neighbour ``<subnet network IP> lladdr <VtepMAC> dev flannel.1`` (permanent),
2. FDB ``<VtepMAC> dst <PublicIP> dev flannel.1`` (permanent, self),
3. route ``<subnet> via <subnet network IP> dev flannel.1 onlink``.

With ``DirectRouting`` a peer whose PublicIP is on one of our interface's connected
subnets gets a host-gw route instead.  A changed VtepMAC replaces the old FDB entry and
neighbour (upstream leaks the old FDB entry); a vanished lease takes all three away.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Any, Sequence

from flannel_py.backend import ExternalInterface
from flannel_py.backend.hostgw import managed_by_network
from flannel_py.backend.routes import (PeerBackend, DEFAULT_CHECK_INTERVAL, DesiredState, FdbSpec, NeighSpec, Peer,
                                       PeerProgrammer, PeriodicCheck, RouteSpec, host_gw_route,
                                       in_networks, sorted_peers)
from flannel_py.config import Config, backend_options
from flannel_py.subnet.registry import Lease

log = logging.getLogger(__name__)

BACKEND_TYPE = "vxlan"
ENCAP_OVERHEAD = 50
AF_INET = 2


class VxlanError(RuntimeError):
    pass


@dataclass(frozen=True)
class VxlanDeviceSpec:
    name: str
    vni: int
    port: int
    local: IPv4Address
    dev_index: int
    mtu: int
    learning: bool = False
    gbp: bool = False

    def link_data(self) -> dict:
        return {"id": self.vni, "local": str(self.local), "dev": self.dev_index,
                "port": self.port, "learning": 1 if self.learning else 0,
                "gbp": True if self.gbp else None}


def device_spec(ext: ExternalInterface, config: Config) -> VxlanDeviceSpec:
    opts = backend_options(config)
    base_mtu = opts.mtu or ext.mtu         # upstream: VXLANConfig.MTU defaults to the link MTU
    return VxlanDeviceSpec(name=f"flannel.{opts.vni}", vni=opts.vni, port=opts.port,
                           local=ext.iface_addr, dev_index=ext.index,
                           mtu=base_mtu - ENCAP_OVERHEAD, learning=opts.learning, gbp=opts.gbp)


def incompatibility(spec: VxlanDeviceSpec, link: Any) -> str:
    """Why an existing link cannot serve as our VTEP ('' when it can): upstream's
    ``vxlanLinksIncompat`` (kind, VNI, underlay device, local address, port, GBP)."""
    if link.kind != "vxlan":
        return f"link type: {link.kind} vs vxlan"
    info = link.info or {}
    if info.get("id") != spec.vni:
        return f"vni: {info.get('id')} vs {spec.vni}"
    if info.get("link") and spec.dev_index and info.get("link") != spec.dev_index:
        return f"vtep (external) interface: {info.get('link')} vs {spec.dev_index}"
    if info.get("local") != str(spec.local):
        return f"vtep (external) IP: {info.get('local')} vs {spec.local}"
    if info.get("port") and spec.port and info.get("port") != spec.port:
        return f"port: {info.get('port')} vs {spec.port}"
    if bool(info.get("gbp")) != spec.gbp:
        return f"gbp: {bool(info.get('gbp'))} vs {spec.gbp}"
    return ""


def ensure_vxlan_device(rtnl: Any, spec: VxlanDeviceSpec) -> Any:
    """Create the VTEP, or adopt a compatible existing one (keeping its MAC, so a restarted
    flanneld publishes the same VtepMAC); recreate an incompatible one."""
    from podnet.rtnl import AlreadyExists, LinkNotFound
    try:
        rtnl.add_link(spec.name, "vxlan", mtu=spec.mtu, data=spec.link_data())
        log.info("created VXLAN device %s (VNI %d, port %d, local %s)", spec.name, spec.vni,
                 spec.port, spec.local)
    except AlreadyExists:
        try:
            existing = rtnl.link(name=spec.name)
        except LinkNotFound:                       # vanished in between: try once more
            rtnl.add_link(spec.name, "vxlan", mtu=spec.mtu, data=spec.link_data())
        else:
            why = incompatibility(spec, existing)
            if why:
                log.warning("%r already exists with incompatible configuration: %s; "
                            "recreating device", spec.name, why)
                rtnl.del_link(spec.name)
                rtnl.add_link(spec.name, "vxlan", mtu=spec.mtu, data=spec.link_data())
            else:
                log.info("reusing existing VXLAN device %s", spec.name)
                if existing.mtu != spec.mtu:
                    rtnl.set_link(spec.name, mtu=spec.mtu)
    return rtnl.link(name=spec.name)


def render_vxlan(remote: Sequence[Lease], *, dev: str, ext_dev: str, vni: int,
                 direct_routing: bool = False,
                 local_networks: Sequence[IPv4Network] = ()) -> DesiredState:
    """Desired neighbours, FDB entries and routes for the remote leases."""
    peers = []
    for lease in remote:
        attrs = lease.attrs
        if attrs.backend_type != BACKEND_TYPE:
            log.warning("ignoring non-vxlan subnet %s: type=%s", lease.subnet, attrs.backend_type)
            continue
        data = attrs.backend_data if isinstance(attrs.backend_data, dict) else {}
        mac = data.get("VtepMAC")
        if not isinstance(mac, str) or not mac:
            log.error("error decoding subnet lease JSON for %s: no VtepMAC", lease.subnet)
            continue
        if direct_routing and in_networks(attrs.public_ip, local_networks):
            peers.append(Peer(lease.subnet, host_gw_route(lease, ext_dev)))
            continue
        gw = lease.subnet.network_address
        peers.append(Peer(lease.subnet,
                          RouteSpec(lease.subnet, gw, dev, onlink=True),
                          NeighSpec(gw, mac.lower(), dev),
                          FdbSpec(mac.lower(), attrs.public_ip, dev)))
    return DesiredState(sorted_peers(peers))


class VxlanBackend(PeerBackend):
    check_name = "vxlan check"

    type = BACKEND_TYPE

    def __init__(self, ext: ExternalInterface, config: Config, *, rtnl: Any = None,
                 check_interval: float = DEFAULT_CHECK_INTERVAL) -> None:
        self.ext = ext
        self.config = config
        self.opts = backend_options(config)
        self.spec = device_spec(ext, config)
        if rtnl is None:
            from podnet.rtnl import RTNL
            rtnl = RTNL()
        self.rtnl = rtnl
        self.link: Any = None
        self.local_networks: list[IPv4Network] = []
        self.remote: list[Lease] = []
        self.programmer: PeerProgrammer | None = None
        self.checker = PeriodicCheck(self.resync, check_interval, "vxlan-route-check")
        log.info("VXLAN config: VNI=%d Port=%d GBP=%s Learning=%s DirectRouting=%s",
                 self.opts.vni, self.opts.port, self.opts.gbp, self.opts.learning,
                 self.opts.direct_routing)

    @property
    def dev(self) -> str:
        return self.spec.name

    def _device(self) -> Any:
        if self.link is None:
            self.link = ensure_vxlan_device(self.rtnl, self.spec)
        return self.link

    def backend_data(self) -> Any:
        return {"VNI": self.spec.vni, "VtepMAC": self._device().mac}

    def mtu(self) -> int:
        return self.spec.mtu

    def start(self, own: Lease, config: Config) -> None:
        link = self._device()
        want = f"{own.subnet.network_address}/32"
        for addr in self.rtnl.addrs(link.index, AF_INET):
            if addr.cidr != want:
                log.info("removing stale address %s from %s", addr.cidr, self.dev)
                self.rtnl.del_addr(link.index, addr.cidr)
        if want not in {a.cidr for a in self.rtnl.addrs(link.index, AF_INET)}:
            self.rtnl.add_addr(link.index, want)
        self.rtnl.set_link(link.index, up=True)
        current = self.rtnl.link(index=link.index)
        if current.mac != link.mac:
            raise VxlanError(f"{self.dev}'s mac address wanted: {link.mac}, but got: {current.mac}")
        self.local_networks = [ip_network(a.cidr, strict=False)
                               for a in self.rtnl.addrs(self.ext.index, AF_INET)]
        self.config = config
        self.own = own
        self.programmer = self._programmer(link.index)
        self.checker.start()

    def _programmer(self, dev_index: int) -> PeerProgrammer:
        return PeerProgrammer(
            self.rtnl, {self.dev: dev_index, self.ext.name: self.ext.index},
            _vxlan_managed(self.dev, self.config.network, self.own.subnet, self.ext.name))

    def resync(self, remote: Sequence[Lease] | None = None) -> None:
        if self.programmer is not None:
            self._restore_device_if_gone()
        super().resync(remote)

    def _restore_device_if_gone(self) -> None:
        """Someone deleted the VTEP under us: recreate it with the same MAC — the VtepMAC our
        lease publishes and every other node has in its FDB — its address and state; the
        verified re-apply that follows puts the neighbours, FDB entries and routes back."""
        from podnet.rtnl import LinkNotFound
        try:
            self.rtnl.link(name=self.dev)
            return
        except LinkNotFound:
            pass
        log.warning("%s was deleted: recreating it with VtepMAC %s", self.dev, self.link.mac)
        self.rtnl.add_link(self.dev, "vxlan", mtu=self.spec.mtu, mac=self.link.mac,
                           data=self.spec.link_data())
        link = self.rtnl.link(name=self.dev)
        self.rtnl.add_addr(link.index, f"{self.own.subnet.network_address}/32")
        self.rtnl.set_link(link.index, up=True)
        self.link = link
        self.programmer = self._programmer(link.index)  # a fresh one: nothing is applied yet

    def desired(self, remote: Sequence[Lease]) -> DesiredState:
        return render_vxlan(remote, dev=self.dev, ext_dev=self.ext.name, vni=self.spec.vni,
                            direct_routing=self.opts.direct_routing,
                            local_networks=self.local_networks)



def _vxlan_managed(dev: str, network: IPv4Network, own: IPv4Network, ext_dev: str):
    direct = managed_by_network(network, own, {ext_dev})

    def managed(spec: RouteSpec) -> bool:
        return spec.dev == dev or direct(spec)
    return managed
