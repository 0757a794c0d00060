"""Flannel's raw keys in etcd: ``<prefix>/config`` and ``<prefix>/subnets/<ip>-<len>``.

This module only reads and writes keys (upstream's ``Registry``); deciding which subnet to
take is the manager's job.  The value of a subnet key is upstream's ``LeaseAttrs`` JSON,
byte for byte as Go's ``encoding/json`` writes it::

    {"PublicIP":"192.168.1.2","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"…"}}

and the key is attached to an etcd lease with a 24 h TTL.  A subnet key without an etcd
lease is a *reservation* (an administrator's static assignment): it never expires and is
kept that way when its node takes it up.  Every write is conditional (a transaction), so
two daemons racing for one subnet cannot both win.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from ipaddress import IPv4Address, IPv4Network
from typing import Any

from podnet.etcd import KeyValue, LeaseNotFound, StoreError

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/coreos.com/network"
SUBNET_TTL = 24 * 3600

_SUBNET_KEY = re.compile(r"(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$")
_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026",
               "\u2028": "\\u2028", "\u2029": "\\u2029"}


class ConfigNotFound(StoreError):
    """``<prefix>/config`` does not exist."""


class LeaseLost(StoreError):
    """Our subnet key now belongs to someone else (it expired and was taken)."""


def go_json(value: Any) -> str:
    """Compact JSON escaped as Go's encoding/json does (HTML characters as \\u00XX)."""
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    return re.sub("[<>&\u2028\u2029]", lambda m: _GO_ESCAPES[m.group()], text)


@dataclass(frozen=True)
class LeaseAttrs:
    """Upstream's ``lease.LeaseAttrs``: what a node publishes with its subnet."""
    public_ip: IPv4Address
    backend_type: str = ""
    backend_data: Any = None          # decoded JSON (dict) or None when absent
    public_ipv6: str | None = None
    backend_v6_data: Any = None

    def to_json(self) -> str:
        """Field order and omissions as Go marshals the struct."""
        parts = [f'"PublicIP":{go_json(str(self.public_ip))}',
                 f'"PublicIPv6":{go_json(self.public_ipv6)}']
        if self.backend_type:
            parts.append(f'"BackendType":{go_json(self.backend_type)}')
        if self.backend_data is not None:
            parts.append(f'"BackendData":{go_json(self.backend_data)}')
        if self.backend_v6_data is not None:
            parts.append(f'"BackendV6Data":{go_json(self.backend_v6_data)}')
        return "{" + ",".join(parts) + "}"

    @classmethod
    def from_json(cls, data: str | bytes) -> LeaseAttrs:
        obj = json.loads(data)
        if not isinstance(obj, dict):
            raise ValueError("lease value is not a JSON object")

        def field(name: str) -> Any:      # encoding/json matches names case-insensitively
            if name in obj:
                return obj[name]
            return next((v for k, v in obj.items() if k.lower() == name.lower()), None)

        public_ip = field("PublicIP")
        if not isinstance(public_ip, str):
            raise ValueError("lease value has no PublicIP")
        return cls(public_ip=IPv4Address(public_ip), backend_type=field("BackendType") or "",
                   backend_data=field("BackendData"), public_ipv6=field("PublicIPv6"),
                   backend_v6_data=field("BackendV6Data"))


@dataclass(frozen=True)
class Lease:
    """A subnet key as read from (or written to) etcd."""
    subnet: IPv4Network
    attrs: LeaseAttrs
    key: str = ""
    lease_id: int = 0                 # etcd lease; 0 means a reservation (no TTL)
    mod_revision: int = 0
    expiration: float | None = None   # clock() time the etcd lease ends; known for our own

    @property
    def reservation(self) -> bool:
        return self.lease_id == 0


def subnet_key(subnet: IPv4Network) -> str:
    """``10.244.3.0/24`` → ``10.244.3.0-24`` (upstream ``MakeSubnetKey``)."""
    return f"{subnet.network_address}-{subnet.prefixlen}"


def parse_subnet_key(key: str) -> IPv4Network | None:
    """The IPv4 subnet named by a key (upstream ``ParseSubnetKey``); None if it is not one."""
    m = _SUBNET_KEY.search(key)
    if not m:
        return None
    try:
        addr = IPv4Address(m.group(1))
        plen = int(m.group(2))
    except ValueError:
        return None
    if plen > 31:                     # upstream parses the length as a 5-bit number
        return None
    return ipaddress.ip_network(f"{addr}/{plen}", strict=False)


