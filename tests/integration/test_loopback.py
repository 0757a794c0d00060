"""loopback executed as a runtime does, side by side with the Go reference plugin."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import ns_run
from tests.integration.conftest import ip_json

GO_LOOPBACK = "/usr/lib/cni/loopback"


def lo_up(ns: str) -> bool:
    return "UP" in ip_json(ns, "-n", ns, "link", "show", "lo")[0]["flags"]


def conf(version: str = "1.0.0", **kw) -> dict:
    return {"cniVersion": version, "name": "lo", "type": "loopback", **kw}


def run_go(command: str, config: dict, netns: str) -> tuple[int, dict | None]:
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "ctr1", "CNI_NETNS": netns,
           "CNI_IFNAME": "lo", "CNI_PATH": "/usr/lib/cni", "PATH": os.environ["PATH"]}
    p = subprocess.run([GO_LOOPBACK], input=json.dumps(config).encode(), env=env,
                       capture_output=True, timeout=30)
    return p.returncode, (json.loads(p.stdout) if p.stdout.strip() else None)


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_brings_lo_up_and_reports_it(netns_factory, cni, version):
    host, pod = netns_factory("lohost"), netns_factory("lopod")
    ns_run(pod, ["ip", "link", "set", "lo", "down"])
    code, res, err = cni(host, "loopback", "ADD", conf(version), netns=f"/run/netns/{pod}",
                         ifname="eth0")
    assert code == 0, (res, err)
    assert lo_up(pod)
    assert res["cniVersion"] == version
    assert res["interfaces"] == [{"name": "lo", "mac": "00:00:00:00:00:00",
                                  "sandbox": f"/run/netns/{pod}"}]
    addrs = [(ip["interface"], ip["address"]) for ip in res["ips"]]
    assert addrs == [(0, "127.0.0.1/8"), (0, "::1/128")]
    assert res["dns"] == {}


@pytest.mark.skipif(not os.path.exists(GO_LOOPBACK), reason="Go reference plugins not installed")
@pytest.mark.parametrize("version", ["1.0.0"])
def test_add_result_equals_go_reference(netns_factory, cni, version):
    host, pod = netns_factory("lohost"), netns_factory("lopod")
    netns = f"/run/netns/{pod}"
    ns_run(pod, ["ip", "link", "set", "lo", "down"])
    code, ours, err = cni(host, "loopback", "ADD", conf(version), netns=netns, ifname="lo")
    assert code == 0, (ours, err)
    ns_run(pod, ["ip", "link", "set", "lo", "down"])
    gcode, theirs = run_go("ADD", conf(version), netns)
    assert gcode == 0
    assert ours == theirs


def test_add_passes_prev_result_through(netns_factory, cni):
    host, pod = netns_factory("lohost"), netns_factory("lopod")
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.5.0.2/24", "interface": 0}]}
    code, res, err = cni(host, "loopback", "ADD", conf(prevResult=prev),
                         netns=f"/run/netns/{pod}")
    assert code == 0, (res, err)
    assert res["ips"] == [{"address": "10.5.0.2/24", "interface": 0}]
    assert res["interfaces"] == [{"name": "eth0", "sandbox": "/x"}]
    assert lo_up(pod)


def test_check_and_del(netns_factory, cni):
    host, pod = netns_factory("lohost"), netns_factory("lopod")
    netns = f"/run/netns/{pod}"
    code, res, err = cni(host, "loopback", "ADD", conf(), netns=netns)
    assert code == 0, (res, err)
    code, res, err = cni(host, "loopback", "CHECK", conf(), netns=netns)
    assert code == 0, (res, err)

    code, res, err = cni(host, "loopback", "DEL", conf(), netns=netns)
    assert code == 0, (res, err)
    assert not lo_up(pod)
    code, res, err = cni(host, "loopback", "CHECK", conf(), netns=netns)
    assert code == 1 and res["msg"] == "loopback interface is down" and res["code"] == 999

    # DEL again, DEL with the namespace gone, DEL with no namespace: all succeed
    code, res, err = cni(host, "loopback", "DEL", conf(), netns=netns)
    assert code == 0, (res, err)
    subprocess.run(["ip", "netns", "del", pod], check=True)
    code, res, err = cni(host, "loopback", "DEL", conf(), netns=netns)
    assert code == 0, (res, err)
    code, res, err = cni(host, "loopback", "DEL", conf(), netns="")
    assert code == 0, (res, err)


def test_add_into_missing_netns_fails(netns_factory, cni):
    host = netns_factory("lohost")
    code, res, err = cni(host, "loopback", "ADD", conf(), netns="/run/netns/pn-test-no-such-ns")
    assert code == 1 and "pn-test-no-such-ns" in res["msg"], (res, err)
