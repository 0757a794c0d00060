"""Golden tests for the portmap renderer (cni/portmap_rules.py).

The argument-list goldens are the reference plugin's own expectations (containernetworking/
plugins v1.1.1 ``portmap_test.go``), so a rule written by either plugin is the same rule.
"""
from __future__ import annotations

import pytest

from cni.portmap_rules import (
    HostState, PortMapping, PortmapConfig, dnat_chain_name, dnat_comment, dnat_rules,
    entry_rules, mark_def, masq_rule, old_snat_chain_name, render_add, render_del,
    setmark_rule, shared_rules,
)

LONG_ID = ("icee6giejonei6sohng6ahngee7laquohquee9shiGo7fohferakah3Feiyoolu2pei7ciPhoh7shaoX6vai3"
           "vuf0ahfaeng8yohb9ceu0daez5hashee8ooYai5wa3y")

UPSTREAM_MAPS = (
    PortMapping(8080, 80, "tcp"),
    PortMapping(8081, 80, "tcp"),
    PortMapping(8080, 81, "udp"),
    PortMapping(8082, 82, "udp"),
    PortMapping(8083, 83, "tcp", "192.168.0.2"),
    PortMapping(8084, 84, "tcp", "0.0.0.0"),
    PortMapping(8085, 85, "tcp", "2001:db8:a::1"),
    PortMapping(8086, 86, "tcp", "::"),
)


def upstream_cfg(**kw) -> PortmapConfig:
    base = dict(network="test", container_id=LONG_ID, mappings=UPSTREAM_MAPS,
                conditions_v4=("a", "b"), conditions_v6=("c", "d"))
    base.update(kw)
    return PortmapConfig(**base)


@pytest.mark.parametrize("net,cid,name", [
    ("testNetName", LONG_ID, "CNI-DN-bfd599665540dd91d5d28"),
    ("test", LONG_ID, "CNI-DN-67e92b96e692a494b6b85"),
])
def test_chain_name_matches_upstream_hash(net, cid, name):
    assert dnat_chain_name(net, cid) == name
    assert len(name) == 28


def test_old_snat_chain_name_prefix():
    name = old_snat_chain_name("test", LONG_ID)
    assert name.startswith("CNI-SN-") and len(name) == 28
    assert name[7:] == dnat_chain_name("test", LONG_ID)[7:]


def test_comment_is_trimmed_to_iptables_limit():
    c = dnat_comment("n", "x" * 300)
    assert len(c) == 256 and c.endswith("...")
    assert dnat_comment("n", "id") == 'dnat name: "n" id: "id"'


def test_entry_rules_v4_upstream():
    comment = f'dnat name: "test" id: "{LONG_ID}"'
    chain = "CNI-DN-67e92b96e692a494b6b85"
    assert entry_rules(upstream_cfg(), 4) == [
        ["-m", "comment", "--comment", comment, "-m", "multiport", "-p", "tcp",
         "--destination-ports", "8080,8081,8083,8084,8085,8086", "a", "b", "-j", chain],
        ["-m", "comment", "--comment", comment, "-m", "multiport", "-p", "udp",
         "--destination-ports", "8080,8082", "a", "b", "-j", chain],
    ]
    assert entry_rules(upstream_cfg(), 6)[0][-4:] == ["c", "d", "-j", chain]


def test_dnat_rules_v4_upstream():
    S = "CNI-HOSTPORT-SETMARK"
    assert dnat_rules(upstream_cfg(), "10.0.0.2/24") == [
        ["-p", "tcp", "--dport", "8080", "-s", "10.0.0.2/24", "-j", S],
        ["-p", "tcp", "--dport", "8080", "-s", "127.0.0.1", "-j", S],
        ["-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", "10.0.0.2:80"],
        ["-p", "tcp", "--dport", "8081", "-s", "10.0.0.2/24", "-j", S],
        ["-p", "tcp", "--dport", "8081", "-s", "127.0.0.1", "-j", S],
        ["-p", "tcp", "--dport", "8081", "-j", "DNAT", "--to-destination", "10.0.0.2:80"],
        ["-p", "udp", "--dport", "8080", "-s", "10.0.0.2/24", "-j", S],
        ["-p", "udp", "--dport", "8080", "-s", "127.0.0.1", "-j", S],
        ["-p", "udp", "--dport", "8080", "-j", "DNAT", "--to-destination", "10.0.0.2:81"],
        ["-p", "udp", "--dport", "8082", "-s", "10.0.0.2/24", "-j", S],
        ["-p", "udp", "--dport", "8082", "-s", "127.0.0.1", "-j", S],
        ["-p", "udp", "--dport", "8082", "-j", "DNAT", "--to-destination", "10.0.0.2:82"],
        ["-p", "tcp", "--dport", "8083", "-d", "192.168.0.2", "-s", "10.0.0.2/24", "-j", S],
        ["-p", "tcp", "--dport", "8083", "-d", "192.168.0.2", "-s", "127.0.0.1", "-j", S],
        ["-p", "tcp", "--dport", "8083", "-d", "192.168.0.2", "-j", "DNAT", "--to-destination", "10.0.0.2:83"],
        ["-p", "tcp", "--dport", "8084", "-s", "10.0.0.2/24", "-j", S],
        ["-p", "tcp", "--dport", "8084", "-s", "127.0.0.1", "-j", S],
        ["-p", "tcp", "--dport", "8084", "-j", "DNAT", "--to-destination", "10.0.0.2:84"],
    ]


