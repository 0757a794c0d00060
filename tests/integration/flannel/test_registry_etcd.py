"""The etcd layer and flannel's registry against a real etcd (Debian's 3.4) in a netns."""
from __future__ import annotations

import json
import queue
import random
import threading
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel_py.subnet.manager import LeaseAdded, LeaseRemoved, SubnetManager
from flannel_py.subnet.registry import LeaseAttrs, SubnetRegistry
from podnet.etcd import Compacted, Store, Unavailable, list_and_watch

pytestmark = pytest.mark.root

PREFIX = "/coreos.com/network"
DAY = 24 * 3600


def vx(ip, mac="9a:2b:3c:4d:5e:6f"):
    return LeaseAttrs(IPv4Address(ip), "vxlan", {"VNI": 1, "VtepMAC": mac})


def put_config(store, network="10.244.0.0/16"):
    store.put(f"{PREFIX}/config", json.dumps({"Network": network, "Backend": {"Type": "vxlan"}}))


def test_lease_json_and_ttl_as_upstream(etcd):
    with etcd.client():
        store = Store([etcd.url])
        put_config(store)
        m = SubnetManager(SubnetRegistry(store, PREFIX))
        lease = m.acquire(vx("192.168.1.2"))
        kv = store.get(lease.key)
        assert lease.key == f"{PREFIX}/subnets/{lease.subnet.network_address}-24"
        assert kv.value == (b'{"PublicIP":"192.168.1.2","PublicIPv6":null,"BackendType":"vxlan",'
                            b'"BackendData":{"VNI":1,"VtepMAC":"9a:2b:3c:4d:5e:6f"}}')
        assert kv.lease == lease.lease_id != 0
        assert DAY - 60 < store.lease_ttl(kv.lease) <= DAY
        # a restarted node (same PublicIP, new MAC) keeps its subnet under a fresh lease
        again = m.acquire(vx("192.168.1.2", "02:00:00:00:00:01"))
        assert again.subnet == lease.subnet and again.lease_id != lease.lease_id
        assert store.lease_ttl(lease.lease_id) == -1
        assert json.loads(store.get(lease.key).value)["BackendData"]["VtepMAC"] == "02:00:00:00:00:01"


def test_reservation_without_lease_stays(etcd):
    with etcd.client():
        store = Store([etcd.url])
        put_config(store)
        key = f"{PREFIX}/subnets/10.244.9.0-24"
        store.put(key, vx("192.168.1.2").to_json())
        lease = SubnetManager(SubnetRegistry(store, PREFIX)).acquire(vx("192.168.1.2", "02:00:00:00:00:02"))
        assert lease.subnet == IPv4Network("10.244.9.0/24") and lease.reservation
        kv = store.get(key)
        assert kv.lease == 0 and b"02:00:00:00:00:02" in kv.value


