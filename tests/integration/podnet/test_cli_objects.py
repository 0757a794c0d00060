"""``podnet apply/get/delete --lab`` against a real etcd living in another namespace."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest

from podnet.cli import main
from podnet.store import ObjectStore
from tests.integration.podnet.conftest import EXAMPLES

pytestmark = pytest.mark.root

HOSTNAMES = os.path.join(EXAMPLES, "hostnames.yaml")
ON_NODES = os.path.join(EXAMPLES, "pods-on-nodes.yaml")


def podnet(capsys, *argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    capsys.readouterr()
    if stdin is not None:
        old, sys.stdin = sys.stdin, io.StringIO(stdin)
    try:
        rc = main(list(argv))
    finally:
        if stdin is not None:
            sys.stdin = old
    out, err = capsys.readouterr()
    return rc, out, err


def keys(etcd_store) -> list[str]:
    return [kv.key for kv in etcd_store.get_prefix("/podnet/registry/").items]


def add_nodes(etcd_store, *names: str) -> None:
    ObjectStore(etcd_store).apply([{"apiVersion": "v1", "kind": "Node", "metadata": {"name": n}}
                                   for n in names])


def test_apply_get_delete_hostnames(lab, etcd_store, capsys):
    rc, out, err = podnet(capsys, "--lab", lab, "apply", "-f", HOSTNAMES)
    assert (rc, err) == (0, "")
    assert out == ("pod/hostnames-a created\npod/hostnames-b created\npod/hostnames-c created\n"
                   "service/hostnames created\n")
    assert keys(etcd_store) == [f"/podnet/registry/pods/default/hostnames-{x}" for x in "abc"] + \
        ["/podnet/registry/services/default/hostnames"]

    rc, out, _ = podnet(capsys, "apply", "-f", HOSTNAMES, "--lab", lab)   # options after the verb
    assert rc == 0 and out.count("unchanged") == 4

    rc, out, _ = podnet(capsys, "--lab", lab, "get", "po")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "READY", "STATUS", "RESTARTS", "AGE"]
    assert [line.split()[:4] for line in lines[1:]] == [
        [f"hostnames-{x}", "0/1", "Pending", "0"] for x in "abc"]

    rc, out, _ = podnet(capsys, "--lab", lab, "get", "svc", "hostnames")
    assert out.splitlines()[1].split()[:5] == ["hostnames", "ClusterIP", "10.96.0.2", "<none>", "80/TCP"]

    rc, out, _ = podnet(capsys, "--lab", lab, "get", "services", "hostnames", "-o", "json")
    svc = json.loads(out)
    assert svc["spec"]["ports"] == [{"name": "default", "protocol": "TCP", "port": 80, "targetPort": 9376}]
    assert svc["spec"]["selector"] == {"app": "hostnames"}

    rc, out, _ = podnet(capsys, "--lab", lab, "get", "pods", "-A", "-o", "yaml")
    import yaml
    listing = yaml.safe_load(out)
    assert listing["kind"] == "List" and len(listing["items"]) == 3

    rc, out, err = podnet(capsys, "--lab", lab, "delete", "pod", "hostnames-a")
    assert (rc, out) == (0, 'pod "hostnames-a" deleted\n')
    rc, out, err = podnet(capsys, "--lab", lab, "delete", "-f", HOSTNAMES)
    assert rc == 1                                   # hostnames-a was gone already
    assert out == 'pod "hostnames-b" deleted\npod "hostnames-c" deleted\nservice "hostnames" deleted\n'
    assert err == 'Error from server (NotFound): pods "hostnames-a" not found\n'
    assert keys(etcd_store) == []


BAD_FILE = """\
apiVersion: v1
kind: Namespace
metadata: {name: fine}
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec:
  containers:
  - name: c
    image: busybox
    ports: [{containerPort: 70000}]
