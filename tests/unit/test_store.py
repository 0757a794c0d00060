"""The object store on the in-memory etcd: keys, all-or-nothing apply, conflicts, status
patches, and watches that resync after a broken or compacted watch."""
from __future__ import annotations

import base64
import json
import threading

import pytest

from podnet.etcd import KeyValue, WatchEvent
from podnet.store import (KINDS, Conflict, NotFoundError, ObjectStore, parse_etcd_key,
                          resource_for_kind)
from tests.fakes.etcd import FakeStore


def _d(s: str) -> str:
    return base64.b64decode(s).decode()


class TxnFakeStore(FakeStore):
    """FakeStore plus etcd's multi-key transaction (gateway JSON), one revision per txn."""

    def _holds(self, cmp: dict) -> bool:
        key = _d(cmp["key"])
        if "range_end" in cmp:
            end = _d(cmp["range_end"])
            kvs = [kv for k, kv in self.kvs.items() if key <= k < end]
        else:
            kvs = [self.kvs.get(key)]
        for kv in kvs:
            target = cmp["target"]
            if target == "VERSION":
                have, want = (kv.version if kv else 0), int(cmp["version"])
            elif target == "MOD":
                have, want = (kv.mod_revision if kv else 0), int(cmp["mod_revision"])
            else:
                have, want = (kv.value if kv else None), base64.b64decode(cmp["value"])
            ok = {"EQUAL": have == want, "NOT_EQUAL": have != want,
                  "LESS": have is not None and want is not None and have < want,
                  "GREATER": have is not None and want is not None and have > want}[cmp["result"]]
            if not ok:
                return False
        return True

    def txn(self, compare, success, failure=None):
        self._check()
        self.txns += 1
        if not all(self._holds(c) for c in compare):
            return False
        if success:
            self.rev += 1
        for op in success:
            put = op["request_put"]
            key, value = _d(put["key"]), base64.b64decode(put["value"])
            old = self.kvs.get(key)
            self.kvs[key] = KeyValue(key, value, self.rev, old.create_revision if old else self.rev,
                                     (old.version if old else 0) + 1, 0)
            self._bump(WatchEvent("PUT", key, value, self.rev, 0))
        return True

    txns = 0


def pod(name: str, ns: str | None = None, node: str | None = None, **labels: str) -> dict:
    meta: dict = {"name": name, "labels": labels or {"app": name}}
    if ns:
        meta["namespace"] = ns
    spec: dict = {"containers": [{"name": "c", "image": "i"}]}
    if node:
        spec["nodeName"] = node
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def service(name: str, ip: str | None = None) -> dict:
    spec: dict = {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}
    if ip:
        spec["clusterIP"] = ip
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": spec}


@pytest.fixture
def etcd():
    return TxnFakeStore()


@pytest.fixture
def store(etcd):
    ids = iter(range(1, 10_000))
    return ObjectStore(etcd, clock=lambda: 1_700_000_000, uid=lambda: f"uid-{next(ids)}")


def test_kinds_and_keys():
    assert resource_for_kind("NetworkPolicy") == "networkpolicies"
    assert KINDS["Node"].namespaced is False and KINDS["Pod"].namespaced is True
    assert parse_etcd_key("/podnet/registry/nodes/_/node-1") == ("nodes", "", "node-1")
    assert parse_etcd_key("/podnet/registry/pods/ns/web") == ("pods", "ns", "web")
    assert parse_etcd_key("/coreos.com/network/config") is None


def test_create_stores_json_under_the_registry_key(store, etcd):
    created = store.create(pod("web"))
    kv = etcd.kvs["/podnet/registry/pods/default/web"]
    stored = json.loads(kv.value)
    assert stored["metadata"] == {"name": "web", "labels": {"app": "web"}, "namespace": "default",
                                  "uid": "uid-1", "creationTimestamp": "2023-11-14T22:13:20Z"}
    assert "resourceVersion" not in stored["metadata"]          # it is the mod revision
    assert created["metadata"]["resourceVersion"] == str(kv.mod_revision)
    store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    assert "/podnet/registry/nodes/_/node-1" in etcd.kvs
    with pytest.raises(Conflict):
        store.create(pod("web"))


def test_get_and_list_sorted_by_namespace_then_name(store):
    for name, ns in [("b", "default"), ("a", "default"), ("x", "a-b"), ("y", "a")]:
        store.create(pod(name, ns))
    objs, rev = store.list("pods")
    assert [(o["metadata"]["namespace"], o["metadata"]["name"]) for o in objs] == [
        ("a", "y"), ("a-b", "x"), ("default", "a"), ("default", "b")]
    assert rev > 0
    assert [o["metadata"]["name"] for o in store.list("pods", "a")[0]] == ["y"]
    assert store.get("pods", "a-b", "x")["metadata"]["uid"]
    assert store.get("pods", "default", "nope") is None


