"""The portmap plugin's iptables rules as a pure function of its config and the host's facts.

Layout and names follow the reference plugin (containernetworking/plugins
``plugins/meta/portmap``, iptables backend), so rules written by either are recognised by
the other, all in the ``nat`` table:

    PREROUTING, OUTPUT: -m addrtype --dst-type LOCAL -j CNI-HOSTPORT-DNAT
    CNI-HOSTPORT-DNAT:  -m comment ... -m multiport -p tcp --destination-ports 8080,8081 -j CNI-DN-<hash>
    CNI-DN-<hash>:      -p tcp --dport 8080 -s <podIP/len> -j CNI-HOSTPORT-SETMARK   (hairpin)
                        -p tcp --dport 8080 -s 127.0.0.1 -j CNI-HOSTPORT-SETMARK     (localhost, v4)
                        -p tcp --dport 8080 -j DNAT --to-destination <podIP>:80
    CNI-HOSTPORT-SETMARK: -j MARK --set-xmark <bit>/<bit>
    POSTROUTING (first): -m comment ... -j CNI-HOSTPORT-MASQ
    CNI-HOSTPORT-MASQ:  -m mark --mark <bit>/<bit> -j MASQUERADE

The per-container chain is rewritten whole on every ADD; shared chains are created only when
missing and their rules added only when absent (other containers' jumps live there).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Sequence

from cni.names import chain_name
from podnet.iptables import Rule, join_rule, render

TABLE = "nat"
TOP_DNAT_CHAIN = "CNI-HOSTPORT-DNAT"
SETMARK_CHAIN = "CNI-HOSTPORT-SETMARK"
MASQ_CHAIN = "CNI-HOSTPORT-MASQ"
OLD_SNAT_CHAIN = "CNI-HOSTPORT-SNAT"
DEFAULT_MARK_BIT = 13
MULTIPORT_MAX = 15
PROTOCOLS = ("tcp", "udp", "sctp")

TOP_DNAT_ENTRY = ["-m", "addrtype", "--dst-type", "LOCAL"]
MASQ_ENTRY = ["-m", "comment", "--comment", "CNI portfwd requiring masquerade"]


@dataclass(frozen=True)
class PortMapping:
    host_port: int
    container_port: int
    protocol: str = "tcp"
    host_ip: str = ""


@dataclass(frozen=True)
class PortmapConfig:
    network: str
    container_id: str
    mappings: tuple[PortMapping, ...] = ()
    snat: bool = True
    mark_masq_bit: int = DEFAULT_MARK_BIT
    external_set_mark_chain: str | None = None
    masq_all: bool = False
    conditions_v4: tuple[str, ...] | None = None
    conditions_v6: tuple[str, ...] | None = None


@dataclass(frozen=True)
class HostState:
    """What the applier found in one family's nat table before rendering."""

    chains: frozenset[str] = frozenset()
    # (chain, rule args) of shared/built-in rules that already exist (checked with -C).
    present: frozenset[tuple[str, tuple[str, ...]]] = frozenset()
    # (chain, spec) of existing rules that jump to this container's chain(s), as saved.
    stale_jumps: tuple[tuple[str, str], ...] = ()


# --- names ------------------------------------------------------------------------------


def format_chain_name(name: str, container_id: str, prefix: str = "") -> str:
    """libcni's ``MustFormatChainNameWithPrefix``: ``CNI-<prefix>`` + sha512 hex, 28 chars."""
    return chain_name(name, container_id, prefix)


def dnat_chain_name(network: str, container_id: str) -> str:
    return format_chain_name(network, container_id, "DN-")


def old_snat_chain_name(network: str, container_id: str) -> str:
    """A chain older plugin versions made; still removed on DEL."""
    return format_chain_name(network, container_id, "SN-")


def dnat_comment(network: str, container_id: str) -> str:
    val = f'dnat name: "{network}" id: "{container_id}"'
    return val if len(val) <= 255 else val[:253] + "..."


def mark_def(bit: int) -> str:
    value = 1 << bit
    return f"{value:#x}/{value:#x}"


def fmt_ip_port(ip: str, port: int) -> str:
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# --- rules ------------------------------------------------------------------------------


def setmark_rule(bit: int) -> list[str]:
    return ["-m", "comment", "--comment", "CNI portfwd masquerade mark",
            "-j", "MARK", "--set-xmark", mark_def(bit)]


def masq_rule(bit: int) -> list[str]:
    return ["-m", "mark", "--mark", mark_def(bit), "-j", "MASQUERADE"]


def _split_ports(ports: Sequence[int]) -> list[str]:
    return [",".join(str(p) for p in ports[i:i + MULTIPORT_MAX])
            for i in range(0, len(ports), MULTIPORT_MAX)]


