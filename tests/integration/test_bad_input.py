"""Bad input gets the spec's error code and a clear message, and leaves nothing behind; many
ADDs at once get distinct addresses. Run through the installed executables, both modes."""
from __future__ import annotations

import concurrent.futures
import json
import subprocess

import pytest

from tests.conftest import ns_run
from tests.integration.conftest import ip_json


def good_conf(tmp_path, **kw):
    conf = {"cniVersion": "1.0.0", "name": "badnet", "type": "bridge", "bridge": "br-bad",
            "isGateway": True, "ipMasq": True,
            "ipam": {"type": "host-local", "subnet": "10.27.0.0/24", "dataDir": str(tmp_path / "ipam")}}
    conf.update(kw)
    return conf


def without(d, key):
    return {k: v for k, v in d.items() if k != key}


CASES = [
    # (id, stdin builder, env overrides, expected code, message fragment)
    ("malformed-json", lambda c: b'{"cniVersion": "1.0.0", "name": ', {}, 6, "error decoding network config"),
    ("not-an-object", lambda c: b'[1, 2]', {}, 6, "not a JSON object"),
    ("unknown-version", lambda c: {**c, "cniVersion": "0.9.0"}, {}, 1, "incompatible CNI versions"),
    ("missing-version", lambda c: without(c, "cniVersion"), {}, 1, "missing cniVersion"),
    ("missing-name", lambda c: without(c, "name"), {}, 7, "missing network name"),
    ("missing-type", lambda c: without(c, "type"), {}, 7, "missing plugin type"),
    ("bad-cidr", lambda c: {**c, "ipam": {**c["ipam"], "subnet": "10.27.0.0/33"}}, {}, 7, "invalid CIDR"),
    ("host-bits", lambda c: {**c, "ipam": {**c["ipam"], "subnet": "10.27.0.9/24"}}, {}, 7, "host bits set"),
    ("unknown-command", lambda c: c, {"CNI_COMMAND": "FROB"}, 4, "unknown CNI_COMMAND: FROB"),
    ("missing-command", lambda c: c, {"CNI_COMMAND": None}, 4, "CNI_COMMAND"),
    ("container-id-slash", lambda c: c, {"CNI_CONTAINERID": "a/b"}, 4, "invalid characters in containerID"),
    ("container-id-dotdot", lambda c: c, {"CNI_CONTAINERID": ".."}, 4, "invalid characters in containerID"),
    ("network-name-slash", lambda c: {**c, "name": "../etc"}, {}, 7, "invalid characters in network name"),
    ("network-name-dotdot", lambda c: {**c, "name": ".."}, {}, 7, "invalid characters in network name"),
    ("missing-netns", lambda c: c, {"CNI_NETNS": None}, 4, "CNI_NETNS"),
    ("ifname-too-long", lambda c: c, {"CNI_IFNAME": "x" * 16}, 4, "interface name is too long"),
    ("bad-mtu", lambda c: {**c, "mtu": "big"}, {}, 7, "invalid mtu"),
    ("version-without-check", lambda c: {**c, "cniVersion": "0.3.1"}, {"CNI_COMMAND": "CHECK"}, 1, "does not allow command CHECK"),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input(netns_factory, tmp_path, cni, case):
    _, build, env_over, code, needle = case
    host, pod = netns_factory("host"), netns_factory("pod")
    stdin = build(good_conf(tmp_path))
    raw = stdin if isinstance(stdin, bytes) else json.dumps(stdin).encode()
    rc, res, err = run_with_env(cni, host, raw, f"/run/netns/{pod}", env_over)
    assert rc == 1, (res, err)
    assert res["code"] == code, res
    assert needle in res["msg"], res
    assert "Traceback" not in err
    # nothing left behind: no bridge/veth, no reservation, no rule
    assert ip_json(host, "-n", host, "link", "show", "type", "veth") == []
    assert ip_json(pod, "-n", pod, "link", "show", "type", "veth") == []
    assert not (tmp_path / "ipam" / "badnet").exists() or not any(
        p.name[0].isdigit() for p in (tmp_path / "ipam" / "badnet").iterdir())
    assert "CNI-" not in ns_run(host, ["iptables-save", "-t", "nat"]).stdout


def run_with_env(cni, host, raw, netns, env_over):
    """Like the `cni` runner, but able to drop variables (None) from the environment."""
    import os
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "bad1",
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": cni.bindir, **cni.extra_env}
    for k, v in env_over.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    proc = subprocess.run(["ip", "netns", "exec", host, os.path.join(cni.bindir, "bridge")],
                          input=raw, env=env, capture_output=True, timeout=60)
    out = proc.stdout.decode()
    return proc.returncode, (json.loads(out) if out.strip() else None), proc.stderr.decode()


def test_fifty_parallel_adds_then_dels(netns_factory, tmp_path, cni):
    host = netns_factory("host")
    pods = [netns_factory("p") for _ in range(50)]
    conf = good_conf(tmp_path)

    def call(i, command):
        return cni(host, "bridge", command, conf, container_id=f"par{i}", netns=f"/run/netns/{pods[i]}")

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        adds = list(pool.map(lambda i: call(i, "ADD"), range(50)))
    assert all(rc == 0 for rc, _, _ in adds), [r for r in adds if r[0] != 0][:2]
    addrs = {res["ips"][0]["address"] for _, res, _ in adds}
    assert len(addrs) == 50
    reserved = [p.name for p in (tmp_path / "ipam" / "badnet").iterdir() if p.name[0].isdigit()]
    assert len(reserved) == 50
    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        dels = list(pool.map(lambda i: call(i, "DEL"), range(50)))
    assert all(rc == 0 for rc, _, _ in dels), [r for r in dels if r[0] != 0][:2]
    assert not any(p.name[0].isdigit() for p in (tmp_path / "ipam" / "badnet").iterdir())
    assert ip_json(host, "-n", host, "link", "show", "type", "veth") == []
    assert "CNI-" not in ns_run(host, ["iptables-save", "-t", "nat"]).stdout
