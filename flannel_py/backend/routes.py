"""Desired per-peer kernel state (neighbour, FDB entry, route) and the applier shared by the
vxlan and host-gw backends.

The backends render a :class:`DesiredState` from the remote leases (pure, golden-tested);
:class:`PeerProgrammer` converges the kernel to it.  Event-driven reconciles diff against
what was applied last (cheap: 500 leases arriving one by one must not re-read the kernel
500 times); a periodic check (and the first reconcile after start or after any error)
diffs against the kernel itself, so a route deleted by hand comes back and a stale one goes.
"""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network, ip_network
from typing import Any, Callable, Sequence

from flannel_py.subnet.registry import Lease

log = logging.getLogger(__name__)

DEFAULT_CHECK_INTERVAL = 10.0      # upstream's routeCheckRetries (seconds)
AF_INET = 2
NUD_PERMANENT = 0x80


@dataclass(frozen=True, order=True)
class NeighSpec:
    ip: IPv4Address
    mac: str
    dev: str

    def line(self) -> str:
        return f"neigh {self.ip} lladdr {self.mac} dev {self.dev} PERMANENT"


@dataclass(frozen=True, order=True)
class FdbSpec:
    mac: str
    dst: IPv4Address
    dev: str

    def line(self) -> str:
        return f"fdb {self.mac} dev {self.dev} dst {self.dst} self permanent"


@dataclass(frozen=True, order=True)
class RouteSpec:
    dst: IPv4Network
    gateway: IPv4Address
    dev: str
    onlink: bool = False

    def line(self) -> str:
        return f"route {self.dst} via {self.gateway} dev {self.dev}" + (" onlink" if self.onlink else "")


@dataclass(frozen=True, order=True)
class Peer:
    """What one remote lease needs, applied in this order: neighbour, FDB, route."""
    subnet: IPv4Network
    route: RouteSpec
    neigh: NeighSpec | None = None
    fdb: FdbSpec | None = None

    def lines(self) -> list[str]:
        return [x.line() for x in (self.neigh, self.fdb, self.route) if x is not None]


@dataclass(frozen=True)
class DesiredState:
    peers: tuple[Peer, ...] = ()

    def lines(self) -> list[str]:
        return [line for p in self.peers for line in p.lines()]

    def render(self) -> str:
        return "".join(line + "\n" for line in self.lines())


@dataclass
class KernelState:
    """The managed part of the kernel: neighbours by IP, FDB entries, routes by dst."""
    neighs: dict[IPv4Address, NeighSpec] = field(default_factory=dict)
    fdbs: set[FdbSpec] = field(default_factory=set)
    routes: dict[IPv4Network, RouteSpec] = field(default_factory=dict)

    @classmethod
    def of(cls, desired: DesiredState) -> KernelState:
        st = cls()
        for p in desired.peers:
            if p.neigh:
                st.neighs[p.neigh.ip] = p.neigh
            if p.fdb:
                st.fdbs.add(p.fdb)
            st.routes[p.route.dst] = p.route
        return st


def _peer_order(peer: Peer) -> tuple:
    net = peer.subnet
    return int(net.network_address), net.prefixlen, peer


def sorted_peers(peers: Sequence[Peer]) -> tuple[Peer, ...]:
    """``tuple(sorted(peers))``, faster: subnets compared as ints (IPv4Network.__lt__ is
    Python code and dominated a 500-lease render); ties fall back to the full order."""
    return tuple(sorted(peers, key=_peer_order))


def host_gw_route(lease: Lease, dev: str) -> RouteSpec:
    """Upstream host-gw's ``GetRoute``: the peer's subnet via its PublicIP on our iface."""
    return RouteSpec(lease.subnet, lease.attrs.public_ip, dev)


def in_networks(ip: IPv4Address, networks: Sequence[IPv4Network]) -> bool:
    return any(ip in n for n in networks)


