"""flannel's ``udp`` backend: TUN device ``flannel0`` + user-space UDP encapsulation (port 8285).

As upstream (``pkg/backend/udp``): flannel0 gets our subnet's network address as a /32 (a
source address for host-to-pod traffic, no broadcast routes), MTU = external MTU − 28 (IP +
UDP header), and a route for the whole flannel Network; the UDP socket is bound to the
external interface's address.  Each remote lease becomes an entry ``subnet -> PublicIP:port``
in the proxy's route table (the port is our own configured one, as upstream).

Unlike upstream the TUN device is made *persistent* (``TUNSETPERSIST``): when flanneld stops
or restarts, flannel0 keeps its address and route, and the restarted daemon re-attaches to it
by name, so pods keep their routes and only lose the packets sent while no daemon runs (TCP
retransmits them).  Upstream re-creates the device (``flannel%d``) on every start.

``net.ipv4.conf.flannel0.accept_local`` is set to 1: the proxy's ICMP net-unreachable comes
from flannel0's own address (as upstream's does), which the kernel otherwise drops as a
martian — upstream's ICMP errors never reach the pods for that reason.

Upstream's udp leases carry no ``BackendType`` (its udp backend publishes only ``PublicIP``),
so leases with an empty BackendType are accepted as udp peers as well as ``"udp"`` ones.
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from flannel_py.backend import ExternalInterface
from flannel_py.backend import udp_proxy
from flannel_py.config import Config, backend_options
from flannel_py.subnet.registry import Lease

log = logging.getLogger(__name__)

TUN_NAME = "flannel0"
ENCAP_OVERHEAD = 28                  # 20 bytes IP header + 8 bytes UDP header
PEER_TYPES = ("udp", "")             # "" is what upstream's udp backend publishes
DEFAULT_MODE = udp_proxy.MODE_BATCH


@dataclass(frozen=True)
class TunConfig:
    """What flannel0 must look like for our lease (upstream ``configureIface``)."""
    name: str
    address: str          # "<subnet network IP>/32"
    mtu: int
    route: str            # the whole flannel Network, dev flannel0, scope universe


def render_tun(own: Lease, config: Config, ext_mtu: int) -> TunConfig:
    return TunConfig(name=TUN_NAME, address=f"{own.subnet.network_address}/32",
                     mtu=ext_mtu - ENCAP_OVERHEAD, route=str(config.network))


def render_routes(remote: Sequence[Lease], own_subnet: IPv4Network | None
                  ) -> dict[IPv4Network, IPv4Address]:
    """The proxy's route table for these leases: udp peers only, never our own subnet."""
    out: dict[IPv4Network, IPv4Address] = {}
    for lease in remote:
        if lease.attrs.backend_type not in PEER_TYPES:
            log.warning("ignoring non-udp subnet %s: type=%s", lease.subnet,
                        lease.attrs.backend_type)
            continue
        if lease.subnet == own_subnet:
            continue
        out[lease.subnet] = lease.attrs.public_ip
    return out


def _accept_local(dev: str) -> None:
    """The proxy's ICMP errors come from flannel0's own address (as upstream's); without
    ``accept_local`` the kernel drops them as martians and pods never see them."""
    path = f"/proc/sys/net/ipv4/conf/{dev}/accept_local"
    try:
        with open(path, "w") as f:
            f.write("1")
    except OSError as exc:
        log.warning("cannot set %s: %s (ICMP net-unreachable will not reach pods)", path, exc)


def _mode_default() -> str:
    return os.environ.get("FLANNEL_UDP_MODE", DEFAULT_MODE)


