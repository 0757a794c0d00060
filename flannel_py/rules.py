"""flanneld's iptables rules: masquerade (nat ``FLANNEL-POSTRTG``) and forward accept
(filter ``FLANNEL-FWD``), exactly upstream's rules, each chain rewritten whole and atomically
through :mod:`podnet.iptables` and jumped to once from POSTROUTING / FORWARD.
"""
from __future__ import annotations

import logging
import threading
from ipaddress import IPv4Network
from typing import Any

from podnet.iptables import Rule, join_rule, render

log = logging.getLogger(__name__)

MASQ_CHAIN = "FLANNEL-POSTRTG"
FWD_CHAIN = "FLANNEL-FWD"
KUBE_PROXY_MARK = "0x4000/0x4000"
MASQ_COMMENT = ["-m", "comment", "--comment", "flanneld masq"]
FWD_COMMENT = ["-m", "comment", "--comment", "flanneld forward"]


def masq_rules(network: IPv4Network, subnet: IPv4Network, *, random_fully: bool = True) -> list[str]:
    """The rule specs of FLANNEL-POSTRTG, in upstream's order."""
    net, pod = str(network), str(subnet)
    masq = ["-j", "MASQUERADE"] + (["--random-fully"] if random_fully else [])
    specs = [
        ["-m", "mark", "--mark", KUBE_PROXY_MARK, *MASQ_COMMENT, "-j", "RETURN"],
        ["-s", pod, "-d", net, *MASQ_COMMENT, "-j", "RETURN"],
        ["-s", net, "-d", pod, *MASQ_COMMENT, "-j", "RETURN"],
        ["!", "-s", net, "-d", pod, *MASQ_COMMENT, "-j", "RETURN"],
        ["-s", net, "!", "-d", "224.0.0.0/4", *MASQ_COMMENT, *masq],
        ["!", "-s", net, "-d", net, *MASQ_COMMENT, *masq],
    ]
    return [join_rule(s) for s in specs]


def forward_rules(network: IPv4Network) -> list[str]:
    net = str(network)
    return [join_rule(["-s", net, *FWD_COMMENT, "-j", "ACCEPT"]),
            join_rule(["-d", net, *FWD_COMMENT, "-j", "ACCEPT"])]


MASQ_JUMP = Rule("nat", "POSTROUTING", join_rule([*MASQ_COMMENT, "-j", MASQ_CHAIN]))
FWD_JUMP = Rule("filter", "FORWARD", join_rule([*FWD_COMMENT, "-j", FWD_CHAIN]))


def render_rules(network: IPv4Network, subnet: IPv4Network, *, ip_masq: bool,
                 random_fully: bool = True) -> str:
    """The iptables-restore payload for flanneld's own chains (jumps are ensured apart)."""
    tables: dict[str, dict[str, list[str]]] = {"filter": {FWD_CHAIN: forward_rules(network)}}
    if ip_masq:
        tables["nat"] = {MASQ_CHAIN: masq_rules(network, subnet, random_fully=random_fully)}
    return render(tables)


class RulesManager:
    """Applies :func:`render_rules` and the two jumps; :meth:`run` re-applies periodically."""

    def __init__(self, network: IPv4Network, subnet: IPv4Network, *, ip_masq: bool,
                 random_fully: bool = True, restorer: Any = None) -> None:
        self.network, self.subnet = network, subnet
        self.ip_masq, self.random_fully = ip_masq, random_fully
        if restorer is None:
            from podnet.iptables import Restorer
            restorer = Restorer()
        self.restorer = restorer

    def payload(self) -> str:
        return render_rules(self.network, self.subnet, ip_masq=self.ip_masq,
                            random_fully=self.random_fully)

    def jumps(self) -> list[Rule]:
        return [FWD_JUMP, MASQ_JUMP] if self.ip_masq else [FWD_JUMP]

    def apply(self) -> None:
        self.restorer.apply(self.payload())
        for jump in self.jumps():
            spec = jump.spec
            match, _, target = spec.rpartition(" -j ")
            if self.restorer.ensure_jump(jump.table, jump.chain, target, match, position="append"):
                log.info("added jump %s -A %s %s", jump.table, jump.chain, spec)
        if not self.ip_masq:
            if self.restorer.delete_chains("nat", [MASQ_CHAIN]):
                log.info("removed %s (--ip-masq is off)", MASQ_CHAIN)

    def run(self, stop_event: threading.Event, interval: float) -> None:
        """Re-check every ``interval`` seconds until ``stop_event`` (upstream
        ``--iptables-resync``); failures are logged and retried on the next round."""
        while not stop_event.wait(interval):
            try:
                self.apply()
            except Exception as exc:  # noqa: BLE001 - keep resyncing
                log.error("iptables resync failed: %s", exc)
