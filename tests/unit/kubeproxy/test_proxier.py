"""kube-proxy's loop with a fake syncer and a fake clock: parsing, skipping, rate limiting."""
from __future__ import annotations

from kubeproxy_py.model import ProxyOptions
from kubeproxy_py.proxier import HealthCheckServers, Proxier, Schedule, stale_udp


class FakeSyncer:
    """Keeps what was last applied, like the kernel would."""

    def __init__(self):
        self.applied: dict | None = None
        self.syncs: list[bool] = []
        self.fail = False

    def sync(self, ports, endpoints, *, full=False):
        if self.fail:
            raise RuntimeError("iptables-restore failed")
        self.syncs.append(full)
        self.applied = {sp.key: [e.ip for e in endpoints.get(sp.key, ())] for sp in ports}
        return type("R", (), {"rules": 7})()


def service(name, ip="10.96.0.10", port=80, proto="TCP", **spec):
    return {"kind": "Service", "metadata": {"namespace": "default", "name": name},
            "spec": {"clusterIP": ip, "ports": [{"port": port, "protocol": proto}], **spec}}


def eps(svc, *ips, proto="TCP", node="node-1"):
    return {"kind": "EndpointSlice",
            "metadata": {"namespace": "default", "name": f"{svc}-x",
                         "labels": {"kubernetes.io/service-name": svc}},
            "endpoints": [{"addresses": [ip], "nodeName": node} for ip in ips],
            "ports": [{"port": 9376, "protocol": proto}]}


def make(**kw):
    now = [100.0]
    syncer = FakeSyncer()
    p = Proxier(syncer, ProxyOptions(node_name="node-1"), clock=lambda: now[0], **kw)
    return p, syncer, now


def test_bad_service_skipped_others_synced():
    p, syncer, _ = make()
    p.on_service(("snapshot", [service("good"), service("bad", port=70000),
                               service("proto", ip="10.96.0.11", proto="ICMP"),
                               service("ip", ip="10.96.0.300")]))
    p.on_slice(("snapshot", [eps("good", "10.244.1.2")]))
    assert p.step() == 0.0
    assert syncer.applied == {("default", "good", "", "TCP"): ["10.244.1.2"]}


def test_waits_for_both_snapshots():
    p, syncer, _ = make()
    p.on_service(("snapshot", [service("good")]))
    p.step()
    assert syncer.syncs == []              # endpoints not listed yet: no sync with none
    p.on_slice(("snapshot", []))
    p.step()
    assert syncer.syncs == [True]


def test_rate_limited_by_min_sync_period():
    p, syncer, now = make(min_sync_period=1.0, sync_period=30.0)
    p.on_service(("snapshot", [service("a")]))
    p.on_slice(("snapshot", []))
    p.step()
    assert syncer.syncs == [True]
    now[0] += 0.2
    p.on_slice(("put", eps("a", "10.244.1.2")))
    wait = p.step()
    assert syncer.syncs == [True] and abs(wait - 0.8) < 1e-9     # too soon: wait the rest
    p.on_slice(("put", eps("a", "10.244.1.2", "10.244.1.3")))     # batched into one sync
    now[0] += 0.8
    p.step()
    assert syncer.syncs == [True, False]
    assert syncer.applied[("default", "a", "", "TCP")] == ["10.244.1.2", "10.244.1.3"]
    now[0] += 5.0                                                 # idle, then one change: at once
    p.on_slice(("delete", ("endpointslices", "default", "a-x"), None))
    p.step()
    assert syncer.syncs == [True, False, False]
    assert syncer.applied[("default", "a", "", "TCP")] == []


def test_periodic_full_resync_and_retry_after_failure():
    p, syncer, now = make(min_sync_period=0.0, sync_period=30.0)
    p.on_service(("snapshot", [service("a")]))
    p.on_slice(("snapshot", []))
    p.step()
    assert p.step() > 0 and syncer.syncs == [True]                # nothing to do
    now[0] += 30.0
    p.step()
    assert syncer.syncs == [True, True]
    syncer.fail = True
    p.on_service(("put", service("b", ip="10.96.0.12")))
    p.step()
    assert syncer.syncs == [True, True]
    syncer.fail = False
    now[0] += 0.5
    p.step()
    assert syncer.syncs == [True, True]                           # retry waits ≥ 1 s
    now[0] += 0.5
    p.step()
    assert syncer.syncs == [True, True, True]                     # and is a full sync