class PeerProgrammer:
    """Converges neighbours/FDB/routes for the peers of one backend.

    ``devices`` maps the device names the backend uses to their ifindex; ``managed_route``
    says which kernel routes belong to us (anything else is never touched).
    """

    def __init__(self, rtnl: Any, devices: dict[str, int],
                 managed_route: Callable[[RouteSpec], bool]) -> None:
        self.rtnl = rtnl
        self.devices = devices
        self.managed_route = managed_route
        self.applied: KernelState | None = None      # None: next apply reads the kernel
        self.lock = threading.Lock()

    # -- reading the kernel ---------------------------------------------------------------

    def read_kernel(self) -> KernelState:
        names = {idx: name for name, idx in self.devices.items()}
        st = KernelState()
        for r in self.rtnl.routes(family=AF_INET):
            if r.gateway is None or r.oif not in names or r.type != "unicast":
                continue
            spec = RouteSpec(ip_network(r.dst), IPv4Address(r.gateway), names[r.oif], bool(r.onlink))
            if self.managed_route(spec):
                st.routes[spec.dst] = spec
        for name, idx in self.devices.items():
            if not self.uses_neighbours(name):
                continue
            for n in self.rtnl.neighs(family=AF_INET, index=idx):
                if n.address and n.mac and n.state & NUD_PERMANENT:
                    st.neighs[IPv4Address(n.address)] = NeighSpec(IPv4Address(n.address),
                                                                  n.mac.lower(), name)
            for n in self.rtnl.fdbs(idx):
                if n.dst and n.mac and n.state & NUD_PERMANENT and n.mac != "00:00:00:00:00:00":
                    st.fdbs.add(FdbSpec(n.mac.lower(), IPv4Address(n.dst), name))
        return st

    def uses_neighbours(self, dev: str) -> bool:
        """Only overlay devices (flannel.N) carry our neighbours and FDB entries."""
        return dev.startswith("flannel")

    # -- applying -------------------------------------------------------------------------

    def apply(self, desired: DesiredState, *, verify: bool = False) -> int:
        """Converge; returns the number of changes made. Errors are logged and make the
        next apply verify against the kernel."""
        from podnet.rtnl import NetlinkError, NotFound
        with self.lock:
            current = self.read_kernel() if (verify or self.applied is None) else self.applied
            want = KernelState.of(desired)
            changes, ok = 0, True

            def attempt(what: str, fn: Callable[[], Any], *, missing_ok: bool = False) -> None:
                nonlocal changes, ok
                try:
                    fn()
                    changes += 1
                except NotFound:
                    if not missing_ok:
                        ok = False
                        log.error("%s failed: not found", what)
                except NetlinkError as exc:
                    ok = False
                    log.error("%s failed: %s", what, exc)

            # removals first: routes, then FDB, then neighbours
            # (sort only what goes: sorting all 500 current routes per event was O(n log n)
            # calls of IPv4Network.__lt__)
            for spec in sorted(s for dst, s in current.routes.items() if dst not in want.routes):
                log.info("removing route %s", spec.line())
                attempt(f"delete {spec.line()}",
                        lambda s=spec: self.rtnl.del_route(str(s.dst), gateway=str(s.gateway),
                                                           oif=self.devices[s.dev]),
                        missing_ok=True)
            for spec in sorted(current.fdbs - want.fdbs):
                log.info("removing %s", spec.line())
                attempt(f"delete {spec.line()}",
                        lambda s=spec: self.rtnl.fdb_del(self.devices[s.dev], s.mac, str(s.dst)),
                        missing_ok=True)
            for spec in sorted(s for ip, s in current.neighs.items() if ip not in want.neighs):
                log.info("removing %s", spec.line())
                attempt(f"delete {spec.line()}",
                        lambda s=spec: self.rtnl.del_neigh(self.devices[s.dev], str(s.ip)),
                        missing_ok=True)
            # additions per peer, in order: neighbour, FDB, route
            for peer in desired.peers:
                n, f, r = peer.neigh, peer.fdb, peer.route
                if n is not None and current.neighs.get(n.ip) != n:
                    log.info("adding %s", n.line())
                    attempt(f"add {n.line()}", lambda s=n: self.rtnl.add_neigh(
                        self.devices[s.dev], str(s.ip), s.mac, permanent=True, replace=True))
                if f is not None and f not in current.fdbs:
                    log.info("adding %s", f.line())
                    attempt(f"add {f.line()}", lambda s=f: self.rtnl.fdb_add(
                        self.devices[s.dev], s.mac, str(s.dst), replace=True, permanent=True))
                if current.routes.get(r.dst) != r:
                    log.info("adding %s", r.line())
                    attempt(f"add {r.line()}", lambda s=r: self.rtnl.add_route(
                        str(s.dst), gateway=str(s.gateway), oif=self.devices[s.dev],
                        onlink=s.onlink, replace=True))
            self.applied = want if ok else None
            return changes


class PeriodicCheck:
    """Runs ``fn`` every ``interval`` seconds on a daemon thread until stopped
    (upstream's ``routeCheck``; here it also removes what no lease needs)."""

    def __init__(self, fn: Callable[[], Any], interval: float, name: str) -> None:
        self.fn, self.interval, self.name = fn, interval, name
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval <= 0 or self.thread is not None:
            return
        self.thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop_event.wait(self.interval):
            try:
                self.fn()
            except Exception:  # noqa: BLE001 - a failed check must not end the checks
                log.exception("%s failed", self.name)

    def stop(self) -> None:
        self.stop_event.set()
        if self.thread is not None:
            self.thread.join(5)


class PeerBackend:
    """What the vxlan and host-gw backends share: the remote leases rendered into a
    :class:`DesiredState` by ``desired()``, applied by ``self.programmer`` (set in their
    ``start()``), and verified against the kernel by ``self.checker`` and on resync."""

    check_name = "route check"
    programmer: "PeerProgrammer | None"
    checker: "PeriodicCheck"
    remote: list

    def desired(self, remote):  # pragma: no cover - each backend renders its own
        raise NotImplementedError

    def reconcile(self, remote) -> None:
        assert self.programmer is not None, "start() first"
        self.remote = list(remote)
        self.programmer.apply(self.desired(self.remote))

    def resync(self, remote=None) -> None:
        """Full check against the kernel (periodic, and on the daemon's resync)."""
        if self.programmer is None:
            return
        if remote is not None:
            self.remote = list(remote)
        n = self.programmer.apply(self.desired(self.remote), verify=True)
        if n:
            logging.getLogger(type(self).__module__).info("%s: %d change(s) made",
                                                          self.check_name, n)

    def stop(self) -> None:
        self.checker.stop()
