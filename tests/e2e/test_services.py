"""Services across nodes in a 3-node vxlan lab: kube-proxy (iptables mode) + the endpoints
controller, as the lab starts them on every node.

One lab for the module (bringing one up takes seconds; the checks share it). Requests are
sent from sockets created inside a client pod's namespace (or the lab's client namespace,
which sits on the underlay like an outside machine).
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest

from podnet import netns
from podnet.probe import make_socket, probe
from tests.e2e.conftest import Lab, podnet

LAB = "e2e-svc"
HOSTNAMES = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "hostnames.yaml")

# An echo server that says who it is and who called ("NAME CLIENT_IP"), then echoes lines.
ECHO = r"""
import socket, sys, threading
name = sys.argv[1]
def serve(c, a):
    with c:
        c.sendall(f"{name} {a[0]}\n".encode())
        while True:
            d = c.recv(4096)
            if not d:
                return
            c.sendall(d)
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8080)); s.listen(64)
while True:
    c, a = s.accept()
    threading.Thread(target=serve, args=(c, a), daemon=True).start()
"""


def pin(doc: dict, node: str) -> dict:
    doc["spec"]["nodeName"] = node
    return doc


def echo_pod(name: str, node: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "labels": {"app": "echo"}},
            "spec": {"nodeName": node, "containers": [{
                "name": "echo", "image": "python", "command": ["python3", "-c", ECHO, name],
                "ports": [{"name": "echo", "containerPort": 8080}]}]}}


def service(name: str, selector: dict, port: int, target, **spec) -> dict:
    return {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
            "spec": {"selector": selector, "ports": [{"name": "p", "protocol": "TCP", "port": port,
                                                      "targetPort": target, **spec.pop("port_extra", {})}],
                     **spec}}


def apply(lab: Lab, docs: list[dict]) -> None:
    proc = subprocess.run([sys.executable, "-m", "podnet", "--lab", lab.name,
                           "apply", "-f", "-"], input="\n---\n".join(json.dumps(d) for d in docs),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.fixture(scope="module")
def lab():
    if os.geteuid() != 0:
        pytest.skip("needs root")
    podnet("lab", "up", "--name", LAB, "--nodes", "3", "--backend", "vxlan")
    try:
        lab = Lab(LAB)
        import yaml
        with open(HOSTNAMES) as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        for d, node in zip(docs, ("node-1", "node-2", "node-3")):
            if d["kind"] == "Pod":
                pin(d, node)
        client = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "client"},
                  "spec": {"nodeName": "node-1", "containers": [{
                      "name": "c", "image": "serve_hostname", "ports": [{"containerPort": 7000}]}]}}
        apply(lab, docs + [client, echo_pod("echo-2", "node-2"), echo_pod("echo-3", "node-3")])
        lab.wait_running(6)
        yield lab
    finally:
        podnet("lab", "down", "--name", LAB, check=False)


def pod_ns(lab: Lab, name: str) -> str:
    from podnet.cli_pods import pod_netns
    pod = json.loads(lab("get", "pods", name, "-o", "json").stdout)
    return pod_netns(pod)


def cluster_ip(lab: Lab, name: str) -> str:
    return json.loads(lab("get", "services", name, "-o", "json").stdout)["spec"]["clusterIP"]


def answers(ns: str, ip: str, port: int, n: int, timeout: float = 2.0) -> list[str]:
    out = []
    for _ in range(n):
        r = probe(ns, ip, port, "TCP", timeout)
        out.append(r.answer.split()[0] if r.ok else f"<{r.error}>")
    return out


def wait_for(check, timeout: float = 15.0, what: str = ""):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def node_ip(lab: Lab, node: str) -> str:
    return next(n["ip"] for n in lab.state()["nodes"] if n["name"] == node)


def test_hostnames_cluster_ip_reaches_all_three(lab):
    ns, ip = pod_ns(lab, "client"), cluster_ip(lab, "hostnames")
    wait_for(lambda: probe(ns, ip, 80).ok, what="the hostnames ClusterIP")
    got = answers(ns, ip, 80, 30)
    assert set(got) == {"hostnames-a", "hostnames-b", "hostnames-c"}, got


def test_nodeport_via_another_node(lab):
    apply(lab, [service("hostnames-np", {"app": "hostnames"}, 80, 9376, type="NodePort",
                        port_extra={"nodePort": 30080})])
    ns, target = pod_ns(lab, "client"), node_ip(lab, "node-2")
    wait_for(lambda: probe(ns, target, 30080).ok, what="NodePort on node-2")
    got = answers(ns, target, 30080, 20)
    assert set(got) <= {"hostnames-a", "hostnames-b", "hostnames-c"} and len(set(got)) >= 2, got


def test_external_ip(lab):
    apply(lab, [service("hostnames-ext", {"app": "hostnames"}, 8081, 9376,
                        externalIPs=["203.0.113.80"])])
    ns = pod_ns(lab, "client")
    wait_for(lambda: probe(ns, "203.0.113.80", 8081).ok, what="the external IP")
    assert set(answers(ns, "203.0.113.80", 8081, 10)) <= {"hostnames-a", "hostnames-b", "hostnames-c"}


def test_session_affinity_sticks(lab):
    apply(lab, [service("hostnames-sticky", {"app": "hostnames"}, 80, 9376,
                        sessionAffinity="ClientIP")])
    ns, ip = pod_ns(lab, "client"), cluster_ip(lab, "hostnames-sticky")
    wait_for(lambda: probe(ns, ip, 80).ok, what="the sticky Service")
    got = answers(ns, ip, 80, 10)
    assert len(set(got)) == 1 and not got[0].startswith("<"), got


def test_external_traffic_policy_local(lab):
    apply(lab, [service("echo-local", {"app": "echo"}, 8080, "echo", type="LoadBalancer",
                        externalTrafficPolicy="Local", healthCheckNodePort=32100,
                        port_extra={"nodePort": 30090})])
    st = lab.state()
    ctl, ctl_ip = st["client_netns"], st["client_ip"]
    for node, pod in (("node-2", "echo-2"), ("node-3", "echo-3")):
        ip = node_ip(lab, node)
        wait_for(lambda: probe(ctl, ip, 30090).ok, what=f"NodePort on {node}")
        got = {probe(ctl, ip, 30090).answer for _ in range(10)}
        assert got == {f"{pod} {ctl_ip}"}, got          # only the local pod; client IP kept
    # node-1 has no local endpoint: dropped there, and its health check says so
    assert not probe(ctl, node_ip(lab, "node-1"), 30090, timeout=1.0).ok
    assert health(ctl, node_ip(lab, "node-2"), 32100) == (200, 1)
    assert health(ctl, node_ip(lab, "node-1"), 32100) == (503, 0)


def health(ns: str, ip: str, port: int) -> tuple[int, int]:
    s = make_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.settimeout(3)
        s.connect((ip, port))
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    head, _, body = data.decode().partition("\r\n\r\n")
    doc = json.loads(body)
    assert doc["service"] == {"namespace": "default", "name": "echo-local"}
    assert doc["serviceProxyHealthy"] is True
    return int(head.split()[1]), doc["localEndpoints"]


def test_service_without_endpoints_refuses_at_once(lab):
    apply(lab, [service("nobody", {"app": "nobody"}, 80, 80)])
    ns, ip = pod_ns(lab, "client"), cluster_ip(lab, "nobody")
    r = wait_for(lambda: (lambda r: r if r.error == "refused" else None)(probe(ns, ip, 80, timeout=5.0)),
                 what="REJECT for the Service without endpoints")
    print(f"no endpoints: refused after {r.ms:.1f} ms")
    assert r.error == "refused"                        # a REJECT, not a 5 s timeout


def test_unrenderable_service_skipped_others_keep_working(lab):
    from podnet.etcd import Store
    from podnet.store import ObjectStore
    st = lab.state()
    bad = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "broken", "namespace": "default"},
           "spec": {"clusterIP": "10.96.0.250", "ports": [{"port": 70000, "protocol": "TCP"}]}}
    with netns.entered(st["client_netns"]):         # past `podnet apply`'s validation
        ObjectStore(Store(st["etcd_endpoints"], timeout=5)).apply([bad])
    log = os.path.join(st["dir"], "logs", "node-1-kube-proxy.log")
    wait_for(lambda: "skipping Service default/broken" in open(log).read(), what="the skip in the log")
    ns, ip = pod_ns(lab, "client"), cluster_ip(lab, "hostnames")
    apply(lab, [service("after-broken", {"app": "hostnames"}, 80, 9376)])
    ip2 = cluster_ip(lab, "after-broken")
    wait_for(lambda: probe(ns, ip2, 80).ok, what="a Service added after the broken one")
    assert all(probe(ns, ip, 80).ok for _ in range(5))


def test_bad_services_refused_by_apply(lab, tmp_path):
    cases = {
        "port": ({"port": 70000}, "must be between 1 and 65535"),
        "ip": ({"port": 80}, "must be a valid IP address"),
        "dup": ({"port": 80}, "Duplicate value"),
        "proto": ({"port": 80, "protocol": "ICMP"}, 'Unsupported value: "ICMP"'),
    }
    for name, (port, message) in cases.items():
        spec = {"ports": [dict({"name": "a"}, **port)]}
        if name == "ip":
            spec["clusterIP"] = "10.96.0.999"
        if name == "dup":
            spec["ports"].append({"name": "b", "port": 80})
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"apiVersion": "v1", "kind": "Service",
                                    "metadata": {"name": f"bad-{name}"}, "spec": spec}))
        proc = lab("apply", "-f", str(path), check=False)
        assert proc.returncode != 0 and message in proc.stderr, (name, proc.stderr)
        assert lab("get", "services", f"bad-{name}", check=False).returncode != 0


def test_restart_kube_proxy_keeps_connections_and_rules(lab):
    ns, ip = pod_ns(lab, "client"), cluster_ip(lab, "echo-local")
    node_ns = next(n["netns"] for n in lab.state()["nodes"] if n["name"] == "node-1")
    s = make_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(5)
    s.connect((ip, 8080))
    f = s.makefile("rb")
    greeting = f.readline()
    assert greeting.startswith(b"echo-")
    seen_without, polls, stop = [], [0], threading.Event()

    def poll() -> None:
        while not stop.is_set():
            out = subprocess.run(["iptables-save", "-t", "nat"], capture_output=True, text=True,
                                 preexec_fn=netns.preexec(node_ns)).stdout
            polls[0] += 1
            if f"-d {ip}/32" not in out or "-j KUBE-SERVICES" not in out:
                seen_without.append(out)
    log = os.path.join(lab.state()["dir"], "logs", "node-1-kube-proxy.log")
    before = open(log).read().count(" synced ")
    t = threading.Thread(target=poll)
    t.start()
    try:
        podnet("lab", "restart", "--name", LAB, "--node", "node-1", "--daemon", "kube-proxy")
        wait_for(lambda: open(log).read().count(" synced ") > before, what="a sync after the restart")
    finally:
        stop.set()
        t.join()
    print(f"{polls[0]} iptables-save polls during the restart")
    assert polls[0] > 3 and not seen_without
    for i in range(3):
        s.sendall(b"ping %d\n" % i)
        assert f.readline() == b"ping %d\n" % i
    s.close()


def test_removing_an_endpoint_moves_traffic(lab):
    ns, ip = pod_ns(lab, "client"), cluster_ip(lab, "hostnames")
    lab("delete", "pod", "hostnames-c")
    t0 = time.monotonic()

    def moved() -> bool:
        got = answers(ns, ip, 80, 12, timeout=0.5)
        return set(got) == {"hostnames-a", "hostnames-b"}
    wait_for(moved, timeout=10.0, what="traffic to leave hostnames-c")
    elapsed = time.monotonic() - t0
    print(f"endpoint removal: traffic moved in {elapsed:.3f} s")
    assert "hostnames-c" not in answers(ns, ip, 80, 20)