def test_apply_creates_and_reports_then_unchanged_then_configured(store, etcd):
    first = store.apply_report([pod("a"), pod("b")])
    assert [r.action for r in first] == ["created", "created"]
    rev = etcd.rev
    again = store.apply_report([pod("a"), pod("b")])
    assert [r.action for r in again] == ["unchanged", "unchanged"]
    assert etcd.rev == rev                       # nothing rewritten: no watch events
    changed = store.apply_report([pod("a", app="other"), pod("b")])
    assert [r.action for r in changed] == ["configured", "unchanged"]
    a = store.get("pods", "default", "a")
    assert a["metadata"]["labels"] == {"app": "other"}
    assert a["metadata"]["uid"] == first[0].obj["metadata"]["uid"]     # kept


def test_apply_is_one_transaction_at_one_revision(store, etcd):
    objs = store.apply([pod("a"), pod("b"), pod("c")])
    assert etcd.txns == 1
    assert {o["metadata"]["resourceVersion"] for o in objs} == {str(etcd.rev)}


def test_apply_is_all_or_nothing_when_etcd_refuses(store, etcd):
    store.apply([pod("a")])
    before = dict(etcd.kvs)

    def refuse(*_a, **_kw):
        from podnet.etcd import StoreError
        raise StoreError("etcdserver: too many operations in txn request")
    etcd.txn = refuse
    from podnet.store import TooLarge
    with pytest.raises(TooLarge):
        store.apply([pod("a", app="x"), pod("b"), pod("c")])
    assert etcd.kvs == before


def test_apply_retries_when_a_key_changes_under_it(store, etcd):
    store.apply([pod("a")])
    real_txn = etcd.txn
    raced = []

    def racing_txn(compare, success, failure=None):
        if not raced:                          # someone writes between our read and txn
            raced.append(1)
            store.patch_status("pods", "default", "a", {"phase": "Running"})
        return real_txn(compare, success, failure)
    etcd.txn = racing_txn
    [a] = store.apply([pod("a", app="new")])
    assert a["metadata"]["labels"] == {"app": "new"}
    assert a["status"] == {"phase": "Running"}     # the racing write is not lost


def test_apply_gives_up_with_conflict_when_always_raced(store, etcd):
    store.apply([pod("a")])
    etcd.txn = lambda *a, **kw: False
    with pytest.raises(Conflict):
        store.apply([pod("a", app="new")])
    assert store.get("pods", "default", "a")["metadata"]["labels"] == {"app": "a"}


def test_apply_keeps_status_and_allocates_cluster_ips(store):
    store.apply([pod("a")])
    store.patch_status("pods", "default", "a", {"phase": "Running", "podIP": "10.244.1.2"})
    [a] = store.apply([pod("a")])
    assert a["status"]["podIP"] == "10.244.1.2"
    s1, s2, s3 = store.apply([service("s1"), service("s2", ip="10.96.0.3"), service("s3")])
    assert s1["spec"]["clusterIP"] == "10.96.0.2"
    assert s2["spec"]["clusterIP"] == "10.96.0.3"
    assert s3["spec"]["clusterIP"] == "10.96.0.4"
    again = store.apply_report([service("s1")])
    assert again[0].action == "unchanged" and again[0].obj["spec"]["clusterIP"] == "10.96.0.2"


def test_update_compares_resource_version(store):
    created = store.create(pod("a"))
    fresh = dict(created, spec=dict(created["spec"], nodeName="node-1"))
    updated = store.update(fresh)
    assert updated["spec"]["nodeName"] == "node-1"
    stale = dict(created, spec=dict(created["spec"], nodeName="node-2"))
    with pytest.raises(Conflict):
        store.update(stale)
    assert store.get("pods", "default", "a")["spec"]["nodeName"] == "node-1"
    store.delete("pods", "default", "a")
    with pytest.raises(NotFoundError):
        store.update(updated)


def test_patch_status_merges_and_survives_a_racing_writer(store, etcd):
    store.create(pod("a"))
    store.patch_status("pods", "default", "a", {"phase": "Pending"})
    raced = []

    def racer(op, key):
        if not raced:
            raced.append(key)
            etcd.before_write = None
            store.patch_status("pods", "default", "a", {"hostIP": "192.168.0.2"})
    etcd.before_write = racer
    out = store.patch_status("pods", "default", "a", {"phase": "Running", "podIP": "10.0.0.5"})
    assert raced
    assert out["status"] == {"phase": "Running", "hostIP": "192.168.0.2", "podIP": "10.0.0.5"}
    with pytest.raises(NotFoundError):
        store.patch_status("pods", "default", "gone", {"phase": "Running"})