def test_schedule_first_sync_is_full():
    s = Schedule(1.0, 30.0)
    assert s.due(0.0) == (True, True, 0.0)


class FakeConntrack:
    def __init__(self):
        self.cleared = []

    def clear_nat(self, orig, ep):
        self.cleared.append(("nat", orig, ep))

    def clear_port_nat(self, port, ep):
        self.cleared.append(("port", port, ep))

    def clear_service_ip(self, ip):
        self.cleared.append(("ip", ip))


def test_udp_endpoint_removal_flushes_conntrack():
    ct = FakeConntrack()
    p, _, now = make(min_sync_period=0.0, conntrack=ct)
    p.on_service(("snapshot", [service("dns", proto="UDP", port=53), service("web", ip="10.96.0.20")]))
    p.on_slice(("snapshot", [eps("dns", "10.244.1.2", "10.244.2.2", proto="UDP"),
                             {**eps("web", "10.244.1.7"), "metadata": {
                                 "namespace": "default", "name": "web-x",
                                 "labels": {"kubernetes.io/service-name": "web"}}}]))
    p.step()
    assert ct.cleared == []
    p.on_slice(("put", eps("dns", "10.244.2.2", proto="UDP")))
    p.on_slice(("delete", ("endpointslices", "default", "web-x"), None))   # TCP: nothing to flush
    now[0] += 1
    p.step()
    assert ct.cleared == [("nat", "10.96.0.10", "10.244.1.2")]


def test_stale_udp_first_endpoint_clears_service_ip():
    from kubeproxy_py.model import parse_endpoint_slices, service_ports
    [sp] = service_ports(service("dns", proto="UDP", port=53, type="NodePort"))
    ports = {sp.key: sp}
    after = parse_endpoint_slices([eps("dns", "10.244.1.2", proto="UDP")])
    assert stale_udp(ports, {}, ports, after) == ([], [], ["10.96.0.10"])
    assert stale_udp(ports, after, {}, {}) == ([("10.96.0.10", "10.244.1.2")], [], [])


def test_health_check_node_port_counts_local_endpoints():
    started = []
    hc = HealthCheckServers(start=lambda port: started.append(port) or object())
    p, _, _ = make(health=hc)
    lb = service("lb", type="LoadBalancer", externalTrafficPolicy="Local", healthCheckNodePort=32000)
    lb["spec"]["ports"][0]["nodePort"] = 30080
    p.on_service(("snapshot", [lb]))
    p.on_slice(("snapshot", [eps("lb", "10.244.1.2", node="node-1")]))
    p.step()
    assert started == [32000]
    code, _, body = hc.body(32000)
    assert code == 200 and b'"localEndpoints": 1' in body and b'"name": "lb"' in body
    hc.update({32000: ("default", "lb", 0)})
    assert hc.body(32000)[0] == 503


def test_change_during_a_sync_is_not_lost():
    p, syncer, now = make(min_sync_period=0.0)
    inner = syncer.sync

    def sync_with_event(ports, endpoints, *, full=False):
        result = inner(ports, endpoints, full=full)
        if len(syncer.syncs) == 1:     # the slice arrives while the first sync runs
            p.on_slice(("put", eps("a", "10.244.1.2")))
        return result
    syncer.sync = sync_with_event
    p.on_service(("snapshot", [service("a")]))
    p.on_slice(("snapshot", []))
    p.step()
    assert syncer.applied[("default", "a", "", "TCP")] == []
    now[0] += 0.01
    p.step()
    assert syncer.applied[("default", "a", "", "TCP")] == ["10.244.1.2"]


def test_metrics_after_sync():
    from kubeproxy_py.metrics import Metrics, healthz_body
    m = Metrics()
    p, _, _ = make(metrics=m)
    p.on_service(("snapshot", [service("a")]))
    p.on_slice(("snapshot", []))
    p.step()
    text = m.text().decode()
    assert "kubeproxy_sync_proxy_rules_duration_seconds_count 1.0" in text
    assert 'kubeproxy_sync_proxy_rules_iptables_total{table="all"} 7.0' in text
    assert "kubeproxy_sync_proxy_rules_last_timestamp_seconds" in text
    code, _, body = healthz_body(0.5, 1.25, True)
    assert code == 200 and body == (b'{"lastUpdated": "1970-01-01T00:00:00.5Z", '
                                    b'"currentTime": "1970-01-01T00:00:01.25Z"}')
