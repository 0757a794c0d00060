"""podnet.iptables against the real tools, in throwaway namespaces, for both variants."""
from __future__ import annotations

import re

import pytest

from podnet import iptables as I
from podnet.iptables import IptablesError, Restorer, Rule
from tests.conftest import ns_run

pytestmark = pytest.mark.root


def saved(ns: str, variant: str, family: int = 4) -> str:
    """The whole ruleset of ``ns`` without comments and counters."""
    tool = f"{'iptables' if family == 4 else 'ip6tables'}-{variant}-save"
    text = ns_run(ns, [tool]).stdout
    return "\n".join(re.sub(r"\[\d+:\d+\]", "", l) for l in text.splitlines()
                     if not l.startswith("#"))


def payload() -> str:
    return I.render(
        {"nat": {"PN-TEST-DNAT": ["-p tcp --dport 8080 -j DNAT --to-destination 10.1.0.2:80"],
                 "PN-TEST-SVC": [I.join_rule(["-m", "comment", "--comment", 'svc "a b"',
                                              "-j", "PN-TEST-DNAT"])]},
         "filter": {"PN-TEST-FW": ["-s 10.1.0.0/16 -j ACCEPT", "-j DROP"]}})


@pytest.mark.parametrize("variant", ["nft", "legacy"])
@pytest.mark.parametrize("family", [4, 6])
def test_apply_twice_changes_nothing(netns_factory, variant, family):
    ns = netns_factory("ipt")
    r = Restorer(family=family, variant=variant, netns=ns)
    text = payload() if family == 4 else payload().replace("10.1.0.2:80", "[fd00::2]:80") \
        .replace("10.1.0.0/16", "fd00::/64")
    r.apply(text)
    first = saved(ns, variant, family)
    assert ":PN-TEST-SVC - " in first and "-A PN-TEST-FW -j DROP" in first
    assert '--comment "svc \\"a b\\""' in first
    r.apply(text)
    assert saved(ns, variant, family) == first
    assert r.chain_exists("nat", "PN-TEST-DNAT") and not r.chain_exists("nat", "PN-TEST-NOPE")


@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_rewrite_replaces_owned_chain_whole(netns_factory, variant):
    ns = netns_factory("ipt")
    r = Restorer(variant=variant, netns=ns)
    r.apply(I.render({"filter": {"PN-T": ["-j ACCEPT", "-j DROP"]}}))
    r.apply(I.render({"filter": {"PN-T": ["-j RETURN"]}}))
    rules = [l for l in saved(ns, variant).splitlines() if l.startswith("-A PN-T ")]
    assert rules == ["-A PN-T -j RETURN"]


@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_bad_payload_raises_with_numbered_line_and_applies_nothing(netns_factory, variant):
    ns = netns_factory("ipt")
    r = Restorer(variant=variant, netns=ns)
    bad = "*filter\n:PN-BAD - [0:0]\n-A PN-BAD -j ACCEPT\n-A PN-BAD -p tcp --dportx 1 -j ACCEPT\nCOMMIT\n"
    with pytest.raises(IptablesError) as ei:
        r.apply(bad)
    assert ei.value.line == 4
    assert "> 4 | -A PN-BAD -p tcp --dportx 1 -j ACCEPT" in str(ei.value)
    assert "  3 | -A PN-BAD -j ACCEPT" in str(ei.value)
    after = saved(ns, variant)  # (legacy may have loaded the empty table meanwhile)
    assert "PN-BAD" not in after and "\n-A " not in after


@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_ensure_jump_once_and_delete_chains(netns_factory, variant):
    ns = netns_factory("ipt")
    r = Restorer(variant=variant, netns=ns)
    r.apply(I.render({"nat": {"PN-HP": ["-j RETURN"], "PN-INNER": ["-j RETURN"]}},
                     builtin_jumps=[Rule("nat", "OUTPUT", "-p udp -j PN-HP")]))
    assert r.ensure_jump("nat", "PREROUTING", "PN-HP", "-m addrtype --dst-type LOCAL") is True
    assert r.ensure_jump("nat", "PREROUTING", "PN-HP", "-m addrtype --dst-type LOCAL") is False
    text = saved(ns, variant)
    assert text.count("-A PREROUTING -m addrtype --dst-type LOCAL -j PN-HP") == 1

    assert r.delete_chains("nat", ["PN-HP"]) is True
    text = saved(ns, variant)
    assert "PN-HP" not in text and ":PN-INNER" in text
    assert r.delete_chains("nat", ["PN-HP"]) is False


def test_detect_variant_follows_the_namespace(netns_factory):
    fresh, legacy = netns_factory("iptv"), netns_factory("iptv")
    ns_run(legacy, ["iptables-legacy", "-A", "INPUT", "-s", "10.9.9.9", "-j", "ACCEPT"])
    assert I.detect_variant(fresh) == "nft"
    assert I.detect_variant(legacy) == "legacy"
    r = Restorer(netns=legacy)
    assert r.variant == "legacy"
    r.apply(I.render({"filter": {"PN-L": ["-j RETURN"]}}))
    assert ":PN-L" in saved(legacy, "legacy") and "PN-L" not in saved(legacy, "nft")


def test_module_functions_and_root_untouched(netns_factory):
    ns = netns_factory("ipt")
    I.apply(I.render({"nat": {"PN-MOD": ["-j RETURN"]}}), netns=ns)
    assert I.chain_exists("nat", "PN-MOD", netns=f"/run/netns/{ns}")
    assert I.ensure_jump("nat", "OUTPUT", "PN-MOD", netns=ns) is True
    assert "-A OUTPUT -j PN-MOD" in I.save("nat", netns=ns)
    # nothing leaked into the namespace this test runs in
    import subprocess
    for tool in ("iptables-nft-save", "iptables-legacy-save"):
        out = subprocess.run([tool], capture_output=True, text=True).stdout
        assert "PN-MOD" not in out
