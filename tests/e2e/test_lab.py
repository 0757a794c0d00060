"""The lab end to end: `podnet lab up`, pods on every node, all pairs reachable, the backend's
routes visible, a runner crash survived, and `lab down` leaving nothing behind."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.e2e.conftest import podnet

EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
BACKENDS = ["vxlan", "udp", "host-gw"]


def leftovers(name: str) -> list[str]:
    found = [f"netns {n}" for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                   text=True).stdout.split()
             if n.startswith(f"pn-{name}-") or n.startswith("pn-node-")]
    if os.path.exists(f"/run/podnet/lab/{name}"):
        found.append(f"dir /run/podnet/lab/{name}")
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    found += [f"process {l}" for l in procs.splitlines() if f"/run/podnet/lab/{name}/" in l]
    return found


@pytest.mark.parametrize("backend", BACKENDS)
def test_three_nodes_all_pairs_reachable(make_lab, backend):
    name = f"e2e-{backend}"[:12]
    lab = make_lab(name, "--nodes", "3", "--backend", backend)
    nodes = json.loads(lab("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["node-1", "node-2", "node-3"]
    lab("apply", "-f", os.path.join(EXAMPLES, "pods-on-nodes.yaml"))
    running = lab.wait_running(3)
    assert sorted(p["spec"]["nodeName"] for p in running) == ["node-1", "node-2", "node-3"]
    subnets = {n["metadata"]["name"]: n["spec"]["podCIDR"] for n in
               json.loads(lab("get", "nodes", "-o", "json").stdout)["items"]}
    for pod in running:  # each pod's address is inside its node's leased subnet
        import ipaddress
        assert ipaddress.ip_address(pod["status"]["podIP"]) in ipaddress.ip_network(
            subnets[pod["spec"]["nodeName"]])
    for proto in ("TCP", "UDP"):
        out = lab("probe-matrix", "--port", "8080", "--protocol", proto, "-o", "json")
        results = json.loads(out.stdout)
        pairs = results["results"] if isinstance(results, dict) else results
        assert len(pairs) == 9 and all(p["ok"] for p in pairs), out.stdout
    routes = lab("rules", "--node", "node-1", "--what", "routes").stdout
    fdb = lab("rules", "--node", "node-1", "--what", "fdb").stdout
    others = [c for n, c in subnets.items() if n != "node-1"]
    for cidr in others:
        if backend == "vxlan":
            assert f"{cidr} via {cidr.split('/')[0]} dev flannel.1 onlink" in routes
        elif backend == "host-gw":
            assert any(line.startswith(f"{cidr} via 192.168.200.") and "dev eth0" in line
                       for line in routes.splitlines()), routes
    if backend == "udp":
        assert "10.244.0.0/16 dev flannel0" in routes, routes
    if backend == "vxlan":
        assert fdb.count("dev flannel.1 dst 192.168.200.") == 2, fdb
    podnet("lab", "down", "--name", name)
    assert leftovers(name) == []


def test_runner_crash_keeps_pods(make_lab):
    lab = make_lab("e2e-runner", "--nodes", "3", "--backend", "host-gw")
    lab("apply", "-f", os.path.join(EXAMPLES, "pods-on-nodes.yaml"))
    before = {p["metadata"]["name"]: p["status"]["podIP"] for p in lab.wait_running(3)}
    pids_before = _pod_pids(lab)
    podnet("lab", "restart", "--name", "e2e-runner", "--node", "node-1", "--daemon", "runner", "--kill")
    podnet("lab", "restart", "--name", "e2e-runner", "--node", "node-2", "--daemon", "runner", "--kill")
    out = lab("probe", "default/pod-1", "default/pod-2", "--port", "8080")
    assert "ok" in out.stdout
    after = {p["metadata"]["name"]: p["status"]["podIP"] for p in lab.wait_running(3)}
    assert after == before
    assert _pod_pids(lab) == pids_before


def _pod_pids(lab) -> dict[str, list[int]]:
    st = lab.state()
    out = {}
    for node in st["nodes"]:
        pods_dir = os.path.join(node["dir"], "runner", "pods")
        for uid in sorted(os.listdir(pods_dir)) if os.path.isdir(pods_dir) else []:
            with open(os.path.join(pods_dir, uid, "state.json")) as f:
                data = json.load(f)
            out[uid] = [c["pid"] for c in data["containers"]]
    return out


def test_bad_manifest_refused_and_nothing_stored(make_lab, tmp_path):
    lab = make_lab("e2e-bad", "--nodes", "1", "--backend", "host-gw")
    bad = tmp_path / "bad.yaml"
    bad.write_text("""apiVersion: v1
kind: Pod
metadata: {name: good}
spec:
  nodeName: node-1
  containers: [{name: c, image: x}]
---
apiVersion: v1
kind: Pod
metadata: {name: lost}
spec:
  nodeName: node-9
  containers: [{name: c, image: x}]
""")
    second = podnet("lab", "up", "--name", "e2e-other", check=False)
    assert second.returncode == 1 and "one lab at a time" in second.stderr
    assert not os.path.exists("/run/podnet/lab/e2e-other")
    proc = lab("apply", "-f", str(bad), check=False)
    assert proc.returncode == 1
    assert "bad.yaml" in proc.stderr and "lost" in proc.stderr and "node-9" in proc.stderr
    assert lab.pods() == []
