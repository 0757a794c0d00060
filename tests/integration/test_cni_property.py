"""Property: whatever config and environment a plugin gets, it answers with a valid result or
a valid CNI error — never a traceback, never output that is neither.

Plugins run in-process through ``skel.run`` with the calling thread inside a throwaway "host"
namespace, so anything they create lands there and disappears with it.
"""
from __future__ import annotations

import ipaddress
import json

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from cni import registry, spec
from cni.skel import run
from podnet import netns

PLUGINS = ["bridge", "host-local", "loopback", "portmap", "flannel"]

names = st.one_of(st.sampled_from(["net1"] * 6 + ["cbr0", "a..b", "../x", "", "x/y", "n" * 300]),
                  st.text(max_size=12))
versions = st.one_of(st.sampled_from(list(spec.SUPPORTED_VERSIONS) * 3 + ["0.2.0", "9.9.9", "", "x"]),
                     st.none(), st.integers())
cidrs = st.one_of(st.sampled_from(["10.30.0.0/24"] * 5 + ["10.30.0.0/33", "10.30.0.5/24", "fd30::/64",
                                   "10.30.0.0/31", "bogus", ""]), st.none(), st.integers())
commands = st.sampled_from(["ADD"] * 4 + ["DEL", "DEL", "CHECK", "VERSION", "GC", "STATUS", "", "BOGUS"])
json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                           lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                           max_leaves=8)


def valid_config(plugin: str, data_dir: str, subnet_file: str) -> dict:
    conf = {"cniVersion": "1.0.0", "name": "net1", "type": plugin,
            "ipam": {"type": "host-local", "subnet": "10.30.0.0/24", "dataDir": data_dir}}
    if plugin == "flannel":
        conf.update(subnetFile=subnet_file, dataDir=data_dir + "/flannel")
    if plugin == "portmap":
        conf.update(runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80,
                                                     "protocol": "tcp"}]},
                    prevResult={"cniVersion": "1.0.0", "ips": [{"address": "10.30.0.9/24"}],
                                "interfaces": [{"name": "eth0", "sandbox": "/x"}]})
    return conf


@st.composite
def configs(draw, plugin: str, data_dir: str, subnet_file: str):
    if draw(st.booleans()):  # a valid config half of the time, maybe with one field changed
        conf = valid_config(plugin, data_dir, subnet_file)
        if draw(st.booleans()):
            conf[draw(st.sampled_from(sorted(conf)))] = draw(json_values)
        return conf
    conf: dict = {"cniVersion": draw(versions), "name": draw(names),
                  "type": draw(st.sampled_from(PLUGINS + ["", None]))}
    ipam = {"type": draw(st.sampled_from(["host-local", "", "nonexistent"])),
            "subnet": draw(cidrs), "dataDir": data_dir}
    if draw(st.booleans()):
        ipam["rangeStart"] = draw(st.sampled_from(["10.30.0.10", "10.31.0.1", "x"]))
    conf["ipam"] = draw(st.sampled_from([ipam, None, "str", []]))
    for key in ("isGateway", "ipMasq", "hairpinMode", "promiscMode", "isDefaultGateway"):
        if draw(st.booleans()):
            conf[key] = draw(st.one_of(st.booleans(), json_values))
    if draw(st.booleans()):
        conf["mtu"] = draw(st.one_of(st.integers(-10, 70000), json_values))
    if draw(st.booleans()):
        conf["vlan"] = draw(st.integers(-5, 5000))
    if draw(st.booleans()):
        conf["bridge"] = draw(st.sampled_from(["pbr0", "x" * 20, "a/b", ""]))
    if draw(st.booleans()):
        conf["runtimeConfig"] = draw(st.one_of(
            json_values,
            st.just({"portMappings": [{"hostPort": draw(st.integers(-1, 70000)),
                                       "containerPort": draw(st.integers(-1, 70000)),
                                       "protocol": draw(st.sampled_from(["tcp", "udp", "sctp", "x"]))}]})))
    if draw(st.booleans()):
        conf["prevResult"] = draw(st.one_of(json_values, st.just(
            {"cniVersion": "1.0.0", "ips": [{"address": "10.30.0.9/24"}],
             "interfaces": [{"name": "eth0", "sandbox": "/x"}]})))
    if conf["type"] == "flannel":
        conf["subnetFile"] = subnet_file
        conf["dataDir"] = data_dir + "/flannel"
    for k in [k for k, v in conf.items() if v is None and draw(st.booleans())]:
        del conf[k]
    return conf


def check_answer(code: int, out: bytes, command: str) -> None:
    if code == 0:
        if command in ("ADD", "VERSION"):
            body = json.loads(out)
            assert isinstance(body, dict) and "cniVersion" in body
            if command == "ADD":
                for ip in body.get("ips", []):
                    ipaddress.ip_interface(ip["address"])
                assert isinstance(body.get("interfaces", []), list)
        else:
            assert out == b""
        return
    assert code == 1
    err = json.loads(out)
    assert set(err) <= {"cniVersion", "code", "msg", "details"}
    assert isinstance(err["code"], int) and err["code"] > 0
    assert isinstance(err["msg"], str) and err["msg"]
    assert "Traceback" not in err["msg"]
    assert err["code"] != spec.INTERNAL or "internal error" not in err["msg"], err["msg"]


@pytest.fixture(scope="module")
def host_and_pod():
    host = netns.create("pn-test-prop-host")
    pod = netns.create("pn-test-prop-pod")
    try:
        yield host, pod
    finally:
        netns.remove("pn-test-prop-pod")
        netns.remove("pn-test-prop-host")


@settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_every_plugin_answers_validly(host_and_pod, tmp_path_factory, data):
    host, pod = host_and_pod
    base = tmp_path_factory.mktemp("prop")
    subnet_file = base / "subnet.env"
    subnet_file.write_text("FLANNEL_NETWORK=10.30.0.0/16\nFLANNEL_SUBNET=10.30.1.1/24\n"
                           "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    plugin_name = data.draw(st.sampled_from(PLUGINS))
    conf = data.draw(configs(plugin_name, str(base), str(subnet_file)))
    command = data.draw(commands)
    env = {"CNI_COMMAND": command, "CNI_CONTAINERID": "c1", "CNI_NETNS": pod,
           "CNI_IFNAME": "eth0", "CNI_PATH": "/nonexistent", "CNI_ARGS": ""}
    if data.draw(st.booleans()):  # a broken environment half of the time
        key = data.draw(st.sampled_from(sorted(env)))
        bad = {"CNI_CONTAINERID": ["", "../evil", "a/b", ".."], "CNI_NETNS": ["/run/netns/pn-test-nope", ""],
               "CNI_IFNAME": ["", "x" * 16, "a:b", ".."], "CNI_ARGS": ["IP=10.30.0.7", "bad", "MAC=zz"],
               "CNI_PATH": [""], "CNI_COMMAND": ["", "BOGUS", "GC"]}[key]
        value = data.draw(st.sampled_from(bad + [None]))
        if value is None:
            del env[key]
        else:
            env[key] = value
    stdin = json.dumps(conf).encode() if data.draw(st.integers(0, 9)) else data.draw(st.binary(max_size=20))
    command = env.get("CNI_COMMAND", "")
    plugin = registry.load(plugin_name)
    with netns.entered(host):
        code, out = run(plugin, env, stdin)
        if code == 0 and command == "ADD":  # undo, so examples stay independent
            run(plugin, {**env, "CNI_COMMAND": "DEL"}, stdin)
    event(f"{plugin_name} {command} -> {'ok' if code == 0 else json.loads(out)['code']}")
    check_answer(code, out, command)