def test_dnat_rules_v6_upstream():
    S = "CNI-HOSTPORT-SETMARK"
    assert dnat_rules(upstream_cfg(), "2001:db8::2/64") == [
        ["-p", "tcp", "--dport", "8080", "-s", "2001:db8::2/64", "-j", S],
        ["-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", "[2001:db8::2]:80"],
        ["-p", "tcp", "--dport", "8081", "-s", "2001:db8::2/64", "-j", S],
        ["-p", "tcp", "--dport", "8081", "-j", "DNAT", "--to-destination", "[2001:db8::2]:80"],
        ["-p", "udp", "--dport", "8080", "-s", "2001:db8::2/64", "-j", S],
        ["-p", "udp", "--dport", "8080", "-j", "DNAT", "--to-destination", "[2001:db8::2]:81"],
        ["-p", "udp", "--dport", "8082", "-s", "2001:db8::2/64", "-j", S],
        ["-p", "udp", "--dport", "8082", "-j", "DNAT", "--to-destination", "[2001:db8::2]:82"],
        ["-p", "tcp", "--dport", "8085", "-d", "2001:db8:a::1", "-s", "2001:db8::2/64", "-j", S],
        ["-p", "tcp", "--dport", "8085", "-d", "2001:db8:a::1", "-j", "DNAT", "--to-destination", "[2001:db8::2]:85"],
        ["-p", "tcp", "--dport", "8086", "-s", "2001:db8::2/64", "-j", S],
        ["-p", "tcp", "--dport", "8086", "-j", "DNAT", "--to-destination", "[2001:db8::2]:86"],
    ]


def test_dnat_rules_without_snat_upstream():
    assert dnat_rules(upstream_cfg(snat=False), "10.0.0.2/24") == [
        ["-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", "10.0.0.2:80"],
        ["-p", "tcp", "--dport", "8081", "-j", "DNAT", "--to-destination", "10.0.0.2:80"],
        ["-p", "udp", "--dport", "8080", "-j", "DNAT", "--to-destination", "10.0.0.2:81"],
        ["-p", "udp", "--dport", "8082", "-j", "DNAT", "--to-destination", "10.0.0.2:82"],
        ["-p", "tcp", "--dport", "8083", "-d", "192.168.0.2", "-j", "DNAT", "--to-destination", "10.0.0.2:83"],
        ["-p", "tcp", "--dport", "8084", "-j", "DNAT", "--to-destination", "10.0.0.2:84"],
    ]


def test_external_set_mark_chain_upstream():
    cfg = PortmapConfig("test", LONG_ID, (PortMapping(8080, 80, "tcp"),),
                        external_set_mark_chain="PLZ-SET-MARK")
    assert dnat_rules(cfg, "10.0.0.2/24") == [
        ["-p", "tcp", "--dport", "8080", "-s", "10.0.0.2/24", "-j", "PLZ-SET-MARK"],
        ["-p", "tcp", "--dport", "8080", "-s", "127.0.0.1", "-j", "PLZ-SET-MARK"],
        ["-p", "tcp", "--dport", "8080", "-j", "DNAT", "--to-destination", "10.0.0.2:80"],
    ]
    # Nobody else's mark chain gets created or jumped to.
    assert [ch for ch, _, _ in shared_rules(cfg)] == ["PREROUTING", "OUTPUT"]


@pytest.mark.parametrize("ip,src", [("10.0.0.2/24", "0.0.0.0/0"), ("2001:db8::2/64", "::/0")])
def test_masq_all_marks_every_source_once(ip, src):
    cfg = PortmapConfig("n", "c", (PortMapping(80, 8080, "tcp"),), masq_all=True)
    rules = dnat_rules(cfg, ip)
    assert rules[0] == ["-p", "tcp", "--dport", "80", "-s", src, "-j", "CNI-HOSTPORT-SETMARK"]
    assert len(rules) == 2 and rules[1][5] == "DNAT"


def test_mark_chains_upstream_bit5():
    assert mark_def(5) == "0x20/0x20"
    assert mark_def(0) == "0x1/0x1"
    assert setmark_rule(5) == ["-m", "comment", "--comment", "CNI portfwd masquerade mark",
                               "-j", "MARK", "--set-xmark", "0x20/0x20"]
    assert masq_rule(5) == ["-m", "mark", "--mark", "0x20/0x20", "-j", "MASQUERADE"]


def test_multiport_split_at_15():
    maps = tuple(PortMapping(10000 + i, 80, "tcp") for i in range(17))
    rules = entry_rules(PortmapConfig("n", "c", maps), 4)
    assert [r[9] for r in rules] == [",".join(str(10000 + i) for i in range(15)), "10015,10016"]


