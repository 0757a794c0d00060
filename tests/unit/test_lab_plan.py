"""The lab's plan is pure data: names, addresses, files and command lines."""
from __future__ import annotations

import pytest

from podnet import lab


def test_plan_names_and_addresses():
    st = lab.plan(lab.LabSpec(name="t1", nodes=3, backend="host-gw", etcd_members=3))
    assert st.underlay_netns == "pn-t1-underlay" and st.client_netns == "pn-t1-ctl"
    assert [m.ip for m in st.members] == ["192.168.200.2", "192.168.200.3", "192.168.200.4"]
    assert [(n.name, n.ip, n.netns) for n in st.nodes] == [
        ("node-1", "192.168.200.11", "pn-t1-node-1"), ("node-2", "192.168.200.12", "pn-t1-node-2"),
        ("node-3", "192.168.200.13", "pn-t1-node-3")]
    assert st.client_ip == "192.168.200.250"
    assert st.etcd_endpoints == ["http://192.168.200.2:2379", "http://192.168.200.3:2379",
                                 "http://192.168.200.4:2379"]


def test_etcd_cluster_flags():
    st = lab.plan(lab.LabSpec(name="t2", etcd_members=3))
    argv = lab.etcd_argv(st.members[1], st.members)
    assert argv[argv.index("--initial-cluster") + 1] == (
        "etcd-0=http://192.168.200.2:2380,etcd-1=http://192.168.200.3:2380,"
        "etcd-2=http://192.168.200.4:2380")
    assert argv[argv.index("--listen-client-urls") + 1] == "http://192.168.200.3:2379"


def test_node_processes_and_conflist():
    st = lab.plan(lab.LabSpec(name="t3", nodes=1))
    node = st.nodes[0]
    procs = lab.node_processes(st, node, python="/py")
    assert [p.role for p in procs] == ["cni-daemon", "flanneld", "runner", "kube-proxy"]
    flanneld = procs[1].argv
    assert flanneld[:3] == ["/py", "-m", "flannel_py"]
    assert "--iface=eth0" in flanneld and "--ip-masq" in flanneld
    assert f"--subnet-file={node.subnet_file}" in flanneld
    conf = lab.flannel_conflist(node)
    assert [p["type"] for p in conf["plugins"]] == ["flannel", "portmap"]
    assert conf["plugins"][0]["subnetFile"] == node.subnet_file
    assert lab.network_config("udp") == {"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}


@pytest.mark.parametrize("spec,needle", [
    (lab.LabSpec(name="bad name"), "lab name"),
    (lab.LabSpec(nodes=0), "--nodes"),
    (lab.LabSpec(backend="gre"), "--backend"),
    (lab.LabSpec(etcd_members=2), "--etcd-members"),
])
def test_bad_specs(spec, needle):
    with pytest.raises(lab.LabError, match=needle):
        lab.plan(spec)


def test_node_object():
    node = lab.plan(lab.LabSpec(name="t4", nodes=1)).nodes[0]
    obj = lab.node_object(node, ready=True, pod_cidr="10.244.3.0/24")
    assert obj["spec"]["podCIDR"] == "10.244.3.0/24"
    assert obj["status"]["conditions"] == [{"type": "Ready", "status": "True"}]
    assert {"type": "InternalIP", "address": "192.168.200.11"} in obj["status"]["addresses"]
