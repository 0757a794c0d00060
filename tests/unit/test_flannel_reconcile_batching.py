"""flanneld folds lease events that arrive during a reconcile into the next reconcile, and
the faster peer sort keeps the renderers' order."""
from __future__ import annotations

import threading
from ipaddress import IPv4Address, IPv4Network, ip_network

from hypothesis import given
from hypothesis import strategies as st

from flannel_py.backend.routes import FdbSpec, NeighSpec, Peer, RouteSpec, sorted_peers
from flannel_py.cli import Options
from flannel_py.daemon import Daemon
from flannel_py.subnet.manager import LeaseAdded, LeaseRemoved
from flannel_py.subnet.registry import Lease, LeaseAttrs

WAIT = 30.0      # a guard against hanging, never a measurement


def lease(i: int) -> Lease:
    return Lease(ip_network(f"10.{100 + i // 256}.{i % 256}.0/24"),
                 LeaseAttrs(IPv4Address(f"192.168.1.{1 + i % 250}"), "host-gw"))


class GatedBackend:
    """Records each reconcile's subnets; the first reconcile waits for ``gate``."""

    type = "host-gw"

    def __init__(self, want_last: int) -> None:
        self.calls: list[list[IPv4Network]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.done = threading.Event()
        self.want_last = want_last

    def reconcile(self, remote) -> None:
        self.calls.append([l.subnet for l in remote])
        if len(self.calls) == 1:
            self.entered.set()
            assert self.gate.wait(WAIT)
        if len(remote) == self.want_last:
            self.done.set()

    def stop(self) -> None:
        pass


def daemon_with(backend) -> Daemon:
    d = Daemon(Options())
    d.backend = backend
    return d


def test_events_are_recorded_and_applied_once():
    be = GatedBackend(want_last=-1)
    be.gate.set()
    d = daemon_with(be)
    assert d.reconcile_pending() is False                     # nothing happened yet
    for i in range(50):
        d.on_lease_events([LeaseAdded(lease(i))])
    d.on_lease_events([LeaseRemoved(lease(7))])
    assert be.calls == []                                      # the watch side never applies
    assert d.reconcile_pending() is True
    assert be.calls == [sorted((lease(i).subnet for i in range(50) if i != 7),
                               key=lambda n: int(n.network_address))]
    assert d.reconcile_pending() is False                     # no change, no reconcile
    assert len(be.calls) == 1


def test_events_during_a_reconcile_fold_into_the_next_one():
    n = 200
    be = GatedBackend(want_last=n)
    d = daemon_with(be)
    t = threading.Thread(target=d.run_reconciler, daemon=True)
    t.start()
    try:
        d.on_lease_events([LeaseAdded(lease(0))])
        assert be.entered.wait(WAIT)                           # reconcile #1 is running
        for i in range(1, n):                                  # 199 batches meanwhile
            d.on_lease_events([LeaseAdded(lease(i))])
        be.gate.set()
        assert be.done.wait(WAIT)
    finally:
        d.stop_event.set()
        d._dirty.set()
        t.join(WAIT)
    assert not t.is_alive()
    assert len(be.calls) == 2
    assert be.calls[0] == [lease(0).subnet]
    assert be.calls[1] == [lease(i).subnet for i in range(n)]
    assert d.reconciles == 2


nets = st.builds(lambda a, p: IPv4Network((a, p), strict=False),
                 st.integers(0, 2**32 - 1), st.integers(8, 32))


@st.composite
def peers(draw):
    subnet = draw(nets)
    gw = IPv4Address(draw(st.integers(0, 2**32 - 1)))
    route = RouteSpec(subnet, gw, draw(st.sampled_from(["eth0", "flannel.1"])), draw(st.booleans()))
    if draw(st.booleans()):
        mac = draw(st.sampled_from(["aa:bb:cc:00:00:01", "aa:bb:cc:00:00:02"]))
        return Peer(subnet, route, NeighSpec(gw, mac, "flannel.1"), FdbSpec(mac, gw, "flannel.1"))
    return Peer(subnet, route)


@given(st.lists(peers(), max_size=30, unique_by=lambda p: p.subnet))
def test_sorted_peers_matches_the_dataclass_order(ps):
    # one peer per subnet, as the renderers get them (the daemon keys leases by subnet)
    assert sorted_peers(ps) == tuple(sorted(ps))
