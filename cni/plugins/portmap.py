"""The ``portmap`` CNI plugin: forward host ports to a container (chained after bridge/ptp).

Behaves like the reference plugin (containernetworking/plugins ``plugins/meta/portmap``,
iptables backend): same config keys, chain names and rules, and the previous result is
passed through unchanged. Not done (yet): upstream's flush of stale UDP conntrack entries
for the host ports after ADD. The rules come from :mod:`cni.portmap_rules` (pure) and go to the
kernel in one ``iptables-restore`` per address family through :mod:`podnet.iptables`.
"""
from __future__ import annotations

import ipaddress
import logging
import sys
from typing import Any, Callable

from cni import spec
from cni.portmap_rules import (
    DEFAULT_MARK_BIT, PROTOCOLS, TABLE, TOP_DNAT_CHAIN, HostState, PortMapping, PortmapConfig,
    dnat_chain_name, dnat_rules, entry_rules, render_add, render_del, shared_rules,
    teardown_chains,
)
from cni.skel import Plugin, Request, main
from cni.spec import CNIError

log = logging.getLogger(__name__)

# (family) -> an object with save/apply/rule_exists/locked, i.e. a podnet.iptables.Restorer.
RestorerFactory = Callable[[int], Any]


def _default_restorer(family: int) -> Any:
    from podnet.iptables import Restorer
    return Restorer(family=family)


def _bad(msg: str) -> CNIError:
    return CNIError(spec.INVALID_CONFIG, f"failed to parse config: {msg}")


def _port(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= 65535:
        raise _bad(f"Invalid {what} port number: {value}")
    return value


def _mapping(raw: Any) -> PortMapping:
    if not isinstance(raw, dict):
        raise _bad(f"invalid port mapping {raw!r}")
    container = _port(raw.get("containerPort", 0), "container")
    host = _port(raw.get("hostPort", 0), "host")
    protocol = str(raw.get("protocol") or "tcp").lower()
    if protocol not in PROTOCOLS:
        raise _bad(f"Invalid protocol: {raw.get('protocol')!r}")
    host_ip = raw.get("hostIP") or ""
    if host_ip:
        try:
            ipaddress.ip_address(host_ip)
        except (TypeError, ValueError):
            raise _bad(f"Invalid host IP: {host_ip!r}") from None
    return PortMapping(host, container, protocol, host_ip)


def _conditions(config: dict[str, Any], key: str) -> tuple[str, ...] | None:
    raw = config.get(key)
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(c, str) for c in raw):
        raise _bad(f"{key} must be a list of strings")
    return tuple(raw)


def parse_config(req: Request) -> PortmapConfig:
    """The plugin's settings, validated as upstream's ``parseConfig`` does."""
    c = req.config
    snat = c.get("snat")
    mark_bit = c.get("markMasqBit")
    external = c.get("externalSetMarkChain")
    if mark_bit is not None and external is not None:
        raise _bad("Cannot specify externalSetMarkChain and markMasqBit")
    if mark_bit is None:
        mark_bit = DEFAULT_MARK_BIT
    if isinstance(mark_bit, bool) or not isinstance(mark_bit, int) or not 0 <= mark_bit <= 31:
        raise _bad("MasqMarkBit must be between 0 and 31")
    if external is not None and (not isinstance(external, str) or not external):
        raise _bad("externalSetMarkChain must be a chain name")
    runtime = c.get("runtimeConfig") or {}
    raw_maps = (runtime.get("portMappings") or []) if isinstance(runtime, dict) else []
    if not isinstance(raw_maps, list):
        raise _bad("runtimeConfig.portMappings must be a list")
    return PortmapConfig(
        network=c["name"],
        container_id=req.container_id,
        mappings=tuple(_mapping(m) for m in raw_maps),
        snat=True if snat is None else bool(snat),
        mark_masq_bit=mark_bit,
        external_set_mark_chain=external,
        masq_all=bool(c.get("masqAll", False)),
        conditions_v4=_conditions(c, "conditionsV4"),
        conditions_v6=_conditions(c, "conditionsV6"),
    )


def container_ips(prev: dict[str, Any], ifname: str) -> dict[int, str]:
    """The first sandbox address of each family (``{4: "10.0.0.2/24", 6: ...}``), skipping
    addresses that the result ties to a host-side or differently named interface."""
    interfaces = prev.get("interfaces") or []
    out: dict[int, str] = {}
    for ip in prev.get("ips") or []:
        iface = ipaddress.ip_interface(ip["address"])
        if iface.version in out:
            continue
        idx = ip.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(interfaces):
            intf = interfaces[idx]
            if intf.get("name") != ifname or not intf.get("sandbox"):
                continue
        out[iface.version] = ip["address"]
    return out


_TERMINAL = {"MARK", "MASQUERADE", "DNAT", "SNAT", "ACCEPT", "RETURN", "DROP"}


def _target(args: list[str]) -> str:
    return args[args.index("-j") + 1]


