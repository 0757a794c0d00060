"""Lease policy: which subnet this node takes, keeping it, and following the other nodes.

Acquisition follows upstream's ``LocalManager`` order:

1. a lease that already carries our PublicIP is reused (rewritten with our attrs) if it
   still fits the config, else deleted;
2. else the subnet from the previous ``subnet.env``, if nobody holds it and it fits;
3. else a random one of the first 100 free subnets in [SubnetMin, SubnetMax].

The write is a transaction (``version == 0`` to create, ``mod_revision`` unchanged to
reuse), and a lost race is simply planned again from a fresh list: each loss means someone
else took a subnet, so the loop ends in a lease or in "out of subnets".

Renewal happens ``renew_margin`` minutes before expiry and is retried every minute on
failure.  :meth:`SubnetManager.watch_leases` turns the subnets prefix into
:class:`LeaseAdded` / :class:`LeaseRemoved` events about the *other* nodes.
"""
from __future__ import annotations

import bisect
import logging
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from typing import Any, Literal

from flannel_py.config import Config, parse_config
from flannel_py.subnet.registry import (SUBNET_TTL, Lease, LeaseAttrs, LeaseLost, SubnetRegistry,
                                        parse_subnet_key)
from podnet.etcd import KeyValue, StoreError, list_and_watch

log = logging.getLogger(__name__)

DEFAULT_RENEW_MARGIN_MINUTES = 60
RENEW_RETRY_SECONDS = 60.0
MAX_CANDIDATES = 100
MAX_ATTEMPTS = 100


class NoFreeSubnet(StoreError):
    """Every subnet in [SubnetMin, SubnetMax] is taken."""


@dataclass(frozen=True)
class Plan:
    """What :func:`plan_acquisition` decided; applied by :meth:`SubnetManager.acquire`."""
    action: Literal["reuse", "create"]
    subnet: IPv4Network
    lease: Lease | None = None            # the lease to rewrite (reuse)
    delete: Lease | None = None           # our own incompatible lease, deleted first
    reason: str = ""


@dataclass(frozen=True)
class LeaseAdded:
    lease: Lease


@dataclass(frozen=True)
class LeaseRemoved:
    lease: Lease


LeaseEvent = LeaseAdded | LeaseRemoved


# -- pure policy ----------------------------------------------------------------------------