class UdpBackend:
    """The udp backend. Create and call it in the node's network namespace: the TUN device,
    the socket and the netlink handle all belong to the netns of the thread that opens them.

    ``mode``: the proxy's data path (see :mod:`udp_proxy`): ``batch`` (default, or
    ``$FLANNEL_UDP_MODE``), ``tso`` or ``simple`` (upstream's one-packet-at-a-time loop, also
    the fallback when the kernel refuses vnet headers/offloads).
    ``persist``: leave flannel0 in place when the daemon exits (default)."""

    type = "udp"
    lease_backend_type = ""  # upstream leaves BackendType out of udp leases

    def __init__(self, ext_iface: ExternalInterface, config: Config, *,
                 mode: str | None = None, persist: bool = True,
                 rtnl_factory: Any = None) -> None:
        self.ext_iface = ext_iface
        self.config = config
        self.port = backend_options(config).port
        self.mode = _mode_default() if mode is None else mode
        if self.mode not in udp_proxy.MODES:
            raise ValueError(f"unknown udp proxy mode {self.mode!r} (one of {udp_proxy.MODES})")
        self.persist = persist
        self._rtnl_factory = rtnl_factory
        self._own: Lease | None = None
        self._proxy: udp_proxy.Proxy | None = None
        self._tun_fd = -1
        self._sock = None
        self._routes: dict[IPv4Network, IPv4Address] = {}
        self._lock = threading.Lock()

    # -- Backend protocol -----------------------------------------------------------------

    def backend_data(self) -> Any:
        return None

    def mtu(self) -> int:
        return self.ext_iface.mtu - ENCAP_OVERHEAD

    def start(self, own: Lease, config: Config) -> None:
        with self._lock:
            if self._proxy is not None:
                if own.subnet == self._own.subnet:
                    return
                self._stop_locked()
            self.config = config
            self.port = backend_options(config).port
            self._own = own
            tun = render_tun(own, config, self.ext_iface.mtu)
            fd, mode = self._open_tun(tun.name)
            try:
                self._configure(tun)
                sock, gro = udp_proxy.udp_socket(str(self.ext_iface.iface_addr), self.port,
                                                 gro=mode != udp_proxy.MODE_SIMPLE)
            except BaseException:
                os.close(fd)
                raise
            self._tun_fd, self._sock = fd, sock
            proxy = udp_proxy.Proxy(fd, sock, own.subnet.network_address, mode=mode,
                                    gro=gro)
            proxy.set_routes(udp_proxy.RouteTable(self._routes, self.port))
            proxy.start()
            self._proxy = proxy
            log.info("udp backend up: %s %s mtu %d, UDP %s:%d, %s path", tun.name, tun.address,
                     tun.mtu, self.ext_iface.iface_addr, self.port, mode)

    def reconcile(self, remote: Sequence[Lease]) -> None:
        with self._lock:
            own = self._own.subnet if self._own else None
            routes = render_routes(remote, own)
            if routes != self._routes:
                added = routes.keys() - self._routes.keys()
                removed = self._routes.keys() - routes.keys()
                for net in sorted(added):
                    log.info("subnet added: %s via %s", net, routes[net])
                for net in sorted(removed):
                    log.info("subnet removed: %s", net)
            self._routes = routes
            if self._proxy is not None:
                self._proxy.set_routes(udp_proxy.RouteTable(routes, self.port))

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    # -- helpers --------------------------------------------------------------------------

    @property
    def stats(self) -> dict[str, int]:
        return dict(self._proxy.stats) if self._proxy else {}

    @property
    def routes(self) -> dict[IPv4Network, IPv4Address]:
        return dict(self._routes)

    def _stop_locked(self) -> None:
        proxy, self._proxy = self._proxy, None
        if proxy is not None:
            proxy.stop()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._tun_fd >= 0:
            os.close(self._tun_fd)           # persistent: flannel0 stays, with its routes
            self._tun_fd = -1

    def _open_tun(self, name: str) -> tuple[int, str]:
        """(fd, mode in use). Falls back to the simple path when the kernel refuses the
        vnet header or the offloads."""
        flags = udp_proxy.tun_offload_flags(self.mode)
        if flags is not None:
            try:
                fd = udp_proxy.open_tun(name, vnet_hdr=True, persist=self.persist)
            except OSError as exc:
                log.warning("TUN with vnet header refused (%s); using the simple loop", exc)
            else:
                if udp_proxy.set_offload(fd, flags):
                    return fd, self.mode
                os.close(fd)
        return udp_proxy.open_tun(name, vnet_hdr=False, persist=self.persist), \
            udp_proxy.MODE_SIMPLE

    def _rtnl(self):
        if self._rtnl_factory is not None:
            return self._rtnl_factory()
        from podnet.rtnl import RTNL
        return RTNL()

    def _configure(self, tun: TunConfig) -> None:
        """Converge flannel0 to ``tun``; an adopted device keeps what already matches."""
        from podnet.rtnl import AF_INET, RT_SCOPE_UNIVERSE, AddressNotAvailable, AlreadyExists

        with self._rtnl() as nl:
            index = nl.link_index(tun.name)
            for addr in nl.addrs(index, AF_INET):
                if addr.cidr != tun.address:
                    log.info("removing stale address %s from %s", addr.cidr, tun.name)
                    try:
                        nl.del_addr(index, addr.cidr)
                    except AddressNotAvailable:
                        pass
            try:
                nl.add_addr(index, tun.address, broadcast=False)
            except AlreadyExists:
                pass
            nl.set_link(index, mtu=tun.mtu, up=True)
            _accept_local(tun.name)
            # explicit route: one for the subnet may already exist (upstream's comment: Docker)
            nl.add_route(tun.route, oif=index, scope=RT_SCOPE_UNIVERSE, replace=True)