class Portmap(Plugin):
    name = "portmap"

    def __init__(self, restorer: RestorerFactory = _default_restorer,
                 route_localnet: Callable[[str], None] | None = None) -> None:
        self._restorer = restorer
        self._route_localnet = route_localnet or enable_route_localnet

    # --- ADD ---------------------------------------------------------------------------

    def add(self, req: Request) -> dict[str, Any]:
        cfg = parse_config(req)
        prev = req.prev_result
        if prev is None:
            raise CNIError(spec.INVALID_CONFIG, "must be called as chained plugin")
        if not cfg.mappings:
            return prev
        for family, ip in sorted(container_ips(prev, req.ifname).items()):
            self._forward(cfg, family, ip)
        return prev

    def _forward(self, cfg: PortmapConfig, family: int, ip: str) -> None:
        from podnet.iptables import IptablesError, chains_in, jump_rules_to
        from podnet.iptables import BUILTIN_CHAINS

        ipt = self._restorer(family)
        chain = dnat_chain_name(cfg.network, cfg.container_id)
        try:
            with ipt.locked():
                text = ipt.save(TABLE)
                chains = chains_in(text) | set(BUILTIN_CHAINS[TABLE])
                # A rule can only exist if its chain and its jump target both do.
                present = frozenset(
                    (ch, tuple(args)) for ch, args, _ in shared_rules(cfg)
                    if ch in chains and _target(args) in chains | _TERMINAL
                    and ipt.rule_exists(TABLE, ch, args))
                state = HostState(frozenset(chains), present,
                                  tuple(jump_rules_to(text, chain)))
                ipt.apply(render_add(cfg, ip, state))
        except IptablesError as e:
            raise CNIError(spec.INTERNAL, f"unable to setup DNAT: {e}") from None
        if family == 4 and cfg.snat:
            # Let 127/8 cross a routing boundary, so 127.0.0.1:hostPort reaches the pod.
            try:
                self._route_localnet(str(ipaddress.ip_interface(ip).ip))
            except OSError as e:
                raise CNIError(spec.INTERNAL, f"unable to enable route_localnet: {e}") from None

    # --- DEL ---------------------------------------------------------------------------

    def delete(self, req: Request) -> None:
        """Remove the container's chains and jumps in both families; idempotent and
        independent of prevResult and the container's netns (names come from the
        network name and container ID)."""
        from podnet.iptables import IptablesError, chains_in, jump_rules_to

        cfg = parse_config(req)
        errors = []
        for family in (4, 6):
            try:
                ipt = self._restorer(family)
                with ipt.locked():
                    text = ipt.save(TABLE)
                    jumps = tuple(j for c in teardown_chains(cfg.network, cfg.container_id)
                                  for j in jump_rules_to(text, c))
                    state = HostState(frozenset(chains_in(text)), frozenset(), jumps)
                    ipt.apply(render_del(cfg.network, cfg.container_id, state))
            except IptablesError as e:
                log.warning("portmap DEL: IPv%d teardown failed: %s", family, e)
                errors.append(f"ipv{family}: {e}")
        if len(errors) == 2:
            raise CNIError(spec.INTERNAL, "could not teardown dnat: " + "; ".join(errors))

    # --- CHECK -------------------------------------------------------------------------

    def check(self, req: Request) -> None:
        from podnet.iptables import IptablesError

        cfg = parse_config(req)
        prev = req.prev_result
        if prev is None:
            raise CNIError(spec.INVALID_CONFIG, "Required prevResult missing")
        if not cfg.mappings:
            return
        chain = dnat_chain_name(cfg.network, cfg.container_id)
        for family, ip in sorted(container_ips(prev, req.ifname).items()):
            try:
                ipt = self._restorer(family)
                if not ipt.chain_exists(TABLE, chain):
                    raise CNIError(spec.INTERNAL,
                                   f"chain {chain} not found in iptables table {TABLE} (IPv{family})")
                wanted = [(chain, r) for r in dnat_rules(cfg, ip)]
                wanted += [(TOP_DNAT_CHAIN, r) for r in entry_rules(cfg, family)]
                for ch, rule in wanted:
                    if not ipt.rule_exists(TABLE, ch, rule):
                        raise CNIError(spec.INTERNAL,
                                       f"rule {' '.join(rule)} in chain {ch} not found in table {TABLE}")
            except IptablesError as e:
                raise CNIError(spec.INTERNAL, f"could not check IPv{family} dnat: {e}") from None


def enable_route_localnet(container_ip: str) -> None:
    """Set route_localnet on the interface that routes to the container, in the namespace
    this process runs in (upstream's ``getRoutableHostIF`` + ``enableLocalnetRouting``)."""
    ifname = route_interface(container_ip)
    if not ifname:
        log.info("no route to %s; route_localnet not set", container_ip)
        return
    with open(f"/proc/sys/net/ipv4/conf/{ifname}/route_localnet", "w") as f:
        f.write("1")


def route_interface(ip: str) -> str | None:
    """Name of the interface of the longest-prefix main-table route to ``ip`` (None if
    unroutable): what upstream's ``netlink.RouteGet`` picks, short of policy routing."""
    from podnet.rtnl import AF_INET, AF_INET6, RTNL  # lazy: only ADD with SNAT needs netlink

    addr = ipaddress.ip_address(ip)
    best: tuple[int, int] | None = None
    with RTNL() as rt:
        for route in rt.routes(AF_INET if addr.version == 4 else AF_INET6):
            if route.oif is None or route.type != "unicast":
                continue
            net = ipaddress.ip_network(route.dst, strict=False)
            if addr in net and (best is None or net.prefixlen > best[0]):
                best = (net.prefixlen, route.oif)
        return rt.link(index=best[1]).name if best else None


PLUGIN = Portmap()

if __name__ == "__main__":
    sys.exit(main(PLUGIN))