def _taken_intervals(leases: Sequence[Lease]) -> list[tuple[int, int]]:
    spans = sorted((int(l.subnet.network_address), int(l.subnet.broadcast_address)) for l in leases)
    merged: list[tuple[int, int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _overlaps(intervals: list[tuple[int, int]], lo: int, hi: int) -> bool:
    i = bisect.bisect_right(intervals, (hi, 0xFFFFFFFF)) - 1
    return i >= 0 and intervals[i][1] >= lo


def free_subnets(config: Config, leases: Sequence[Lease], limit: int = MAX_CANDIDATES) -> list[IPv4Network]:
    """The first ``limit`` subnets in [SubnetMin, SubnetMax] that overlap no lease."""
    taken = _taken_intervals(leases)
    size = config.subnet_size()
    out: list[IPv4Network] = []
    ip, last = int(config.subnet_min), int(config.subnet_max)
    while ip <= last and len(out) < limit:
        hi = ip + size - 1
        i = bisect.bisect_right(taken, (hi, 0xFFFFFFFF)) - 1
        if i >= 0 and taken[i][1] >= ip:
            # jump past the interval that covers this candidate
            end = taken[i][1] + 1
            ip = ((end + size - 1) // size) * size if end % size else end
            continue
        out.append(IPv4Network((ip, config.subnet_len)))
        ip += size
    return out


def plan_acquisition(config: Config, leases: Sequence[Lease], public_ip: IPv4Address,
                     previous: IPv4Network | None = None,
                     choose: Callable[[list[IPv4Network]], IPv4Network] = random.choice) -> Plan:
    """Decide, from a list of leases, which subnet to take (upstream ``tryAcquireLease``)."""
    delete = None
    mine = next((l for l in leases if l.attrs.public_ip == public_ip), None)
    if mine is not None:
        if config.contains_subnet(mine.subnet):
            return Plan("reuse", mine.subnet, lease=mine,
                        reason=f"found lease {mine.subnet} for current IP {public_ip}, reusing")
        log.info("Found lease (%s) for current IP (%s) but not compatible with current config, "
                 "deleting", mine.subnet, public_ip)
        delete = mine
    if previous is not None:
        taken = _taken_intervals(leases)
        lo, hi = int(previous.network_address), int(previous.broadcast_address)
        if not _overlaps(taken, lo, hi):
            if config.contains_subnet(previous):
                return Plan("create", previous, delete=delete,
                            reason=f"found previously leased subnet {previous}, reusing")
            log.error("Found previously leased subnet (%s) that is not compatible with the Etcd "
                      "network config, ignoring", previous)
    candidates = free_subnets(config, leases)
    if not candidates:
        raise NoFreeSubnet(f"out of subnets: no free /{config.subnet_len} left in "
                           f"{config.subnet_min} ... {config.subnet_max} of {config.network}")
    return Plan("create", choose(candidates), delete=delete,
                reason=f"picked from {len(candidates)} free subnets in "
                       f"{config.subnet_min} ... {config.subnet_max}")


def renew_delay(lease: Lease, now: float, margin_seconds: float) -> float | None:
    """Seconds until ``lease`` should be renewed (0 if overdue); None for reservations."""
    if lease.reservation or lease.expiration is None:
        return None
    return max(0.0, lease.expiration - margin_seconds - now)


# -- watching the other nodes ---------------------------------------------------------------

class LeaseTracker:
    """The other nodes' leases, kept from a snapshot plus watch events; yields the diffs.

    Our own subnet is never reported; ``own_removed`` tells when our key disappeared.
    """

    def __init__(self, registry: SubnetRegistry, own_subnet: IPv4Network | None) -> None:
        self.registry = registry
        self.own_subnet = own_subnet
        self.leases: dict[IPv4Network, Lease] = {}
        self.own_removed = False

    def snapshot(self, items: Sequence[KeyValue]) -> list[LeaseEvent]:
        fresh: dict[IPv4Network, Lease] = {}
        own_seen = False
        for kv in items:
            lease = self.registry.lease_from_kv(kv)
            if lease is None:
                continue
            if lease.subnet == self.own_subnet:
                own_seen = True
                continue
            fresh[lease.subnet] = lease
        if self.own_subnet is not None and not own_seen:
            self.own_removed = True
        events: list[LeaseEvent] = [LeaseRemoved(old) for sn, old in self.leases.items()
                                    if sn not in fresh]
        for sn, lease in fresh.items():
            old = self.leases.get(sn)
            if old is None or old.attrs != lease.attrs:
                events.append(LeaseAdded(lease))
        self.leases = fresh
        return events

    def put(self, kv: KeyValue) -> list[LeaseEvent]:
        lease = self.registry.lease_from_kv(kv)
        if lease is None:
            return []
        if lease.subnet == self.own_subnet:
            return []
        self.leases[lease.subnet] = lease
        return [LeaseAdded(lease)]

    def delete(self, key: str) -> list[LeaseEvent]:
        subnet = parse_subnet_key(key)
        if subnet is None:
            return []
        if subnet == self.own_subnet:
            self.own_removed = True
            return []
        old = self.leases.pop(subnet, None)
        if old is None:
            return []
        return [LeaseRemoved(old)]


# -- the manager ----------------------------------------------------------------------------

class SubnetManager:
    """Acquires, renews and watches subnet leases on one :class:`SubnetRegistry`."""

    def __init__(self, registry: SubnetRegistry, config: Config | None = None, *,
                 previous_subnet: IPv4Network | None = None,
                 renew_margin_minutes: int = DEFAULT_RENEW_MARGIN_MINUTES,
                 ttl: int = SUBNET_TTL, sleep: Callable[[float], Any] = time.sleep,
                 rng: random.Random | None = None) -> None:
        if not 0 < renew_margin_minutes < 24 * 60:
            raise ValueError("Invalid subnet-lease-renew-margin option, out of acceptable range")
        self.registry = registry
        self.config = config
        self.previous_subnet = previous_subnet
        self.renew_margin = renew_margin_minutes * 60.0
        self.ttl = ttl
        self.sleep = sleep
        self.rng = rng or random.Random()

    @property
    def clock(self) -> Callable[[], float]:
        return self.registry.clock

    def network_config(self) -> Config:
        """Read and check ``<prefix>/config`` (raises ConfigNotFound / ConfigError)."""
        self.config = parse_config(self.registry.get_network_config())
        return self.config

    def acquire(self, attrs: LeaseAttrs) -> Lease:
        """Take a subnet for a node publishing ``attrs``; see the module doc for the order.

        Raises :class:`NoFreeSubnet`, or :class:`podnet.etcd.Unavailable` for the caller
        to retry.
        """
        config = self.config or self.network_config()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            leases, _ = self.registry.list_leases()
            plan = plan_acquisition(config, leases, attrs.public_ip, self.previous_subnet,
                                    self.rng.choice)
            if plan.delete is not None:
                self.registry.delete_lease(plan.delete)
            if plan.action == "reuse":
                assert plan.lease is not None
                got = self.registry.update_lease(plan.lease, attrs, self.ttl)
            else:
                got = self.registry.create_lease(plan.subnet, attrs, self.ttl)
            if got is not None:
                log.info("Allocated lease %s to current node (%s): %s", got.subnet,
                         attrs.public_ip, plan.reason)
                return got
            log.info("lost the race for subnet %s (attempt %d); trying again", plan.subnet, attempt)
            self.sleep(self.rng.uniform(0.0, 0.05))
        raise StoreError("max retries reached trying to acquire a subnet")

    def renew(self, lease: Lease) -> Lease:
        return self.registry.renew_lease(lease, self.ttl)

    def renew_delay(self, lease: Lease) -> float | None:
        return renew_delay(lease, self.clock(), self.renew_margin)

    def run_renewal(self, lease: Lease, stop_event: threading.Event, *,
                    wait: Callable[[float], bool] | None = None,
                    on_renewed: Callable[[Lease], Any] | None = None,
                    on_lost: Callable[[Exception], Any] | None = None) -> Lease:
        """Keep ``lease`` renewed until ``stop_event`` is set; returns the latest lease.

        ``wait(seconds) -> stop?`` defaults to ``stop_event.wait`` (inject a fake clock's).
        """
        wait = wait or stop_event.wait
        delay = self.renew_delay(lease)
        if delay is None:               # a reservation never expires
            while not wait(3600.0):
                pass
            return lease
        while True:
            log.info("Waiting for %.0fs to renew lease %s", delay, lease.subnet)
            if wait(delay):
                return lease
            try:
                lease = self.renew(lease)
            except LeaseLost as exc:
                log.error("Lease for %s lost: %s", lease.subnet, exc)
                if on_lost:
                    on_lost(exc)
                return lease
            except StoreError as exc:
                log.error("Error renewing lease (trying again in 1 min): %s", exc)
                delay = RENEW_RETRY_SECONDS
                continue
            log.info("Lease renewed, new expiration in %.0fs", (lease.expiration or 0) - self.clock())
            if on_renewed:
                on_renewed(lease)
            delay = self.renew_delay(lease) or 0.0

    def watch_leases(self, own_subnet: IPv4Network | None,
                     handler: Callable[[list[LeaseEvent]], Any], stop_event: threading.Event, *,
                     on_own_removed: Callable[[], Any] | None = None,
                     tracker: LeaseTracker | None = None) -> None:
        """Report the other nodes' leases to ``handler`` in batches until ``stop_event``.

        The first batch (and every batch after a resync) is the difference between what
        was reported before and the fresh list, so ``handler`` always converges.
        """
        tracker = tracker or LeaseTracker(self.registry, own_subnet)
        pending: list[LeaseEvent] = []

        def on_change(kind: str, *args: Any) -> None:
            if kind == "snapshot":
                pending.extend(tracker.snapshot(args[0]))
            elif kind == "put":
                key, value = args[0], args[1]
                ev = args[2] if len(args) > 2 else None
                kv = KeyValue(key, value, getattr(ev, "revision", 0), lease=getattr(ev, "lease", 0))
                pending.extend(tracker.put(kv))
            elif kind == "delete":
                pending.extend(tracker.delete(args[0]))

        def flush() -> None:
            if pending:
                batch = list(pending)
                pending.clear()
                handler(batch)
            if tracker.own_removed:
                tracker.own_removed = False
                log.error("our lease for %s was removed from etcd", own_subnet)
                if on_own_removed:
                    on_own_removed()

        list_and_watch(self.registry.store, self.registry.subnets_prefix, on_change,
                       stop_event=stop_event, batch_end=flush)
