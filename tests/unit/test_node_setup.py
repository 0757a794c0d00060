"""`podnet node setup`: a real node gets the lab's daemons, as systemd units, and its files."""
from __future__ import annotations

import configparser
import json
import os
import shlex
import subprocess
import sys

import pytest

from cni import registry
from podnet import lab, node
from tests.fakes.etcd import FakeClock, FakeStore

ETCD = "http://192.168.56.11:2379"
UNITS = ["podnet-cni.service", "flanneld.service", "podnet-runner.service", "kube-proxy.service"]


def podnet(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "podnet", *args], capture_output=True, text=True)


def read_unit(path) -> configparser.ConfigParser:
    # strict=False: a unit may repeat keys; interpolation off: % is systemd's
    cp = configparser.ConfigParser(strict=False, interpolation=None)
    cp.optionxform = str
    cp.read(path)
    return cp


def lab_node() -> tuple[lab.LabState, lab.Node]:
    st = lab.plan(lab.LabSpec(name="vm", nodes=3))
    return st, st.nodes[1]


def test_lab_runs_node_daemons():
    st, n = lab_node()
    procs = lab.node_processes(st, n, python="/py")
    assert [(p.role, p.argv) for p in procs] == node.daemons(n.config(st.etcd_endpoints), "/py")
    assert lab.flannel_conflist(n) == node.conflist(n.config())
    assert n.config().cni_bin == os.path.join(n.dir, "bin")


def to_standard(argv: list[str], st: lab.LabState, n: lab.Node, ip: str) -> list[str]:
    """The lab's argv with the lab's paths, etcd, interface and address swapped for a VM's."""
    labcfg, std = n.config(st.etcd_endpoints), node.standard(n.name, ETCD, "eth1", ip)
    swaps = [(getattr(labcfg, f), getattr(std, f)) for f in
             ("cni_bin", "conflist", "subnet_file", "runner_dir", "cni_socket", "endpoints")]
    swaps += [("--iface=eth0", "--iface=eth1"), (n.ip, ip)]
    out = []
    for arg in argv:
        for old, new in swaps:
            arg = arg.replace(old, new)
        out.append(arg)
    return out


def test_setup_root_writes_units_with_the_lab_argv(tmp_path):
    st, n = lab_node()
    proc = podnet("node", "setup", "--name", n.name, "--etcd-endpoints", ETCD, "--iface", "eth1",
                  "--ip", "192.168.56.12", "--root", str(tmp_path), "--no-native")
    assert proc.returncode == 0, proc.stderr
    unit_dir = tmp_path / "etc" / "systemd" / "system"
    assert sorted(os.listdir(unit_dir)) == sorted(UNITS)
    std = node.standard(n.name, ETCD, "eth1", "192.168.56.12")
    lab_argv = {p.role: p.argv for p in lab.node_processes(st, n, python=sys.executable)}
    for (role, argv), unit in zip(node.daemons(std, sys.executable), UNITS):
        cp = read_unit(unit_dir / unit)
        exec_start = shlex.split(cp["Service"]["ExecStart"])
        assert exec_start == argv
        assert exec_start == to_standard(lab_argv[role], st, n, "192.168.56.12")
        assert cp["Service"]["Restart"] == "always"
        assert cp["Install"]["WantedBy"] == "multi-user.target"
    runner = read_unit(unit_dir / "podnet-runner.service")
    assert set(runner["Unit"]["After"].split()) >= {"flanneld.service", "podnet-cni.service"}
    assert runner["Service"]["KillMode"] == "process"      # pods outlive a runner restart
    flanneld = shlex.split(read_unit(unit_dir / "flanneld.service")["Service"]["ExecStart"])
    assert "--iface=eth1" in flanneld and "--subnet-file=/run/flannel/subnet.env" in flanneld
    conf = json.loads((tmp_path / "etc/cni/net.d/10-flannel.conflist").read_text())
    assert conf == node.conflist(std)
    assert conf["plugins"][0]["subnetFile"] == "/run/flannel/subnet.env"
    bindir = tmp_path / "opt" / "cni" / "bin"
    assert sorted(os.listdir(bindir)) == sorted(registry.available())
    # the plugins name the real socket, not the staging directory
    assert "/run/podnet/cni.sock" in (bindir / "flannel").read_text()
    assert all(os.access(bindir / p, os.X_OK) for p in registry.available())


def test_setup_with_root_never_runs_systemctl(tmp_path):
    def refuse(argv):
        raise AssertionError(f"ran {argv}")
    cfg = node.standard("node-1", ETCD, "eth1", "192.168.56.11")
    written = node.setup(cfg, root=str(tmp_path), start=True, native=False, run=refuse)
    assert str(tmp_path / "etc/systemd/system/podnet-runner.service") in written


def test_etcd_unit(tmp_path):
    proc = podnet("node", "etcd-unit", "--name", "node-1", "--ip", "192.168.56.11",
                  "--root", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    cp = read_unit(tmp_path / "etc/systemd/system/podnet-etcd.service")
    argv = shlex.split(cp["Service"]["ExecStart"])
    assert argv[argv.index("--initial-cluster") + 1] == "node-1=http://192.168.56.11:2380"
    assert argv[argv.index("--listen-client-urls") + 1] == \
        "http://192.168.56.11:2379,http://127.0.0.1:2379"
    assert argv[argv.index("--data-dir") + 1] == "/var/lib/podnet/etcd"
    assert cp["Service"]["Type"] == "notify" and cp["Service"]["Restart"] == "always"


def test_lab_etcd_argv_is_node_etcd_argv():
    st = lab.plan(lab.LabSpec(name="e", etcd_members=3))
    m = st.members[0]
    cluster = ",".join(f"{x.name}={x.peer_url}" for x in st.members)
    assert lab.etcd_argv(m, st.members) == node.etcd_argv(m.name, m.ip, m.data_dir, cluster)


def test_init_network_waits_for_etcd():
    store, clock = FakeStore(), FakeClock()
    store.down = True
    naps = []

    def sleep(s):
        naps.append(s)
        if len(naps) == 3:
            store.down = False

    cfg = node.init_network(ETCD, "vxlan", timeout=60, sleep=sleep, clock=clock, store=store)
    assert cfg == {"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}}
    assert json.loads(store.get("/coreos.com/network/config").value) == cfg
    assert len(naps) == 3


def test_init_network_gives_up():
    store, t = FakeStore(), [0.0]
    store.down = True

    def sleep(s):
        t[0] += s

    with pytest.raises(node.NodeError, match="did not answer in 5 s"):
        node.init_network(ETCD, "udp", timeout=5, sleep=sleep, clock=lambda: t[0], store=store)
    assert store.kvs == {}


@pytest.mark.parametrize("arg,word", [
    ("/opt/cni/bin", "/opt/cni/bin"),
    ("a b", '"a b"'),
    ("50%", "50%%"),
    ('say "hi"', '"say \\"hi\\""'),
])
def test_exec_start_quoting(arg, word):
    assert node._exec_quote(arg) == word
