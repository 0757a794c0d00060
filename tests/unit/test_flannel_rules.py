"""flanneld's iptables rules, golden against upstream's rule specs."""
from __future__ import annotations

from ipaddress import ip_network

from flannel_py.rules import RulesManager, render_rules

NET, SUB = ip_network("10.244.0.0/16"), ip_network("10.244.1.0/24")

GOLDEN_MASQ = """\
*filter
:FLANNEL-FWD - [0:0]
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
*nat
:FLANNEL-POSTRTG - [0:0]
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.1.0/24 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.1.0/24 -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
COMMIT
"""


def test_masq_and_forward_golden():
    assert render_rules(NET, SUB, ip_masq=True) == GOLDEN_MASQ


def test_without_random_fully():
    text = render_rules(NET, SUB, ip_masq=True, random_fully=False)
    assert "--random-fully" not in text
    assert text.count("-j MASQUERADE\n") == 2


def test_forward_only_without_ip_masq():
    assert render_rules(NET, SUB, ip_masq=False) == GOLDEN_MASQ.split("*nat")[0]


class FakeRestorer:
    """Keeps chains as {(table, chain): [rule specs]} from restore payloads."""

    def __init__(self) -> None:
        self.chains: dict[tuple[str, str], list[str]] = {}

    def apply(self, payload: str) -> None:
        table = ""
        for line in payload.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":"):
                self.chains[(table, line[1:].split()[0])] = []
            elif line.startswith("-A "):
                chain, spec = line[3:].split(" ", 1)
                self.chains.setdefault((table, chain), []).append(spec)

    def ensure_jump(self, table, from_chain, to_chain, match="", position="insert") -> bool:
        rules = self.chains.setdefault((table, from_chain), [])
        spec = f"{match} -j {to_chain}".strip()
        if spec in rules:
            return False
        rules.append(spec)
        return True

    def delete_chains(self, table, chains) -> bool:
        gone = [c for c in chains if (table, c) in self.chains]
        for c in gone:
            del self.chains[(table, c)]
        return bool(gone)


def test_manager_jumps_once_and_idempotent():
    fake = FakeRestorer()
    mgr = RulesManager(NET, SUB, ip_masq=True, restorer=fake)
    mgr.apply()
    mgr.apply()
    assert fake.chains[("nat", "POSTROUTING")] == ['-m comment --comment "flanneld masq" -j FLANNEL-POSTRTG']
    assert fake.chains[("filter", "FORWARD")] == ['-m comment --comment "flanneld forward" -j FLANNEL-FWD']
    assert len(fake.chains[("nat", "FLANNEL-POSTRTG")]) == 6
    # turning ip-masq off removes the masquerade chain
    RulesManager(NET, SUB, ip_masq=False, restorer=fake).apply()
    assert ("nat", "FLANNEL-POSTRTG") not in fake.chains
