"""The flannel meta-plugin: subnet.env → bridge delegate, saved config replayed on DEL."""
from __future__ import annotations

import json

from flannel_py.subnet.subnet_env import render_subnet_env
import ipaddress

from cni.names import chain_name
from tests.conftest import ns_run
from tests.integration.conftest import ip_json


def setup_conf(tmp_path, masq=False, mtu=1450):
    env = tmp_path / "subnet.env"
    env.write_text(render_subnet_env(ipaddress.ip_network("10.244.0.0/16"),
                                     ipaddress.ip_network("10.244.1.0/24"), mtu, masq))
    return {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
            "subnetFile": str(env), "dataDir": str(tmp_path / "flannel"),
            "ipam": {"dataDir": str(tmp_path / "ipam")}}


def test_flannel_add_del(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pod = netns_factory("pod")
    conf = setup_conf(tmp_path)
    code, res, err = cni(host, "flannel", "ADD", conf, container_id="f1", netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    assert res["ips"][0]["address"] == "10.244.1.2/24"
    assert res["ips"][0]["gateway"] == "10.244.1.1"
    assert {"dst": "10.244.0.0/16"} in res["routes"]
    saved = json.loads((tmp_path / "flannel" / "f1").read_text())
    assert saved == {"cniVersion": "1.0.0", "name": "cbr0", "type": "bridge", "ipMasq": True,
                     "mtu": 1450, "isGateway": True,
                     "ipam": {"dataDir": str(tmp_path / "ipam"), "type": "host-local",
                              "ranges": [[{"subnet": "10.244.1.0/24"}]],
                              "routes": [{"dst": "10.244.0.0/16"}]}}
    link = ip_json(pod, "-n", pod, "link", "show", "eth0")[0]
    assert link["mtu"] == 1450
    route = ip_json(pod, "-n", pod, "route", "show", "10.244.0.0/16")[0]
    assert route["gateway"] == "10.244.1.1"
    assert chain_name("cbr0", "f1") in ns_run(host, ["iptables-save", "-t", "nat"]).stdout
    code, res, err = cni(host, "flannel", "DEL", conf, container_id="f1", netns=f"/run/netns/{pod}")
    assert (code, res) == (0, None), err
    assert not (tmp_path / "flannel" / "f1").exists()
    assert not list((tmp_path / "ipam" / "cbr0").glob("10.*"))
    assert chain_name("cbr0", "f1") not in ns_run(host, ["iptables-save", "-t", "nat"]).stdout
    # DEL again: nothing saved, nothing to do, still success
    assert cni(host, "flannel", "DEL", conf, container_id="f1", netns=f"/run/netns/{pod}")[0] == 0


def test_flannel_ipmasq_true_means_no_bridge_masq(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pod = netns_factory("pod")
    conf = setup_conf(tmp_path, masq=True)
    code, res, err = cni(host, "flannel", "ADD", conf, container_id="f2", netns=f"/run/netns/{pod}")
    assert code == 0, err
    assert "CNI-" not in ns_run(host, ["iptables-save", "-t", "nat"]).stdout


def test_failed_delegate_del_keeps_saved_config(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    conf = setup_conf(tmp_path)
    saved = tmp_path / "flannel" / "f3"
    saved.parent.mkdir()
    saved.write_text(json.dumps({"cniVersion": "1.0.0", "name": "cbr0", "type": "no-such-plugin"}))
    code, res, _ = cni(host, "flannel", "DEL", conf, container_id="f3", netns="")
    assert code == 1 and "no-such-plugin" in res["msg"]
    assert saved.exists()


def test_missing_subnet_env_is_try_again(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pod = netns_factory("pod")
    conf = setup_conf(tmp_path)
    conf["subnetFile"] = str(tmp_path / "missing.env")
    code, res, _ = cni(host, "flannel", "ADD", conf, container_id="f4", netns=f"/run/netns/{pod}")
    assert code == 1 and res["code"] == 11 and "Check the flannel pod log" in res["msg"]
    assert not (tmp_path / "flannel" / "f4").exists()
    conf = setup_conf(tmp_path)
    conf["delegate"] = {"name": "x"}
    code, res, _ = cni(host, "flannel", "ADD", conf, container_id="f5", netns=f"/run/netns/{pod}")
    assert code == 1 and res["code"] == 7 and "must not have 'name'" in res["msg"]