def test_delete(store):
    store.create(pod("a"))
    assert store.delete("pods", "default", "a") is True
    assert store.delete("pods", "default", "a") is False
    assert store.get("pods", "default", "a") is None


# -- watch --------------------------------------------------------------------------------

class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple] = []
        self.cond = threading.Condition()

    def __call__(self, event: tuple) -> None:
        with self.cond:
            self.events.append(event)
            self.cond.notify_all()

    def wait_for(self, pred, what: str) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: pred(self.events), timeout=20):
                raise AssertionError(f"never saw {what}; events: {self.events}")

    def snapshots(self):
        return [e[1] for e in self.events if e[0] == "snapshot"]


def run_watch(store, resource="pods", **kw):
    rec, stop = Recorder(), threading.Event()
    t = threading.Thread(target=store.watch, args=(resource, rec, stop), kwargs=kw, daemon=True)
    t.start()
    return rec, stop, t


def names(objs):
    return sorted(o["metadata"]["name"] for o in objs)


def test_watch_snapshot_then_puts_and_deletes_with_last_object(store):
    store.create(pod("a"))
    rec, stop, t = run_watch(store)
    try:
        rec.wait_for(lambda ev: ev and ev[0][0] == "snapshot", "the snapshot")
        assert names(rec.events[0][1]) == ["a"]
        store.create(pod("b"))
        store.patch_status("pods", "default", "a", {"phase": "Running"})
        store.delete("pods", "default", "a")
        rec.wait_for(lambda ev: any(e[0] == "delete" for e in ev), "the delete")
        kinds = [(e[0], e[1]["metadata"]["name"] if e[0] == "put" else e[1]) for e in rec.events[1:]]
        assert kinds == [("put", "b"), ("put", "a"), ("delete", ("pods", "default", "a"))]
        last = rec.events[-1][2]
        assert last["status"] == {"phase": "Running"}
        assert rec.events[2][1]["metadata"]["resourceVersion"]      # from the event's revision
    finally:
        stop.set()
        t.join(10)


def test_watch_resyncs_after_a_broken_watch(store, etcd):
    store.create(pod("a"))
    rec, stop, t = run_watch(store)
    try:
        rec.wait_for(lambda ev: len(rec.snapshots()) == 1, "the first snapshot")
        etcd.down = True
        etcd.break_watches()

        def changes():
            store.delete("pods", "default", "a")
            store.create(pod("c"))
            etcd.compact(etcd.rev)
        etcd.while_down(changes)
        etcd.down = False
        rec.wait_for(lambda ev: len(rec.snapshots()) == 2, "a resync snapshot")
        assert names(rec.snapshots()[1]) == ["c"]
    finally:
        stop.set()
        t.join(10)


class CompactingStore(TxnFakeStore):
    """Compacts past the listed revision before the first watch starts (a slow client)."""
    compacted = False

    def watch_prefix(self, prefix, start_revision):
        if not self.compacted:
            self.compacted = True
            self._put("/podnet/registry/pods/default/late", json.dumps(pod("late")), 0)
            self.compact(self.rev)
        return super().watch_prefix(prefix, start_revision)


def test_watch_relists_when_its_revision_was_compacted():
    etcd = CompactingStore()
    store = ObjectStore(etcd)
    store.create(pod("a"))
    rec, stop, t = run_watch(store)
    try:
        rec.wait_for(lambda ev: len(rec.snapshots()) == 2, "a snapshot after compaction")
        assert names(rec.snapshots()[0]) == ["a"]
        assert names(rec.snapshots()[1]) == ["a", "late"]
    finally:
        stop.set()
        t.join(10)


def test_watch_of_one_namespace_and_of_cluster_scoped_kinds(store):
    store.create(pod("a", "one"))
    store.create(pod("b", "two"))
    store.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}})
    rec, stop, t = run_watch(store, namespace="two")
    rec2, stop2, t2 = run_watch(store, resource="nodes")
    try:
        rec.wait_for(lambda ev: ev, "a snapshot")
        rec2.wait_for(lambda ev: ev, "a snapshot")
        assert names(rec.events[0][1]) == ["b"]
        assert names(rec2.events[0][1]) == ["node-1"]
        store.delete("nodes", None, "node-1")
        rec2.wait_for(lambda ev: len(ev) == 2, "the node delete")
        assert rec2.events[1][:2] == ("delete", ("nodes", "", "node-1"))
    finally:
        stop.set()
        stop2.set()
        t.join(10)
        t2.join(10)