def test_create_race_between_two_clients(etcd):
    with etcd.client():
        stores = [Store([etcd.url]), Store([etcd.url])]
        regs = [SubnetRegistry(s, PREFIX) for s in stores]
        barrier = threading.Barrier(2)
        results = [None, None]
        subnet = IPv4Network("10.244.5.0/24")

        def contend(i):
            barrier.wait()
            results[i] = regs[i].create_lease(subnet, vx(f"192.168.1.{10 + i}"), DAY)

        threads = [threading.Thread(target=contend, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        kv = stores[0].get(f"{PREFIX}/subnets/10.244.5.0-24")
        assert json.loads(kv.value)["PublicIP"] == str(winners[0].attrs.public_ip)
        assert kv.lease == winners[0].lease_id
        leases = stores[0]._call("lease/leases", {}).get("leases", [])
        assert [int(l["ID"]) for l in leases] == [winners[0].lease_id]     # loser's revoked


def test_two_managers_on_a_nearly_full_network_get_distinct_subnets(etcd):
    with etcd.client():
        setup = Store([etcd.url])
        put_config(setup, "10.5.0.0/28")                 # three /30 subnets
        setup.put(f"{PREFIX}/subnets/10.5.0.4-30", vx("192.168.1.50").to_json())
        results, errors = [], []
        barrier = threading.Barrier(2)

        def node(i):
            m = SubnetManager(SubnetRegistry(Store([etcd.url]), PREFIX), rng=random.Random(3))
            barrier.wait()
            try:
                results.append(m.acquire(vx(f"192.168.1.{60 + i}")))
            except Exception as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=node, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        assert sorted(str(l.subnet) for l in results) == ["10.5.0.12/30", "10.5.0.8/30"]


def test_watch_events_and_compaction(etcd):
    with etcd.client():
        store = Store([etcd.url])
        base = store.put("/t/a", "1")
        store.put("/t/a", "2")
        store.delete("/t/a")
        with store.watch_prefix("/t/", base) as w:
            batch = next(iter(w))
        assert [(e.type, e.key, e.value) for e in batch] == \
            [("PUT", "/t/a", b"1"), ("PUT", "/t/a", b"2"), ("DELETE", "/t/a", b"")]
        store.compact(store.revision())
        with pytest.raises(Compacted) as err:
            with store.watch_prefix("/t/", base) as w:
                next(iter(w))
        assert err.value.revision >= base + 2


def test_list_and_watch_resyncs_after_compaction(etcd):
    """The first list's revision is compacted before the watch starts: the watch fails
    with Compacted and list_and_watch re-lists instead of giving up or spinning."""
    with etcd.client():
        store = Store([etcd.url])
        store.put("/lw/a", "1")

        class StaleFirstList(Store):
            calls = 0

            def get_prefix(self, prefix):
                listing = super().get_prefix(prefix)
                StaleFirstList.calls += 1
                if StaleFirstList.calls == 1:
                    store.put("/lw/b", "2")
                    store.put("/elsewhere", "x")       # compaction keeps its own revision
                    store.compact(store.revision())
                return listing

        seen: queue.Queue = queue.Queue()
        stop = threading.Event()
        watcher = StaleFirstList([etcd.url])
        t = threading.Thread(target=list_and_watch, args=(watcher, "/lw/", lambda *a: seen.put(a[:3])),
                             kwargs={"stop_event": stop}, daemon=True)
        t.start()
        try:
            first = seen.get(timeout=20)
            second = seen.get(timeout=20)
            assert first[0] == "snapshot" and [kv.key for kv in first[1]] == ["/lw/a"]
            assert second[0] == "snapshot" and [kv.key for kv in second[1]] == ["/lw/a", "/lw/b"]
            store.put("/lw/c", "3")
            assert seen.get(timeout=20) == ("put", "/lw/c", b"3")
        finally:
            stop.set()
            t.join(20)
        assert not t.is_alive()


def test_failover_to_the_next_endpoint(etcd):
    with etcd.client():
        store = Store([etcd.dead_url, etcd.url], timeout=2)
        store.put("/f/x", "1")
        assert store.get("/f/x").value == b"1"
        assert store.current_endpoint == etcd.url
        with store.watch_prefix("/f/", 1) as w:
            assert [e.key for e in next(iter(w))] == ["/f/x"]
        only_dead = Store([etcd.dead_url], timeout=2)
        with pytest.raises(Unavailable, match="etcd unavailable"):
            only_dead.get("/f/x")


def test_watch_survives_an_etcd_restart(etcd):
    """A watch whose etcd goes away raises Unavailable; list_and_watch re-lists when
    etcd is back and sees what changed meanwhile."""
    with etcd.client():
        store = Store([etcd.url], timeout=2, watch_idle=5)
        put_config(store)
        reg = SubnetRegistry(store, PREFIX)
        m = SubnetManager(reg)
        own = m.acquire(vx("192.168.1.2"))
        other = SubnetRegistry(Store([etcd.url]), PREFIX).create_lease(
            IPv4Network("10.244.100.0/24"), vx("192.168.1.100"), DAY)
        got: queue.Queue = queue.Queue()
        stop = threading.Event()
        t = threading.Thread(target=m.watch_leases, args=(own.subnet, got.put, stop), daemon=True)
        t.start()
        try:
            first = got.get(timeout=60)  # generous: a loaded CI machine is slow, not wrong
            assert [(type(e), e.lease.subnet) for e in first] == [(LeaseAdded, other.subnet)]
            with store.watch_prefix("/nothing/", store.revision() + 1) as w:
                etcd.stop()
                with pytest.raises(Unavailable):
                    next(iter(w))
            etcd.start()
            # changes made right after the restart reach the watcher (by resync or watch)
            writer = Store([etcd.url])
            writer.delete(other.key)
            SubnetRegistry(writer, PREFIX).create_lease(IPv4Network("10.244.101.0/24"),
                                                        vx("192.168.1.101"), DAY)
            seen = set()
            while seen != {("removed", "10.244.100.0/24"), ("added", "10.244.101.0/24")}:
                for e in got.get(timeout=30):
                    seen.add(("added" if isinstance(e, LeaseAdded) else "removed", str(e.lease.subnet)))
            assert all(isinstance(e, (LeaseAdded, LeaseRemoved)) for e in first)
        finally:
            stop.set()
            t.join(20)
        assert not t.is_alive()