def entry_rules(cfg: PortmapConfig, family: int) -> list[list[str]]:
    """Rules in CNI-HOSTPORT-DNAT sending this container's host ports to its chain."""
    comment = dnat_comment(cfg.network, cfg.container_id)
    by_proto: dict[str, list[int]] = {}
    for m in cfg.mappings:
        by_proto.setdefault(m.protocol, []).append(m.host_port)
    conditions = cfg.conditions_v6 if family == 6 else cfg.conditions_v4
    chain = dnat_chain_name(cfg.network, cfg.container_id)
    out = []
    for proto in sorted(by_proto):
        for ports in _split_ports(by_proto[proto]):
            rule = ["-m", "comment", "--comment", comment, "-m", "multiport",
                    "-p", proto, "--destination-ports", ports]
            rule += list(conditions or ())
            out.append(rule + ["-j", chain])
    return out


def dnat_rules(cfg: PortmapConfig, container_ip: str) -> list[list[str]]:
    """The container chain: per mapping, the mark rules (hairpin, localhost) then the DNAT.

    ``container_ip`` is the address with its prefix length as the previous plugin reported
    it (``10.0.0.2/24``); the hairpin match uses it as given, as upstream does.
    """
    iface = ipaddress.ip_interface(container_ip)
    v6 = iface.version == 6
    setmark = cfg.external_set_mark_chain or SETMARK_CHAIN
    out: list[list[str]] = []
    for m in cfg.mappings:
        base = ["-p", m.protocol, "--dport", str(m.host_port)]
        if m.host_ip:
            host_ip = ipaddress.ip_address(m.host_ip)
            if (host_ip.version == 6) != v6:
                continue
            if not host_ip.is_unspecified:
                base += ["-d", m.host_ip]
        if cfg.snat:
            src = ("::/0" if v6 else "0.0.0.0/0") if cfg.masq_all else str(iface)
            out.append(base + ["-s", src, "-j", setmark])
            if not v6 and not cfg.masq_all:
                out.append(base + ["-s", "127.0.0.1", "-j", setmark])
        out.append(base + ["-j", "DNAT", "--to-destination", fmt_ip_port(str(iface.ip), m.container_port)])
    return out


def shared_rules(cfg: PortmapConfig) -> list[tuple[str, list[str], str]]:
    """``(chain, args, position)`` of rules that must exist once in shared or built-in chains."""
    top = TOP_DNAT_ENTRY + ["-j", TOP_DNAT_CHAIN]
    rules: list[tuple[str, list[str], str]] = []
    if cfg.snat and not cfg.external_set_mark_chain:
        rules += [(SETMARK_CHAIN, setmark_rule(cfg.mark_masq_bit), "append"),
                  (MASQ_CHAIN, masq_rule(cfg.mark_masq_bit), "append"),
                  # First in POSTROUTING, ahead of the bridge/ptp plugins' masquerade rules.
                  ("POSTROUTING", MASQ_ENTRY + ["-j", MASQ_CHAIN], "insert")]
    rules += [("PREROUTING", top, "append"), ("OUTPUT", top, "append")]
    return rules


def shared_chains(cfg: PortmapConfig) -> list[str]:
    chains = [TOP_DNAT_CHAIN]
    if cfg.snat and not cfg.external_set_mark_chain:
        chains += [SETMARK_CHAIN, MASQ_CHAIN]
    return sorted(chains)


# --- payloads ---------------------------------------------------------------------------


def render_add(cfg: PortmapConfig, container_ip: str, state: HostState) -> str:
    """One restore payload that forwards ``cfg.mappings`` to ``container_ip``.

    Creates missing shared chains, adds missing shared/built-in rules, replaces any earlier
    jumps to the container chain and rewrites that chain whole: running it twice in a row
    leaves the table as one run did.
    """
    chain = dnat_chain_name(cfg.network, cfg.container_id)
    family = ipaddress.ip_interface(container_ip).version
    missing_chains = [(TABLE, c) for c in shared_chains(cfg) if c not in state.chains]
    adds = [Rule(TABLE, ch, join_rule(args), pos) for ch, args, pos in shared_rules(cfg)
            if (ch, tuple(args)) not in state.present]
    adds += [Rule(TABLE, TOP_DNAT_CHAIN, join_rule(r)) for r in entry_rules(cfg, family)]
    return render(
        {TABLE: {chain: [join_rule(r) for r in dnat_rules(cfg, container_ip)]}},
        flush_chains=missing_chains,
        delete_rules=[(TABLE, ch, spec) for ch, spec in state.stale_jumps],
        builtin_jumps=adds,
    )


def teardown_chains(network: str, container_id: str) -> list[str]:
    return [dnat_chain_name(network, container_id), old_snat_chain_name(network, container_id)]


def render_del(network: str, container_id: str, state: HostState) -> str:
    """Remove the container's chains and every jump to them; empty if nothing is there."""
    chains = [c for c in teardown_chains(network, container_id) if c in state.chains]
    jumps = [(TABLE, ch, spec) for ch, spec in state.stale_jumps if ch not in chains]
    if not chains and not jumps:
        return ""
    return render({}, delete_chains=[(TABLE, c) for c in chains], delete_rules=jumps)