CFG = PortmapConfig("net1", "c1", (PortMapping(8080, 80, "tcp"),
                                   PortMapping(8053, 53, "udp", "192.168.0.1")))
CH = "CNI-DN-c2d892b58e87e28a12fe6"
ENTRIES = (
    f'-A CNI-HOSTPORT-DNAT -m comment --comment "dnat name: \\"net1\\" id: \\"c1\\"" -m multiport -p tcp --destination-ports 8080 -j {CH}\n'
    f'-A CNI-HOSTPORT-DNAT -m comment --comment "dnat name: \\"net1\\" id: \\"c1\\"" -m multiport -p udp --destination-ports 8053 -j {CH}\n'
)

GOLDEN_ADD_V4_FRESH = f"""*nat
:{CH} - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-HOSTPORT-MASQ - [0:0]
:CNI-HOSTPORT-SETMARK - [0:0]
-A {CH} -p tcp --dport 8080 -s 10.0.0.2/24 -j CNI-HOSTPORT-SETMARK
-A {CH} -p tcp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK
-A {CH} -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80
-A {CH} -p udp --dport 8053 -d 192.168.0.1 -s 10.0.0.2/24 -j CNI-HOSTPORT-SETMARK
-A {CH} -p udp --dport 8053 -d 192.168.0.1 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK
-A {CH} -p udp --dport 8053 -d 192.168.0.1 -j DNAT --to-destination 10.0.0.2:53
-A CNI-HOSTPORT-SETMARK -m comment --comment "CNI portfwd masquerade mark" -j MARK --set-xmark 0x2000/0x2000
-A CNI-HOSTPORT-MASQ -m mark --mark 0x2000/0x2000 -j MASQUERADE
-I POSTROUTING 1 -m comment --comment "CNI portfwd requiring masquerade" -j CNI-HOSTPORT-MASQ
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
{ENTRIES}COMMIT
"""

GOLDEN_ADD_V4_AGAIN = f"""*nat
:{CH} - [0:0]
-D CNI-HOSTPORT-DNAT -m comment --comment "old" -j {CH}
-A {CH} -p tcp --dport 8080 -s 10.0.0.2/24 -j CNI-HOSTPORT-SETMARK
-A {CH} -p tcp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK
-A {CH} -p tcp --dport 8080 -j DNAT --to-destination 10.0.0.2:80
-A {CH} -p udp --dport 8053 -d 192.168.0.1 -s 10.0.0.2/24 -j CNI-HOSTPORT-SETMARK
-A {CH} -p udp --dport 8053 -d 192.168.0.1 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK
-A {CH} -p udp --dport 8053 -d 192.168.0.1 -j DNAT --to-destination 10.0.0.2:53
{ENTRIES}COMMIT
"""

GOLDEN_ADD_V6_NO_SNAT = f"""*nat
:{CH} - [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
-A {CH} -p tcp --dport 8080 -j DNAT --to-destination [2001:db8::2]:80
-A PREROUTING -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
-A OUTPUT -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
{ENTRIES}COMMIT
"""


def _all_present(cfg: PortmapConfig) -> frozenset:
    return frozenset((ch, tuple(args)) for ch, args, _ in shared_rules(cfg))


def test_render_add_fresh_host_v4():
    assert render_add(CFG, "10.0.0.2/24", HostState()) == GOLDEN_ADD_V4_FRESH


def test_render_add_replaces_own_jumps_and_leaves_shared_state():
    state = HostState(
        chains=frozenset({"CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ", CH}),
        present=_all_present(CFG),
        stale_jumps=(("CNI-HOSTPORT-DNAT", f'-m comment --comment "old" -j {CH}'),),
    )
    assert render_add(CFG, "10.0.0.2/24", state) == GOLDEN_ADD_V4_AGAIN


def test_render_add_v6_without_snat():
    cfg = PortmapConfig("net1", "c1", CFG.mappings, snat=False)
    assert render_add(cfg, "2001:db8::2/64", HostState()) == GOLDEN_ADD_V6_NO_SNAT


def test_render_add_is_deterministic():
    a = render_add(CFG, "10.0.0.2/24", HostState())
    b = render_add(CFG, "10.0.0.2/24", HostState())
    assert a == b


def test_render_del_removes_chain_and_jumps():
    state = HostState(chains=frozenset({CH, "CNI-HOSTPORT-DNAT"}),
                      stale_jumps=(("CNI-HOSTPORT-DNAT", f"-p tcp -j {CH}"),))
    assert render_del("net1", "c1", state) == (
        f"*nat\n:{CH} - [0:0]\n-D CNI-HOSTPORT-DNAT -p tcp -j {CH}\n-X {CH}\nCOMMIT\n")


def test_render_del_nothing_there_is_empty():
    assert render_del("net1", "c1", HostState(chains=frozenset({"CNI-HOSTPORT-DNAT"}))) == ""