class SubnetRegistry:
    """Reads and conditionally writes flannel's keys through a :class:`podnet.etcd.Store`."""

    def __init__(self, store: Any, prefix: str = DEFAULT_PREFIX, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.prefix = prefix.rstrip("/") or "/"
        self.clock = clock

    @property
    def config_key(self) -> str:
        return f"{self.prefix}/config"

    @property
    def subnets_prefix(self) -> str:
        return f"{self.prefix}/subnets/"

    def key_for(self, subnet: IPv4Network) -> str:
        return self.subnets_prefix + subnet_key(subnet)

    # -- reads -------------------------------------------------------------------------

    def get_network_config(self) -> str:
        kv = self.store.get(self.config_key)
        if kv is None:
            raise ConfigNotFound("flannel config not found in etcd store. "
                                 "Did you create your config using etcdv3 API?")
        return kv.text

    def lease_from_kv(self, kv: KeyValue) -> Lease | None:
        """Decode one subnet key; None (with a warning) for keys that are not leases."""
        subnet = parse_subnet_key(kv.key)
        if subnet is None:
            log.warning("ignoring bad subnet node %s: not a subnet key", kv.key)
            return None
        try:
            attrs = LeaseAttrs.from_json(kv.value)
        except ValueError as exc:
            log.warning("ignoring bad subnet node %s: %s", kv.key, exc)
            return None
        return Lease(subnet, attrs, kv.key, kv.lease, kv.mod_revision)

    def list_leases(self) -> tuple[list[Lease], int]:
        """All leases and the revision the list is consistent with (for a watch)."""
        listing = self.store.get_prefix(self.subnets_prefix)
        leases = [lease for kv in listing.items if (lease := self.lease_from_kv(kv))]
        return leases, listing.revision

    def get_lease(self, subnet: IPv4Network) -> Lease | None:
        kv = self.store.get(self.key_for(subnet))
        return self.lease_from_kv(kv) if kv else None

    # -- writes ------------------------------------------------------------------------

    def create_lease(self, subnet: IPv4Network, attrs: LeaseAttrs,
                     ttl: int = SUBNET_TTL) -> Lease | None:
        """Create the subnet key with a fresh etcd lease if the key does not exist.

        Returns None when the key exists (a lost race); the etcd lease is revoked then.
        """
        key = self.key_for(subnet)
        grant = self.store.lease_grant(ttl)
        try:
            ok = self.store.create(key, attrs.to_json(), lease=grant.id)
        except BaseException:
            self._revoke_quietly(grant.id)
            raise
        if not ok:
            self._revoke_quietly(grant.id)
            return None
        return self._written(key, subnet, attrs, grant.id, grant.ttl)

    def update_lease(self, lease: Lease, attrs: LeaseAttrs, ttl: int = SUBNET_TTL) -> Lease | None:
        """Rewrite an existing lease with our attrs, as long as it was not changed since read.

        A reservation stays without TTL; a normal lease moves to a fresh etcd lease (the
        old one is revoked afterwards instead of being left to linger for a day).  Returns
        None when the key changed or vanished in between.
        """
        if lease.reservation:
            ok = self.store.replace(lease.key, attrs.to_json(), old_mod_revision=lease.mod_revision)
            if not ok:
                return None
            return replace(lease, attrs=attrs, mod_revision=0, expiration=None)
        grant = self.store.lease_grant(ttl)
        try:
            ok = self.store.replace(lease.key, attrs.to_json(), old_mod_revision=lease.mod_revision,
                                    lease=grant.id)
        except BaseException:
            self._revoke_quietly(grant.id)
            raise
        if not ok:
            self._revoke_quietly(grant.id)
            return None
        if lease.lease_id and lease.lease_id != grant.id:
            self._revoke_quietly(lease.lease_id)
        return self._written(lease.key, lease.subnet, attrs, grant.id, grant.ttl)

    def renew_lease(self, lease: Lease, ttl: int = SUBNET_TTL) -> Lease:
        """Extend our lease.  Keeps the etcd lease alive; if it is gone (etcd was away
        longer than the TTL) the key is written again under a new etcd lease, unless
        someone else holds the subnet now (:class:`LeaseLost`)."""
        if lease.reservation:
            return lease
        try:
            remaining = self.store.lease_refresh(lease.lease_id)
        except LeaseNotFound:
            remaining = -1
        if remaining > 0:
            kv = self.store.get(lease.key)
            if kv is not None and kv.lease == lease.lease_id:
                return replace(lease, mod_revision=kv.mod_revision,
                               expiration=self.clock() + remaining)
        log.warning("etcd lease for %s is gone or detached; writing the subnet key again",
                    lease.subnet)
        new = self._rewrite(lease, ttl)
        if remaining > 0 and lease.lease_id != new.lease_id:
            self._revoke_quietly(lease.lease_id)      # it no longer holds our key
        return new

    def _rewrite(self, lease: Lease, ttl: int) -> Lease:
        kv = self.store.get(lease.key)
        if kv is None:
            new = self.create_lease(lease.subnet, lease.attrs, ttl)
            if new is None:
                raise LeaseLost(f"subnet {lease.subnet} was taken by another node")
            return new
        current = self.lease_from_kv(kv)
        if current is None or current.attrs.public_ip != lease.attrs.public_ip:
            raise LeaseLost(f"subnet {lease.subnet} now belongs to "
                            f"{current.attrs.public_ip if current else 'an unknown node'}")
        if current.reservation:
            return current
        new = self.update_lease(current, lease.attrs, ttl)
        if new is None:
            raise LeaseLost(f"subnet {lease.subnet} changed while renewing it")
        return new

    def delete_lease(self, lease: Lease) -> bool:
        return self.store.delete(lease.key or self.key_for(lease.subnet))

    # -- internals ---------------------------------------------------------------------

    def _written(self, key: str, subnet: IPv4Network, attrs: LeaseAttrs, lease_id: int,
                 ttl: int) -> Lease:
        kv = self.store.get(key)
        mod = kv.mod_revision if kv is not None else 0
        return Lease(subnet, attrs, key, lease_id, mod, self.clock() + ttl)

    def _revoke_quietly(self, lease_id: int) -> None:
        try:
            self.store.lease_revoke(lease_id)
        except StoreError as exc:          # it expires by itself; nothing is attached
            log.warning("could not revoke etcd lease %x: %s", lease_id, exc)
