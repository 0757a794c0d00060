"""The endpoints controller: Pods + Services → EndpointSlices, and its one-leader election."""
from __future__ import annotations

import itertools

from kubeproxy_py import endpoints as E
from podnet.etcd import Grant, KeyValue


def pod(name, ip, labels=None, *, node="node-1", ready=True, phase="Running", ports=(), ns="default"):
    return {"kind": "Pod", "metadata": {"name": name, "namespace": ns, "uid": f"uid-{name}",
                                        "labels": labels if labels is not None else {"app": "web"}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": list(ports)}]},
            "status": {"phase": phase, "podIP": ip,
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def svc(name="web", selector=None, ports=None, ns="default"):
    spec = {"clusterIP": "10.96.0.10",
            "ports": ports or [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": 8080}]}
    if selector is not False:
        spec["selector"] = selector or {"app": "web"}
    return {"kind": "Service", "metadata": {"name": name, "namespace": ns, "uid": "svc-uid"},
            "spec": spec}


def test_slice_from_selected_running_pods():
    pods = [pod("b", "10.244.2.3", node="node-2"), pod("a", "10.244.1.2"),
            pod("other", "10.244.1.9", {"app": "db"}), pod("pending", None, phase="Pending"),
            pod("elsewhere", "10.244.3.3", ns="kube-system")]
    [sl] = E.service_slices(svc(), pods)
    assert sl["metadata"]["name"].startswith("web-") and len(sl["metadata"]["name"]) == 9
    assert sl["metadata"]["labels"] == {E.SERVICE_NAME_LABEL: "web", E.MANAGED_BY_LABEL: E.MANAGED_BY}
    assert sl["addressType"] == "IPv4"
    assert sl["ports"] == [{"name": "http", "protocol": "TCP", "port": 8080}]
    assert [(e["addresses"], e["nodeName"], e["targetRef"]["name"], e["conditions"]["ready"])
            for e in sl["endpoints"]] == [(["10.244.1.2"], "node-1", "a", True),
                                           (["10.244.2.3"], "node-2", "b", True)]


def test_not_ready_pod_is_listed_not_ready():
    [sl] = E.service_slices(svc(), [pod("a", "10.244.1.2", ready=False)])
    assert sl["endpoints"][0]["conditions"] == {"ready": False, "serving": False, "terminating": False}


def test_named_target_port_resolved_per_pod():
    ports = [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "web"}]
    pods = [pod("a", "10.244.1.2", ports=[{"name": "web", "containerPort": 8080}]),
            pod("b", "10.244.1.3", ports=[{"name": "web", "containerPort": 9090}]),
            pod("c", "10.244.1.4", ports=[{"name": "web", "containerPort": 8080}]),
            pod("d", "10.244.1.5", ports=[{"name": "web", "containerPort": 53, "protocol": "UDP"}])]
    slices = E.service_slices(svc(ports=ports), pods)
    by_port = {tuple(p["port"] for p in sl["ports"]): sorted(e["targetRef"]["name"] for e in sl["endpoints"])
               for sl in slices}
    # d has no TCP port named "web": listed without ports (as upstream does)
    assert by_port == {(8080,): ["a", "c"], (9090,): ["b"], (): ["d"]}
    assert len({sl["metadata"]["name"] for sl in slices}) == 3


def test_no_pods_one_empty_slice():
    [sl] = E.service_slices(svc(), [])
    assert sl["endpoints"] == [] and sl["ports"] == []


def test_selectorless_service_untouched():
    hand = {"kind": "EndpointSlice", "metadata": {"name": "ext-1", "namespace": "default",
                                                  "labels": {E.SERVICE_NAME_LABEL: "ext"}},
            "endpoints": [{"addresses": ["192.0.2.1"]}], "ports": [{"port": 80}]}
    stale = {"kind": "EndpointSlice", "metadata": {"name": "gone-abcde", "namespace": "default",
                                                   "labels": {E.SERVICE_NAME_LABEL: "gone",
                                                              E.MANAGED_BY_LABEL: E.MANAGED_BY}}}
    desired = E.desired_slices([svc("ext", selector=False), svc()], [pod("a", "10.244.1.2")])
    assert len(desired) == 1 and all(k[1].startswith("web-") for k in desired)   # not "ext"
    writes, deletes = E.plan(desired, [hand, stale])
    assert [w["metadata"]["name"] for w in writes] == [k[1] for k in desired]
    assert deletes == [("default", "gone-abcde")]          # ours and stale; the hand-made one stays


def test_plan_unchanged_writes_nothing():
    desired = E.desired_slices([svc()], [pod("a", "10.244.1.2")])
    existing = [dict(sl, metadata=dict(sl["metadata"], resourceVersion="7", uid="x"))
                for sl in desired.values()]
    assert E.plan(desired, existing) == ([], [])


# --- election ---------------------------------------------------------------------------


class FakeEtcd:
    """Keys with leases that expire on a fake clock."""

    def __init__(self, clock):
        self.clock = clock
        self.kv: dict[str, tuple[str, int]] = {}
        self.leases: dict[int, tuple[int, float]] = {}
        self.ids = itertools.count(100)

    def _expire(self):
        now = self.clock()
        for lid, (_, exp) in list(self.leases.items()):
            if exp <= now:
                self.lease_revoke(lid)

    def lease_grant(self, ttl):
        lid = next(self.ids)
        self.leases[lid] = (ttl, self.clock() + ttl)
        return Grant(lid, ttl)

    def lease_refresh(self, lid):
        self._expire()
        if lid not in self.leases:
            return -1
        ttl, _ = self.leases[lid]
        self.leases[lid] = (ttl, self.clock() + ttl)
        return ttl

    def lease_revoke(self, lid):
        if self.leases.pop(lid, None) is None:
            return False
        for k, (_, l) in list(self.kv.items()):
            if l == lid:
                del self.kv[k]
        return True

    def create(self, key, value, lease=0):
        self._expire()
        if key in self.kv:
            return False
        self.kv[key] = (value, lease)
        return True

    def get(self, key):
        self._expire()
        if key not in self.kv:
            return None
        v, l = self.kv[key]
        return KeyValue(key, v.encode(), lease=l)


def test_one_leader_and_takeover_after_expiry():
    now = [0.0]
    clock = lambda: now[0]
    etcd = FakeEtcd(clock)
    a = E.LeaderElector(etcd, "node-1", ttl=5, clock=clock)
    b = E.LeaderElector(etcd, "node-2", ttl=5, clock=clock)
    assert a.step() and not b.step()
    for _ in range(10):                       # a renews every ~ttl/3: keeps it for 16 s
        now[0] += 1.6
        assert a.step() and not b.step()
    assert a.is_leader and not b.is_leader
    # a stops renewing (crashed / partitioned): after the TTL b takes over, a no longer claims
    now[0] += 5.1
    assert not a.is_leader
    assert b.step() and b.is_leader
    assert not a.step()                       # its lease is gone; the key is b's
    assert etcd.get(E.LEASE_KEY).value == b"node-2"


def test_release_hands_over_at_once():
    now = [0.0]
    etcd = FakeEtcd(lambda: now[0])
    a = E.LeaderElector(etcd, "node-1", clock=lambda: now[0])
    b = E.LeaderElector(etcd, "node-2", clock=lambda: now[0])
    assert a.step() and not b.step()
    a.release()
    assert b.step()
    assert not a.is_leader


class FakeObjects:
    def __init__(self, objs):
        self.objs = {(o["kind"], o["metadata"].get("namespace", "default"), o["metadata"]["name"]): o
                     for o in objs}

    def list(self, resource):
        kind = {"pods": "Pod", "services": "Service", "endpointslices": "EndpointSlice"}[resource]
        return [o for (k, _, _), o in sorted(self.objs.items()) if k == kind], 1

    def apply(self, objs):
        for o in objs:
            self.objs[(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"])] = o
        return objs

    def delete(self, resource, ns, name):
        return self.objs.pop(("EndpointSlice", ns, name), None) is not None


def test_reconcile_converges_and_is_idempotent():
    store = FakeObjects([svc(), pod("a", "10.244.1.2"), pod("b", "10.244.2.2")])
    ctl = E.EndpointsController(store, elector=None)
    assert ctl.reconcile() == (1, 0)
    assert ctl.reconcile() == (0, 0)
    del store.objs[("Pod", "default", "a")]
    assert ctl.reconcile() == (1, 0)
    [sl] = store.list("endpointslices")[0]
    assert [e["addresses"][0] for e in sl["endpoints"]] == ["10.244.2.2"]
    del store.objs[("Service", "default", "web")]
    assert ctl.reconcile() == (0, 1)
    assert store.list("endpointslices")[0] == []
