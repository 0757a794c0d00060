"""The object store on a real etcd (3.4, through its JSON gateway), from another namespace."""
from __future__ import annotations

import json
import threading

import pytest

from podnet.store import Conflict, ObjectStore, TooLarge

pytestmark = pytest.mark.root


def pod(name: str, **labels: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "default", "labels": labels or {"app": name}},
            "spec": {"containers": [{"name": "c", "image": "i"}]}}


def service(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "default"},
            "spec": {"type": "ClusterIP", "ports": [{"port": 80, "protocol": "TCP", "targetPort": 80}]}}


def test_apply_writes_every_key_in_one_revision(etcd_store):
    store = ObjectStore(etcd_store)
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}
    out = store.apply([pod("a"), pod("b"), node, service("web")])
    kvs = {kv.key: kv for kv in etcd_store.get_prefix("/podnet/registry/").items}
    assert sorted(kvs) == ["/podnet/registry/nodes/_/node-1", "/podnet/registry/pods/default/a",
                           "/podnet/registry/pods/default/b", "/podnet/registry/services/default/web"]
    assert len({kv.mod_revision for kv in kvs.values()}) == 1
    assert json.loads(kvs["/podnet/registry/pods/default/a"].value)["spec"]["containers"][0]["image"] == "i"
    assert out[3]["spec"]["clusterIP"] == "10.96.0.2"
    assert [a.action for a in store.apply_report([pod("a"), pod("b", app="x")])] == ["unchanged", "configured"]


def test_too_many_objects_for_one_transaction_store_nothing(etcd_store):
    store = ObjectStore(etcd_store)
    with pytest.raises(TooLarge):
        store.apply([pod(f"p{i}") for i in range(130)])       # etcd's default --max-txn-ops 128
    assert etcd_store.get_prefix("/podnet/registry/").items == []


def test_conflicts_and_status(etcd_store):
    store = ObjectStore(etcd_store)
    first = store.create(pod("a"))
    with pytest.raises(Conflict):
        store.create(pod("a"))
    store.patch_status("pods", "default", "a", {"phase": "Running"})
    with pytest.raises(Conflict):
        store.update(dict(first, spec={"nodeName": "node-1", **first["spec"]}))
    current = store.get("pods", "default", "a")
    assert current["status"] == {"phase": "Running"}
    updated = store.update(dict(current, spec={"nodeName": "node-1", **current["spec"]}))
    assert int(updated["metadata"]["resourceVersion"]) > int(current["metadata"]["resourceVersion"])
    assert updated["status"] == {"phase": "Running"}


def test_watch_from_the_root_namespace_through_the_client_namespace(etcd_store):
    store = ObjectStore(etcd_store)
    store.create(pod("a"))
    events, cond, stop = [], threading.Condition(), threading.Event()

    def handler(ev):
        with cond:
            events.append(ev)
            cond.notify_all()
    t = threading.Thread(target=store.watch, args=("pods", handler, stop), daemon=True)
    t.start()
    try:
        with cond:
            assert cond.wait_for(lambda: events, timeout=20)
        assert events[0][0] == "snapshot" and [o["metadata"]["name"] for o in events[0][1]] == ["a"]
        store.apply([pod("b")])
        store.delete("pods", "default", "a")
        with cond:
            assert cond.wait_for(lambda: len(events) >= 3, timeout=20)
        assert events[1][0] == "put" and events[1][1]["metadata"]["name"] == "b"
        assert events[2][:2] == ("delete", ("pods", "default", "a"))
        assert events[2][2]["metadata"]["name"] == "a"
    finally:
        stop.set()
        t.join(10)
    assert not t.is_alive()
