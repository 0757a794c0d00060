"""An in-memory stand-in for :class:`podnet.etcd.Store`: revisions, leases with TTLs on an
injected clock, transactions, compaction and watches, so policies can be tested on state.

Faults are state too: set ``down = True`` to make every call raise ``Unavailable``;
``break_watches()`` ends open watches as a lost connection would; ``before_write`` runs
just before each conditional write (``create``/``replace``) so a test can play a racing
writer.
"""
from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from dataclasses import replace as dc_replace
from typing import Any

from podnet.etcd import (Compacted, Grant, KeyValue, LeaseNotFound, Listing, Unavailable,
                         WatchEvent)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeStore:
    def __init__(self, clock: Callable[[], float] | None = None) -> None:
        self.clock = clock or FakeClock()
        self.kvs: dict[str, KeyValue] = {}
        self.leases: dict[int, tuple[int, float]] = {}       # id -> (granted ttl, expiry)
        self.rev = 1
        self.compact_rev = 0
        self.history: list[WatchEvent] = []
        self.down = False
        self.before_write: Callable[[str, str], None] | None = None
        self._ids = itertools.count(0x1000)
        self._cond = threading.Condition()
        self._watch_epoch = 0
        self._bypass: int | None = None

    # -- helpers -----------------------------------------------------------------------

    def _check(self) -> None:
        if self.down and threading.get_ident() != self._bypass:
            raise Unavailable("fake etcd is down")
        self._expire()

    def _expire(self) -> None:
        now = self.clock()
        for lid, (_, exp) in list(self.leases.items()):
            if exp <= now:
                self._drop_lease(lid)

    def _drop_lease(self, lid: int) -> None:
        del self.leases[lid]
        for key in [k for k, kv in self.kvs.items() if kv.lease == lid]:
            self._delete(key)

    def _bump(self, ev: WatchEvent) -> None:
        with self._cond:
            self.history.append(ev)
            self._cond.notify_all()

    def _put(self, key: str, value: str | bytes, lease: int) -> int:
        if lease and lease not in self.leases:
            raise LeaseNotFound("etcdserver: requested lease not found")
        data = value.encode() if isinstance(value, str) else bytes(value)
        self.rev += 1
        old = self.kvs.get(key)
        self.kvs[key] = KeyValue(key, data, self.rev, old.create_revision if old else self.rev,
                                 (old.version if old else 0) + 1, lease)
        self._bump(WatchEvent("PUT", key, data, self.rev, lease))
        return self.rev

    def _delete(self, key: str) -> bool:
        if key not in self.kvs:
            return False
        del self.kvs[key]
        self.rev += 1
        self._bump(WatchEvent("DELETE", key, b"", self.rev, 0))
        return True

    # -- Store API ---------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        self._check()
        return self.kvs.get(key)

    def get_prefix(self, prefix: str) -> Listing:
        self._check()
        return Listing([self.kvs[k] for k in sorted(self.kvs) if k.startswith(prefix)], self.rev)

    def revision(self) -> int:
        self._check()
        return self.rev

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        self._check()
        return self._put(key, value, lease)

    def delete(self, key: str) -> bool:
        self._check()
        return self._delete(key)

    def delete_prefix(self, prefix: str) -> int:
        self._check()
        return sum(self._delete(k) for k in [k for k in self.kvs if k.startswith(prefix)])

    def create(self, key: str, value: str | bytes, lease: int = 0) -> bool:
        self._check()
        if self.before_write:
            self.before_write("create", key)
        if key in self.kvs:
            return False
        self._put(key, value, lease)
        return True

    def replace(self, key: str, new_value: str | bytes, *, old_value: Any = None,
                old_mod_revision: int | None = None, lease: int = 0) -> bool:
        self._check()
        if self.before_write:
            self.before_write("replace", key)
        kv = self.kvs.get(key)
        if kv is None:
            return False
        if old_value is not None:
            want = old_value.encode() if isinstance(old_value, str) else old_value
            if kv.value != want:
                return False
        if old_mod_revision is not None and kv.mod_revision != old_mod_revision:
            return False
        self._put(key, new_value, lease)
        return True

    def compact(self, revision: int, physical: bool = True) -> None:
        self._check()
        self.compact_rev = max(self.compact_rev, revision)
        self.history = [e for e in self.history if e.revision > revision]

    def lease_grant(self, ttl: int) -> Grant:
        self._check()
        lid = next(self._ids)
        self.leases[lid] = (ttl, self.clock() + ttl)
        return Grant(lid, ttl)

    def lease_revoke(self, lease: int) -> bool:
        self._check()
        if lease not in self.leases:
            return False
        self._drop_lease(lease)
        return True

    def lease_refresh(self, lease: int) -> int:
        self._check()
        if lease not in self.leases:
            return -1
        ttl, _ = self.leases[lease]
        self.leases[lease] = (ttl, self.clock() + ttl)
        return ttl

    def lease_ttl(self, lease: int) -> int:
        self._check()
        if lease not in self.leases:
            return -1
        return int(self.leases[lease][1] - self.clock())

    # -- watch -------------------------------------------------------------------------

    def break_watches(self) -> None:
        """End every open watch with Unavailable, as a dropped connection does."""
        with self._cond:
            self._watch_epoch += 1
            self._cond.notify_all()

    def watch_prefix(self, prefix: str, start_revision: int) -> FakeWatch:
        self._check()
        return FakeWatch(self, prefix, start_revision)

    def while_down(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` (the test's own writes) while every other client sees etcd down."""
        self._bypass = threading.get_ident()
        try:
            return fn()
        finally:
            self._bypass = None

    def ttl_of(self, key: str) -> float | None:
        """Test helper: remaining seconds of the key's lease, None for a key without one."""
        kv = self.kvs[key]
        if not kv.lease:
            return None
        return self.leases[kv.lease][1] - self.clock()

    def put_kv(self, kv: KeyValue) -> None:
        """Test helper: store ``kv`` as is (e.g. a reservation written by an admin)."""
        self._put(kv.key, kv.value, kv.lease)


class FakeWatch:
    def __init__(self, store: FakeStore, prefix: str, start_revision: int) -> None:
        self.store, self.prefix, self.next_revision = store, prefix, start_revision
        self._closed = False
        self._epoch = store._watch_epoch

    def close(self) -> None:
        with self.store._cond:
            self._closed = True
            self.store._cond.notify_all()

    def __enter__(self) -> FakeWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __iter__(self):
        st = self.store
        while True:
            with st._cond:
                while True:
                    if self._closed:
                        return
                    if st._watch_epoch != self._epoch:
                        raise Unavailable("fake watch connection lost")
                    if self.next_revision <= st.compact_rev:
                        raise Compacted(st.compact_rev)
                    batch = [e for e in st.history
                             if e.revision >= self.next_revision and e.key.startswith(self.prefix)]
                    if batch:
                        break
                    if st.history and st.history[-1].revision >= self.next_revision:
                        self.next_revision = st.history[-1].revision + 1
                    st._cond.wait(0.5)
                self.next_revision = batch[-1].revision + 1
            yield [dc_replace(e) for e in batch]