"""


def test_bad_file_stores_nothing(lab, etcd_store, capsys, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_FILE)
    rc, out, err = podnet(capsys, "--lab", lab, "apply", "-f", str(bad))
    assert rc == 1 and out == ""
    assert err == (f'error: {bad}: Pod "web" : spec.containers[0].ports[0].containerPort: '
                   "Invalid value: 70000: must be between 1 and 65535\n")
    assert keys(etcd_store) == []


def test_pod_on_a_node_that_does_not_exist_is_refused(lab, etcd_store, capsys):
    add_nodes(etcd_store, "node-1", "node-2")
    rc, out, err = podnet(capsys, "--lab", lab, "apply", "-f", ON_NODES)
    assert rc == 1
    assert err == (f'error: {ON_NODES}: Pod "pod-3" : spec.nodeName: Not found: "node-3": '
                   "no such Node (nodes: node-1, node-2)\n")
    assert keys(etcd_store) == ["/podnet/registry/nodes/_/node-1", "/podnet/registry/nodes/_/node-2"]
    add_nodes(etcd_store, "node-3")
    rc, out, err = podnet(capsys, "--lab", lab, "apply", "-f", ON_NODES)
    assert rc == 0, err
    rc, out, _ = podnet(capsys, "--lab", lab, "get", "pods", "-o", "wide")
    assert [line.split()[-1] for line in out.splitlines()] == ["NODE", "node-1", "node-2", "node-3"]


def test_duplicate_names_across_stdin_and_file(lab, etcd_store, capsys):
    pod = open(ON_NODES).read().split("---")[0]
    rc, out, err = podnet(capsys, "--lab", lab, "apply", "-f", ON_NODES, "-f", "-", stdin=pod)
    assert rc == 1
    assert err == (f'error: -: Pod "pod-1" : metadata.name: Duplicate value: "pod-1": also '
                   f"defined in {ON_NODES} (document 1)\n")
    assert keys(etcd_store) == []


def test_get_nodes_wide_and_subnets(lab, etcd_store, capsys):
    store = ObjectStore(etcd_store)
    store.apply([{"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node-1"}}])
    store.patch_status("nodes", None, "node-1", {
        "conditions": [{"type": "Ready", "status": "True"}],
        "addresses": [{"type": "InternalIP", "address": "192.168.50.11"}]})
    etcd_store.put("/coreos.com/network/subnets/10.244.1.0-24",
                   '{"PublicIP":"192.168.50.11","PublicIPv6":null,"BackendType":"vxlan",'
                   '"BackendData":{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:01"}}')
    rc, out, err = podnet(capsys, "--lab", lab, "get", "no", "-o", "wide")
    assert rc == 0, err
    cells = out.splitlines()[1].split()        # AGE varies; VERSION is empty
    assert cells[:3] + cells[4:] == ["node-1", "Ready", "<none>", "192.168.50.11", "10.244.1.0/24"]
    rc, out, err = podnet(capsys, "--lab", lab, "get", "subnets")
    assert out.splitlines() == [
        "SUBNET          PUBLIC-IP       BACKEND   BACKEND-DATA                      TTL",
        "10.244.1.0/24   192.168.50.11   vxlan     VNI=1,VtepMAC=aa:bb:cc:dd:ee:01   <none>"]


def test_errors_are_one_line(lab, etcd, capsys, tmp_path, monkeypatch):
    rc, out, err = podnet(capsys, "--lab", lab, "get", "deployments")
    assert rc == 1 and err.startswith('error: the server doesn\'t have a resource type "deployments"')
    assert len(err.splitlines()) == 1
    rc, out, err = podnet(capsys, "--lab", lab, "get", "pods", "nope")
    assert (rc, err) == (1, 'Error from server (NotFound): pods "nope" not found\n')
    rc, out, err = podnet(capsys, "--lab", "nolab", "get", "pods")
    assert rc == 1 and err.startswith('error: lab "nolab" not found') and len(err.splitlines()) == 1
    # a lab whose etcd URL refuses connections (reached from inside the client namespace:
    # nothing is ever sent from the root namespace)
    dead = os.path.join(os.environ["PODNET_LAB_ROOT"], "dead")
    os.makedirs(dead)
    with open(os.path.join(dead, "state.json"), "w") as f:
        json.dump({"etcd_endpoints": [etcd.dead_url], "client_netns": etcd.client_ns}, f)
    rc, out, err = podnet(capsys, "--lab", "dead", "get", "pods")
    assert rc == 1 and err.startswith("error: etcd unavailable") and len(err.splitlines()) == 1
    rc, out, err = podnet(capsys, "-v", "--lab", "dead", "get", "pods")
    assert rc == 1 and "Traceback" in err


def test_subprocess_in_the_client_namespace_with_env_endpoints(etcd, tmp_path):
    env = dict(os.environ, PODNET_ETCD_ENDPOINTS=etcd.url)
    env.pop("PODNET_LAB_ROOT", None)
    run = ["ip", "netns", "exec", etcd.client_ns, sys.executable, "-m", "podnet"]
    r = subprocess.run(run + ["apply", "-f", HOSTNAMES], env=env, capture_output=True, text=True,
                       cwd=os.path.join(EXAMPLES, ".."))
    assert r.returncode == 0, r.stderr
    r = subprocess.run(run + ["get", "svc"], env=env, capture_output=True, text=True)
    assert r.stdout.splitlines()[1].split()[:2] == ["hostnames", "ClusterIP"]
