"""host-local: ranges, allocation order, the on-disk layout, errors (no kernel needed)."""
from __future__ import annotations

import ipaddress
import json
import os
import threading

import pytest

from cni import spec
from cni.ipam import host_local, ranges
from cni.skel import run


def conf(tmp_path, version="1.0.0", **ipam):
    ipam.setdefault("type", "host-local")
    ipam.setdefault("dataDir", str(tmp_path))
    ipam.setdefault("subnet", "10.1.2.0/24")
    return {"cniVersion": version, "name": "net1", "type": "bridge", "ipam": ipam}


def env(cmd, cid="c1", ifname="eth0", args=""):
    return {"CNI_COMMAND": cmd, "CNI_CONTAINERID": cid, "CNI_NETNS": "/run/netns/x",
            "CNI_IFNAME": ifname, "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": args}


def call(cmd, config, **kw):
    code, out = run(host_local.PLUGIN, env(cmd, **kw), json.dumps(config).encode())
    return code, (json.loads(out) if out else None)


def test_add_gives_first_address_after_gateway_with_go_layout(tmp_path):
    code, res = call("ADD", conf(tmp_path))
    assert code == 0
    assert res["ips"] == [{"address": "10.1.2.2/24", "gateway": "10.1.2.1"}]
    store = tmp_path / "net1"
    assert (store / "10.1.2.2").read_bytes() == b"c1\r\neth0"
    assert (store / "last_reserved_ip.0").read_text() == "10.1.2.2"
    assert (store / "lock").exists()


def test_result_versions(tmp_path):
    code, res = call("ADD", conf(tmp_path, version="0.3.1"))
    assert code == 0 and res["cniVersion"] == "0.3.1"
    assert res["ips"][0]["version"] == "4"


def test_round_robin_continues_after_last_reserved(tmp_path):
    c = conf(tmp_path)
    call("ADD", c, cid="a")
    call("ADD", c, cid="b")
    call("DEL", c, cid="a")
    _, res = call("ADD", c, cid="c")
    assert res["ips"][0]["address"] == "10.1.2.4/24"  # not the freed .2


def test_exhausted_range_is_error_and_leaves_nothing(tmp_path):
    c = conf(tmp_path, subnet="10.9.0.0/29", rangeStart="10.9.0.2", rangeEnd="10.9.0.3")
    assert call("ADD", c, cid="a")[0] == 0
    assert call("ADD", c, cid="b")[0] == 0
    code, err = call("ADD", c, cid="x")
    assert code == 1 and err["code"] == spec.TRY_AGAIN_LATER
    assert "no IP addresses available in range set: 10.9.0.2-10.9.0.3" in err["msg"]
    ips = sorted(p.name for p in (tmp_path / "net1").iterdir() if p.name[0].isdigit())
    assert ips == ["10.9.0.2", "10.9.0.3"]


def test_dual_stack_ranges_all_or_nothing(tmp_path):
    c = conf(tmp_path, subnet=None, ranges=[[{"subnet": "10.5.0.0/30"}], [{"subnet": "fd00::/120"}]])
    del c["ipam"]["subnet"]
    code, res = call("ADD", c, cid="a")
    assert code == 0
    assert [ip["address"] for ip in res["ips"]] == ["10.5.0.2/30", "fd00::2/120"]
    # v4 range now exhausted: the v6 reservation of the failed ADD must not stay behind
    code, err = call("ADD", c, cid="b")
    assert code == 1
    files = {p.name for p in (tmp_path / "net1").iterdir()}
    assert "fd00::3" not in files and "fd00::2" in files


def test_requested_ip_via_cni_args(tmp_path):
    c = conf(tmp_path)
    code, res = call("ADD", c, cid="a", args="IgnoreUnknown=1;IP=10.1.2.77")
    assert code == 0 and res["ips"][0]["address"] == "10.1.2.77/24"
    code, err = call("ADD", c, cid="b", args="IP=10.1.2.77")
    assert code == 1 and "not available" in err["msg"]
    code, err = call("ADD", c, cid="c", args="IP=10.1.2.1")
    assert code == 1 and "gateway" in err["msg"]


