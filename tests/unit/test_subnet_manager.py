"""Subnet lease policy on an in-memory etcd: acquisition order, races, reservations,
renewal on a fake clock, and the lease watch.  Assertions are on the store's state."""
from __future__ import annotations

import json
import queue
import random
import threading
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel_py.config import parse_config
from flannel_py.subnet.manager import (LeaseAdded, LeaseRemoved, LeaseTracker, NoFreeSubnet,
                                       SubnetManager, free_subnets, plan_acquisition)
from flannel_py.subnet.registry import (Lease, LeaseAttrs, LeaseLost, SubnetRegistry,
                                        parse_subnet_key, subnet_key)
from podnet.etcd import KeyValue
from tests.fakes.etcd import FakeClock, FakeStore

PREFIX = "/coreos.com/network"
DAY = 24 * 3600
ME = IPv4Address("192.168.1.2")


def vx(ip, mac="aa:bb:cc:dd:ee:01"):
    return LeaseAttrs(IPv4Address(ip), "vxlan", {"VNI": 1, "VtepMAC": mac})


@pytest.fixture
def env():
    clock = FakeClock()
    store = FakeStore(clock)
    store.put(f"{PREFIX}/config", json.dumps({"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}))
    reg = SubnetRegistry(store, PREFIX, clock=clock)
    return store, reg, clock


def manager(reg, **kw):
    kw.setdefault("sleep", lambda s: None)
    kw.setdefault("rng", random.Random(7))
    return SubnetManager(reg, **kw)


def add_node(store, subnet, ip, ttl=DAY, mac="aa:bb:cc:00:00:99"):
    lid = store.lease_grant(ttl).id if ttl else 0
    store.put(f"{PREFIX}/subnets/{subnet_key(IPv4Network(subnet))}", vx(ip, mac).to_json(), lease=lid)
    return lid


def subnets_in(store):
    return {k.rsplit("/", 1)[1]: json.loads(kv.value)["PublicIP"]
            for k, kv in store.kvs.items() if "/subnets/" in k}


# -- keys and JSON --------------------------------------------------------------------------

def test_lease_json_is_upstreams():
    assert vx("192.168.1.2", "9a:2b:3c:4d:5e:6f").to_json() == (
        '{"PublicIP":"192.168.1.2","PublicIPv6":null,"BackendType":"vxlan",'
        '"BackendData":{"VNI":1,"VtepMAC":"9a:2b:3c:4d:5e:6f"}}')
    assert LeaseAttrs(IPv4Address("10.0.0.1"), "host-gw").to_json() == \
        '{"PublicIP":"10.0.0.1","PublicIPv6":null,"BackendType":"host-gw"}'
    assert LeaseAttrs(IPv4Address("10.0.0.1")).to_json() == '{"PublicIP":"10.0.0.1","PublicIPv6":null}'
    back = LeaseAttrs.from_json(vx("192.168.1.2").to_json())
    assert back == vx("192.168.1.2")


def test_subnet_keys():
    assert subnet_key(IPv4Network("10.244.3.0/24")) == "10.244.3.0-24"
    assert parse_subnet_key(f"{PREFIX}/subnets/10.244.3.0-24") == IPv4Network("10.244.3.0/24")
    assert parse_subnet_key("10.244.3.0-24&fd00:1::-64") == IPv4Network("10.244.3.0/24")
    assert parse_subnet_key(f"{PREFIX}/subnets/garbage") is None
    assert parse_subnet_key("10.244.3.0-32") is None


# -- acquisition ----------------------------------------------------------------------------

def test_fresh_node_gets_one_of_the_first_100_free_with_a_day_ttl(env):
    store, reg, clock = env
    add_node(store, "10.244.1.0/24", "192.168.1.10")
    lease = manager(reg).acquire(vx(ME))
    free = free_subnets(reg_config(reg), [])[:101]
    assert lease.subnet in free and lease.subnet != IPv4Network("10.244.1.0/24")
    key = f"{PREFIX}/subnets/{subnet_key(lease.subnet)}"
    assert store.kvs[key].value.decode() == vx(ME).to_json()
    assert store.ttl_of(key) == DAY
    assert lease.expiration == clock() + DAY


def reg_config(reg):
    return parse_config(reg.get_network_config())


def test_free_subnets_skips_overlaps_and_stops_at_100():
    config = parse_config('{"Network": "10.0.0.0/8"}')
    taken = [Lease(IPv4Network("10.0.0.0/22"), vx("1.1.1.1")),          # covers .1 .2 .3
             Lease(IPv4Network("10.0.5.0/24"), vx("1.1.1.2")),
             Lease(IPv4Network("10.0.6.128/25"), vx("1.1.1.3"))]       # foreign size
    free = free_subnets(config, taken)
    assert len(free) == 100
    assert [str(s) for s in free[:3]] == ["10.0.4.0/24", "10.0.7.0/24", "10.0.8.0/24"]


def test_reuses_the_lease_with_our_public_ip(env):
    store, reg, _ = env
    old_lid = add_node(store, "10.244.42.0/24", str(ME), mac="aa:aa:aa:aa:aa:aa")
    lease = manager(reg, previous_subnet=IPv4Network("10.244.9.0/24")).acquire(vx(ME))
    assert lease.subnet == IPv4Network("10.244.42.0/24")
    assert subnets_in(store) == {"10.244.42.0-24": str(ME)}
    kv = store.kvs[f"{PREFIX}/subnets/10.244.42.0-24"]
    assert json.loads(kv.value)["BackendData"]["VtepMAC"] == "aa:bb:cc:dd:ee:01"
    assert kv.lease != old_lid and old_lid not in store.leases     # old etcd lease revoked
    assert store.ttl_of(kv.key) == DAY


def test_incompatible_lease_with_our_ip_is_deleted(env):
    store, reg, _ = env
    store.put(f"{PREFIX}/subnets/10.244.42.0-25", vx(ME).to_json())   # wrong length
    lease = manager(reg).acquire(vx(ME))
    assert lease.subnet.prefixlen == 24
    assert subnets_in(store) == {subnet_key(lease.subnet): str(ME)}


def test_previous_subnet_is_taken_when_free(env):
    store, reg, _ = env
    lease = manager(reg, previous_subnet=IPv4Network("10.244.77.0/24")).acquire(vx(ME))
    assert lease.subnet == IPv4Network("10.244.77.0/24")


@pytest.mark.parametrize("previous", ["10.244.77.0/24", "10.244.0.0/24", "10.244.77.0/25", "10.9.0.0/24"])
def test_previous_subnet_skipped_when_taken_or_incompatible(env, previous):
    store, reg, _ = env
    add_node(store, "10.244.77.0/24", "192.168.1.50")
    lease = manager(reg, previous_subnet=IPv4Network(previous)).acquire(vx(ME))
    assert lease.subnet != IPv4Network(previous) and lease.subnet.prefixlen == 24
    assert subnets_in(store)["10.244.77.0-24"] == "192.168.1.50"


def test_previous_subnet_overlapping_a_foreign_sized_lease_is_not_taken(env):
    store, reg, _ = env
    store.put(f"{PREFIX}/subnets/10.244.76.0-23", vx("192.168.1.50").to_json())
    lease = manager(reg, previous_subnet=IPv4Network("10.244.77.0/24")).acquire(vx(ME))
    assert lease.subnet != IPv4Network("10.244.77.0/24")


def test_lost_race_is_retried_not_fatal(env):
    store, reg, _ = env
    stolen = []

    def racer(op, key):
        if op == "create" and not stolen:      # another node wins the first attempt
            stolen.append(key)
            store.put(key, vx("192.168.1.99").to_json(), lease=store.lease_grant(DAY).id)

    store.before_write = racer
    lease = manager(reg).acquire(vx(ME))
    assert stolen and lease.subnet != parse_subnet_key(stolen[0])
    owners = subnets_in(store)
    assert owners[stolen[0].rsplit("/", 1)[1]] == "192.168.1.99"
    assert owners[subnet_key(lease.subnet)] == str(ME)
    attached = {kv.lease for kv in store.kvs.values() if kv.lease}
    assert set(store.leases) == attached          # our losing etcd lease was revoked


def test_two_nodes_racing_on_a_nearly_full_network_get_distinct_subnets():
    clock = FakeClock()
    store = FakeStore(clock)
    store.put(f"{PREFIX}/config", '{"Network": "10.5.0.0/28"}')      # /30s: .4 .8 .12
    reg = SubnetRegistry(store, PREFIX, clock=clock)
    add_node(store, "10.5.0.4/30", "192.168.1.50")
    other = manager(reg, rng=random.Random(1))
    results = []

    def racer(op, key):           # node B acquires in the middle of node A's attempt
        if op == "create" and not results:
            store.before_write = None
            results.append(other.acquire(vx("192.168.1.51")))

    store.before_write = racer
    mine = manager(reg, rng=random.Random(1)).acquire(vx(ME))      # same rng: same first pick
    assert {mine.subnet, results[0].subnet} == {IPv4Network("10.5.0.8/30"), IPv4Network("10.5.0.12/30")}
    with pytest.raises(NoFreeSubnet, match="out of subnets"):
        manager(reg).acquire(vx("192.168.1.52"))


def test_reservation_is_reused_and_stays_without_ttl(env):
    store, reg, _ = env
    add_node(store, "10.244.200.0/24", str(ME), ttl=0, mac="11:11:11:11:11:11")
    add_node(store, "10.244.201.0/24", "192.168.1.60", ttl=0)
    lease = manager(reg).acquire(vx(ME))
    assert lease.subnet == IPv4Network("10.244.200.0/24") and lease.reservation
    kv = store.kvs[f"{PREFIX}/subnets/10.244.200.0-24"]
    assert kv.lease == 0 and json.loads(kv.value)["BackendData"]["VtepMAC"] == "aa:bb:cc:dd:ee:01"
    assert store.kvs[f"{PREFIX}/subnets/10.244.201.0-24"].lease == 0          # untouched
    # someone else's reservation is never handed out
    other = manager(reg).acquire(vx("192.168.1.61"))
    assert other.subnet not in (IPv4Network("10.244.200.0/24"), IPv4Network("10.244.201.0/24"))


def test_plan_order_is_reuse_then_previous_then_random():
    config = parse_config('{"Network": "10.244.0.0/16"}')
    mine = Lease(IPv4Network("10.244.5.0/24"), vx(ME))
    prev = IPv4Network("10.244.6.0/24")
    first = lambda c: c[0]
    assert plan_acquisition(config, [mine], ME, prev, first).action == "reuse"
    p = plan_acquisition(config, [], ME, prev, first)
    assert (p.action, p.subnet) == ("create", prev)
    p = plan_acquisition(config, [], ME, None, first)
    assert (p.action, p.subnet) == ("create", IPv4Network("10.244.1.0/24"))


# -- renewal --------------------------------------------------------------------------------

class ClockWait:
    """``wait(seconds)`` for run_renewal: advances the fake clock; stops after ``n`` waits."""

    def __init__(self, clock, n, before=None):
        self.clock, self.n, self.before = clock, n, before or {}

    def __call__(self, seconds):
        if self.n == 0:
            return True
        self.n -= 1
        self.clock.advance(seconds)
        hook = self.before.get(self.n)
        if hook:
            hook()
        return False


def test_renewal_one_margin_before_expiry(env):
    store, reg, clock = env
    m = manager(reg, renew_margin_minutes=60)
    lease = m.acquire(vx(ME))
    start = clock()
    assert m.renew_delay(lease) == DAY - 3600
    lease = m.run_renewal(lease, threading.Event(), wait=ClockWait(clock, 1))
    assert clock() == start + DAY - 3600
    assert store.ttl_of(lease.key) == DAY                  # extended by a full day
    assert lease.expiration == clock() + DAY


def test_renewal_retries_every_minute_while_etcd_is_down(env):
    store, reg, clock = env
    m = manager(reg, renew_margin_minutes=30)
    lease = m.acquire(vx(ME))
    start = clock()
    down = lambda: setattr(store, "down", True)
    up = lambda: setattr(store, "down", False)
    # waits: due (etcd down) -> +60 s (still down) -> +60 s (up again) -> stop
    wait = ClockWait(clock, 3, before={2: down, 0: up})
    lease = m.run_renewal(lease, threading.Event(), wait=wait)
    renewed_at = start + DAY - 1800 + 120
    assert lease.expiration == renewed_at + DAY
    assert clock() == renewed_at and store.ttl_of(lease.key) == DAY


def test_renewal_after_expiry_writes_the_key_again(env):
    store, reg, clock = env
    m = manager(reg)
    lease = m.acquire(vx(ME))
    clock.advance(DAY + 5)                     # etcd kept the key alive no longer
    assert store.get(lease.key) is None
    renewed = m.renew(lease)
    assert renewed.subnet == lease.subnet and store.ttl_of(lease.key) == DAY


def test_renewal_reports_a_lost_subnet(env):
    store, reg, clock = env
    m = manager(reg)
    lease = m.acquire(vx(ME))
    clock.advance(DAY + 5)
    store.put(lease.key, vx("192.168.1.99").to_json())
    lost = []
    m.run_renewal(lease, threading.Event(), wait=ClockWait(clock, 1), on_lost=lost.append)
    assert len(lost) == 1 and isinstance(lost[0], LeaseLost)
    assert json.loads(store.kvs[lease.key].value)["PublicIP"] == "192.168.1.99"


def test_renew_margin_range_is_checked(env):
    _, reg, _ = env
    with pytest.raises(ValueError, match="subnet-lease-renew-margin"):
        manager(reg, renew_margin_minutes=1440)


# -- watching -------------------------------------------------------------------------------

def test_tracker_diffs_snapshots_and_ignores_our_subnet(env):
    store, reg, _ = env
    own = IPv4Network("10.244.1.0/24")
    t = LeaseTracker(reg, own)
    kv = lambda sn, ip, mac="aa:bb:cc:00:00:01": KeyValue(
        f"{PREFIX}/subnets/{subnet_key(IPv4Network(sn))}", vx(ip, mac).to_json().encode())
    ev = t.snapshot([kv("10.244.1.0/24", str(ME)), kv("10.244.2.0/24", "10.0.0.2"),
                     kv("10.244.3.0/24", "10.0.0.3")])
    assert sorted(str(e.lease.subnet) for e in ev if isinstance(e, LeaseAdded)) == \
        ["10.244.2.0/24", "10.244.3.0/24"]
    ev = t.snapshot([kv("10.244.1.0/24", str(ME)), kv("10.244.3.0/24", "10.0.0.3", "aa:bb:cc:00:00:07"),
                     kv("10.244.4.0/24", "10.0.0.4")])
    summary = sorted((type(e).__name__, str(e.lease.subnet)) for e in ev)
    assert summary == [("LeaseAdded", "10.244.3.0/24"), ("LeaseAdded", "10.244.4.0/24"),
                       ("LeaseRemoved", "10.244.2.0/24")]
    assert t.delete(f"{PREFIX}/subnets/10.244.1.0-24") == [] and t.own_removed
    assert sorted(map(str, t.leases)) == ["10.244.3.0/24", "10.244.4.0/24"]


def test_watch_leases_reports_other_nodes_and_resyncs(env):
    store, reg, _ = env
    m = manager(reg)
    own = m.acquire(vx(ME))
    add_node(store, "10.244.50.0/24", "10.0.0.50")
    got: queue.Queue = queue.Queue()
    own_gone = threading.Event()
    stop = threading.Event()
    t = threading.Thread(target=m.watch_leases, args=(own.subnet, got.put, stop),
                         kwargs={"on_own_removed": own_gone.set}, daemon=True)
    t.start()
    try:
        first = got.get(timeout=10)
        assert [(type(e), str(e.lease.subnet)) for e in first] == [(LeaseAdded, "10.244.50.0/24")]
        add_node(store, "10.244.51.0/24", "10.0.0.51")
        ev = got.get(timeout=10)
        assert [(type(e), str(e.lease.subnet), str(e.lease.attrs.public_ip)) for e in ev] == \
            [(LeaseAdded, "10.244.51.0/24", "10.0.0.51")]
        store.delete(f"{PREFIX}/subnets/10.244.50.0-24")
        ev = got.get(timeout=10)
        assert [(type(e), str(e.lease.subnet)) for e in ev] == [(LeaseRemoved, "10.244.50.0/24")]
        # while the watch is broken: a node leaves, another joins, history is compacted
        store.down = True
        store.break_watches()

        def changes():
            store.delete(f"{PREFIX}/subnets/10.244.51.0-24")
            add_node(store, "10.244.52.0/24", "10.0.0.52")
            store.compact(store.rev)
        store.while_down(changes)
        store.down = False
        ev = got.get(timeout=10)
        assert sorted((type(e).__name__, str(e.lease.subnet)) for e in ev) == \
            [("LeaseAdded", "10.244.52.0/24"), ("LeaseRemoved", "10.244.51.0/24")]
        store.delete(own.key)
        assert own_gone.wait(10)
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()


# -- the etcd layer's pure helpers (podnet.etcd) --------------------------------------------

def test_backoff_is_capped_and_jittered():
    from podnet.etcd import Backoff
    b = Backoff(0.1, 5.0, rng=lambda: 1.0)
    assert [round(b.next(), 3) for _ in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    low = Backoff(0.1, 5.0, rng=lambda: 0.0)
    assert [round(low.next(), 3) for _ in range(3)] == [0.05, 0.1, 0.2]
    b.reset()
    assert round(b.next(), 3) == 0.1


def test_retry_retries_only_the_retryable():
    from podnet.etcd import StoreError, Unavailable, retry
    slept, outcomes = [], [Unavailable("down"), Unavailable("down"), "ok"]

    def flaky():
        item = outcomes.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    assert retry(flaky, sleep=slept.append) == "ok" and len(slept) == 2 and outcomes == []

    def broken():
        raise StoreError("bad request")

    with pytest.raises(StoreError, match="bad request"):
        retry(broken, sleep=slept.append)
    assert len(slept) == 2
    with pytest.raises(Unavailable):
        retry(lambda: (_ for _ in ()).throw(Unavailable("x")), attempts=3, sleep=slept.append)
    assert len(slept) == 4


def test_prefix_end_and_endpoints():
    from podnet.etcd import parse_endpoint, prefix_end
    assert prefix_end("/coreos.com/network/subnets/") == b"/coreos.com/network/subnets0"
    assert prefix_end(b"a\xff") == b"b"
    assert parse_endpoint("http://10.0.0.1:2379") == ("http", "10.0.0.1", 2379)
    assert parse_endpoint("https://[fd00::1]:2379") == ("https", "fd00::1", 2379)
    assert parse_endpoint("etcd.local") == ("http", "etcd.local", 2379)
    with pytest.raises(ValueError):
        parse_endpoint("unix:///run/etcd.sock")


def test_watch_stream_lines_split_across_chunks():
    from podnet.etcd import _json_lines

    class Resp:
        def iter_content(self, chunk_size=None):
            yield b'{"result":{"created":tr'
            yield b'ue}}\n{"result":{"events":[]}}\n\n{"res'
            yield b'ult":{}}'

    assert list(_json_lines(Resp())) == [{"result": {"created": True}},
                                         {"result": {"events": []}}, {"result": {}}]
