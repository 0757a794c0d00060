"""vagrant/: the Vagrantfile parses and defines the example's nodes; provision.sh's steps run
against a real etcd with every file staged under a temporary root (no systemctl)."""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys

import pytest
import yaml

from tests.integration.flannel.conftest import etcd  # noqa: F401  (the fixture)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VAGRANTFILE = os.path.join(REPO, "vagrant", "Vagrantfile")
PROVISION = os.path.join(REPO, "vagrant", "provision.sh")
STUB = os.path.join(os.path.dirname(os.path.abspath(__file__)), "vagrant_stub.rb")
PODNET = os.path.join(os.path.dirname(sys.executable), "podnet")
NODE_UNITS = ["flanneld.service", "kube-proxy.service", "podnet-cni.service",
              "podnet-runner.service"]

needs_ruby = pytest.mark.skipif(shutil.which("ruby") is None, reason="ruby is not installed")


@needs_ruby
def test_vagrantfile_syntax():
    proc = subprocess.run(["ruby", "-c", VAGRANTFILE], capture_output=True, text=True)
    assert proc.returncode == 0 and "Syntax OK" in proc.stdout, proc.stderr


def test_provision_syntax():
    proc = subprocess.run(["bash", "-n", PROVISION], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def example_node_names() -> list[str]:
    with open(os.path.join(REPO, "examples", "pods-on-nodes.yaml")) as f:
        return sorted({d["spec"]["nodeName"] for d in yaml.safe_load_all(f) if d})


@needs_ruby
def test_vagrantfile_defines_the_example_nodes():
    out = subprocess.run(["ruby", STUB, VAGRANTFILE], capture_output=True, text=True, check=True)
    calls = json.loads(out.stdout)

    def args(path: str) -> list[list]:
        return [c["args"] for c in calls if c["path"] == path]

    assert args("vm.box=") == [["debian/bookworm64"]]
    [(src, dst)] = [c["args"] for c in calls if c["path"] == "vm.synced_folder" and not c["kw"].get("disabled")]
    assert (src, dst) == ("..", "/podnet")      # .. of vagrant/: the repository
    names = [a[0] for a in args("vm.define")]
    assert names == ["node-1", "node-2", "node-3"] and sorted(names) == example_node_names()
    for i, name in enumerate(names, start=1):
        ip = f"192.168.56.{10 + i}"
        assert args(f"vm.define.{name}.vm.hostname=") == [[name]]
        net = [c for c in calls if c["path"] == f"vm.define.{name}.vm.network"]
        assert [(c["args"], c["kw"]) for c in net] == [(["private_network"], {"ip": ip})]
        [prov] = [c for c in calls if c["path"] == f"vm.define.{name}.vm.provision"]
        assert prov["args"] == ["shell"] and prov["kw"]["path"] == "provision.sh"
        assert prov["kw"]["args"] == [name, ip]
        assert prov["kw"]["env"] == {"ETCD_IP": "192.168.56.11"}


def provision(ns: str, node: str, ip: str, root: str, endpoints: str) -> subprocess.CompletedProcess:
    env = {"PATH": os.environ["PATH"], "PODNET_ROOT": root, "PODNET_SKIP_SETUP": "1",
           "PODNET": PODNET, "ETCD_ENDPOINTS": endpoints, "PODNET_REPO": REPO}
    return subprocess.run(["ip", "netns", "exec", ns, "env", *(f"{k}={v}" for k, v in env.items()),
                           "bash", PROVISION, node, ip], capture_output=True, text=True, timeout=120)


def test_provision_steps_against_etcd(etcd, tmp_path):  # noqa: F811
    """node-1 gets the etcd unit and stores the network config; node-2 only the node units."""
    from podnet import lab, node
    from podnet.cluster import NetnsScope, NetnsStore
    from podnet.etcd import Store

    roots = {n: str(tmp_path / n) for n in ("node-1", "node-2")}
    for i, (name, root) in enumerate(roots.items(), start=1):
        proc = provision(etcd.client_ns, name, f"192.168.56.1{i}", root, etcd.url)
        assert proc.returncode == 0, proc.stdout + proc.stderr
    store = NetnsStore(Store([etcd.url], timeout=3), NetnsScope(etcd.client_ns))
    kv = store.get("/coreos.com/network/config")
    assert kv is not None and json.loads(kv.value) == lab.network_config("vxlan")

    units1 = sorted(os.listdir(os.path.join(roots["node-1"], "etc/systemd/system")))
    units2 = sorted(os.listdir(os.path.join(roots["node-2"], "etc/systemd/system")))
    assert units1 == sorted(NODE_UNITS + ["podnet-etcd.service"]) and units2 == NODE_UNITS
    # node-2's runner: the same argv podnet.node gives a standard node on eth1
    cfg = node.standard("node-2", etcd.url, "eth1", "192.168.56.12")
    with open(os.path.join(roots["node-2"], "etc/systemd/system/podnet-runner.service")) as f:
        exec_start = next(line for line in f if line.startswith("ExecStart="))
    argv = shlex.split(exec_start[len("ExecStart="):])
    want = dict(node.daemons(cfg, argv[0]))["runner"]    # argv[0]: the python podnet runs on
    assert argv == want and os.path.dirname(argv[0]) == os.path.dirname(sys.executable)
    for root in roots.values():
        assert os.path.exists(os.path.join(root, "etc/cni/net.d/10-flannel.conflist"))
        assert os.access(os.path.join(root, "opt/cni/bin/flannel"), os.X_OK)