def test_del_is_idempotent_and_by_container_and_ifname(tmp_path):
    c = conf(tmp_path)
    call("ADD", c, cid="a", ifname="eth0")
    call("ADD", c, cid="a", ifname="eth1")
    for _ in range(3):
        assert call("DEL", c, cid="a", ifname="eth0") == (0, None)
    left = {p.name for p in (tmp_path / "net1").iterdir() if p.name[0].isdigit()}
    assert left == {"10.1.2.3"}


def test_check(tmp_path):
    c = conf(tmp_path)
    assert call("CHECK", c, cid="a")[0] == 1
    call("ADD", c, cid="a")
    assert call("CHECK", c, cid="a") == (0, None)


def test_gc_releases_attachments_not_listed(tmp_path):
    c = conf(tmp_path, version="1.1.0")
    for cid in ("a", "b", "c"):
        call("ADD", c, cid=cid)
    c["cni.dev/valid-attachments"] = [{"containerID": "b", "ifname": "eth0"}]
    code, _ = run(host_local.PLUGIN, {"CNI_COMMAND": "GC", "CNI_PATH": ""}, json.dumps(c).encode())
    assert code == 0
    left = {p.name for p in (tmp_path / "net1").iterdir() if p.name[0].isdigit()}
    assert left == {"10.1.2.3"}


def test_dns_from_resolv_conf(tmp_path):
    rc = tmp_path / "resolv.conf"
    rc.write_text("# x\nnameserver 10.0.0.10\nsearch a.svc b.svc\noptions ndots:5\ndomain cluster.local\n")
    _, res = call("ADD", conf(tmp_path, resolvConf=str(rc)))
    assert res["dns"] == {"nameservers": ["10.0.0.10"], "search": ["a.svc", "b.svc"],
                          "options": ["ndots:5"], "domain": "cluster.local"}


@pytest.mark.parametrize("ipam,needle", [
    ({"subnet": "10.1.2.0/33"}, "invalid CIDR"),
    ({"subnet": "10.1.2.5/24"}, "host bits set"),
    ({"subnet": "10.1.2.0/31"}, "too small"),
    ({"subnet": "10.1.2.0/24", "rangeStart": "10.1.3.1"}, "not in network"),
    ({"subnet": None, "ranges": []}, "no IP ranges specified"),
    ({"subnet": None, "ranges": [[{"subnet": "10.0.0.0/24"}, {"subnet": "fd00::/64"}]]}, "mixed address families"),
    ({"subnet": None, "ranges": [[{"subnet": "10.0.0.0/24"}], [{"subnet": "10.0.0.0/25"}]]}, "overlaps"),
])
def test_bad_config(tmp_path, ipam, needle):
    c = conf(tmp_path, **ipam)
    if c["ipam"].get("subnet") is None:
        c["ipam"].pop("subnet")
    code, err = call("ADD", c)
    assert code == 1 and err["code"] == spec.INVALID_CONFIG and needle in err["msg"]
    assert not (tmp_path / "net1").exists() or not any(
        p.name[0].isdigit() for p in (tmp_path / "net1").iterdir())


def test_missing_ipam_key(tmp_path):
    c = conf(tmp_path)
    del c["ipam"]
    code, err = call("ADD", c)
    assert code == 1 and err["code"] == spec.INVALID_CONFIG and "'ipam'" in err["msg"]


def test_parallel_adds_distinct_then_empty(tmp_path):
    c = conf(tmp_path)
    results, errors = {}, []

    def add(i):
        code, res = call("ADD", c, cid=f"ctr{i}")
        (results.__setitem__(i, res) if code == 0 else errors.append(res))

    threads = [threading.Thread(target=add, args=(i,)) for i in range(50)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors
    addrs = {r["ips"][0]["address"] for r in results.values()}
    assert len(addrs) == 50
    for i in range(50):
        assert call("DEL", c, cid=f"ctr{i}")[0] == 0
    assert not any(p.name[0].isdigit() for p in (tmp_path / "net1").iterdir())


def test_candidates_wrap_and_skip_gateway():
    rset = ranges.parse_range_set([{"subnet": "10.0.0.0/29"}], "r")
    ip = ipaddress.ip_address
    got = [str(a) for _, a in ranges.candidates(rset, ip("10.0.0.4"))]
    assert got == ["10.0.0.5", "10.0.0.6", "10.0.0.2", "10.0.0.3", "10.0.0.4"]
    got = [str(a) for _, a in ranges.candidates(rset, None)]
    assert got == ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.5", "10.0.0.6"]