# -- which cluster (podnet.cluster) ---------------------------------------------------------

def _state(root, name, **fields):
    d = root / name
    d.mkdir(parents=True)
    (d / "state.json").write_text(json.dumps(fields))


def test_cluster_resolution(tmp_path, monkeypatch):
    from argparse import Namespace

    from podnet.cluster import ClusterError, resolve
    monkeypatch.setenv("PODNET_LAB_ROOT", str(tmp_path))
    monkeypatch.delenv("PODNET_ETCD_ENDPOINTS", raising=False)
    monkeypatch.delenv("PODNET_LAB", raising=False)
    with pytest.raises(ClusterError, match="no cluster selected"):
        resolve(Namespace(lab=None, etcd_endpoints=None))
    _state(tmp_path, "one", etcd_endpoints=["http://10.0.0.1:2379"], etcd_netns="pn-etcd")
    assert resolve(Namespace(lab=None, etcd_endpoints=None))[:2] == (["http://10.0.0.1:2379"], "pn-etcd")
    _state(tmp_path, "lab", etcd_endpoints=["http://10.0.0.2:2379"], client_netns="pn-ctl",
           etcd_netns="pn-etcd2")
    assert resolve(Namespace(lab=None, etcd_endpoints=None))[:2] == (["http://10.0.0.2:2379"], "pn-ctl")
    assert resolve(Namespace(lab="one", etcd_endpoints=None))[0] == ["http://10.0.0.1:2379"]
    assert resolve(Namespace(lab=None, etcd_endpoints="http://a:1, http://b:2"))[:2] == (
        ["http://a:1", "http://b:2"], None)
    monkeypatch.setenv("PODNET_ETCD_ENDPOINTS", "http://c:3")
    assert resolve(Namespace(lab=None, etcd_endpoints=None))[0] == ["http://c:3"]
    assert resolve(Namespace(lab="one", etcd_endpoints=None))[0] == ["http://10.0.0.1:2379"]
    with pytest.raises(ClusterError, match="either"):
        resolve(Namespace(lab="one", etcd_endpoints="http://a:1"))
    with pytest.raises(ClusterError, match='lab "nope" not found'):
        resolve(Namespace(lab="nope", etcd_endpoints=None))


def test_kind_aliases():
    from podnet.cli_objects import CommandError, resolve_kind
    assert {resolve_kind(k) for k in ("po", "pod", "Pods", "pods")} == {"pods"}
    assert resolve_kind("svc") == "services" and resolve_kind("no") == "nodes"
    assert resolve_kind("ns") == "namespaces" and resolve_kind("netpol") == "networkpolicies"
    assert resolve_kind("endpointslice") == "endpointslices" and resolve_kind("subnet") == "subnets"
    with pytest.raises(CommandError):
        resolve_kind("ep")


def test_apply_keeps_a_pods_binding_and_refuses_spec_changes(store):
    from podnet.store import Invalid
    store.apply([pod("a")])
    bound = store.get("pods", "default", "a")
    bound["spec"]["nodeName"] = "node-2"                  # the scheduler's binding
    store.update(bound)
    [again] = store.apply_report([pod("a")])
    assert again.action == "unchanged" and again.obj["spec"]["nodeName"] == "node-2"
    with pytest.raises(Invalid, match=r'Pod "a" is invalid: spec: Forbidden.*changed: nodeName'):
        store.apply([pod("a", node="node-3")])
    changed = pod("a")
    changed["spec"]["containers"][0]["image"] = "other"
    with pytest.raises(Invalid, match="changed: containers"):
        store.apply([changed, pod("b")])
    assert store.get("pods", "default", "b") is None          # all or nothing


def test_service_cluster_ip_is_immutable(store):
    from podnet.store import Invalid
    store.apply([service("s", ip="10.96.0.7")])
    with pytest.raises(Invalid, match="field is immutable"):
        store.apply([service("s", ip="10.96.0.8")])


def test_apply_many_reads_by_range_and_reports_each(store, etcd):
    pods = [pod(f"p{i:02d}") for i in range(12)]
    assert {a.action for a in store.apply_report(pods)} == {"created"}
    pods[5] = pod("p05", app="changed")
    report = store.apply_report(pods)
    assert [a.action for a in report].count("configured") == 1 and report[5].action == "configured"
    assert report[5].obj["metadata"]["resourceVersion"] == str(etcd.rev)
