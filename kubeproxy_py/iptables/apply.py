"""Apply kube-proxy's iptables layout: full and partial syncs in bounded transactions.

The renderer (:mod:`kubeproxy_py.iptables.render`) says what the tables should hold; this
module decides what to write and in which transactions, as upstream's ``syncProxyRules`` does
since KEP-3453:

* A partial sync re-renders only the service ports whose inputs changed (the others' parts
  are cached), writes only their chains, rewrites the shared chains (KUBE-SERVICES,
  KUBE-NODEPORTS, filter) only when their text changed, and deletes the chains nothing uses
  any more. The first sync, ``full=True``, a flip of large-cluster mode and any failed restore
  make the next sync a full one.
* ``iptables-nft-restore`` is superlinear in the size of one transaction (10,000 Services in
  one: 456 s), linear in bounded ones. On nft a large sync therefore goes in three phases:
  (1) the changed services' own chains in chunks of ``chunk_services`` Services, all chains
  of one service in the same chunk — a new chain is unreachable until KUBE-SERVICES jumps to
  it, and a rewritten one changes atomically with the endpoint chains it jumps to. The
  chunks touch disjoint chains, so after the first (which holds KUBE-MARK-MASQ, the chain
  every endpoint chain jumps to) they are restored ``parallel`` at a time: much of each
  call is the tool loading the table, which overlaps with another call's commit;
  (2) one transaction with the shared chains and filter, which switches traffic over;
  (3) the stale chains, deleted in chunks, referrers before the chains they jump to
  (FW → EXT → SVC/SVL → SEP), once nothing live refers to them. A small sync is one
  transaction. ``iptables-legacy-restore`` rewrites the whole table on every call, so on
  legacy everything is always one transaction.
* Declaring ``:CHAIN - [0:0]`` under ``--noflush`` creates or flushes the chain; every chain
  written is declared and filled in the same transaction, and a chain to be deleted is
  declared (flushed) and then ``-X``-ed.
"""
from __future__ import annotations

import gc
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

from kubeproxy_py.iptables import names
from kubeproxy_py.iptables.render import (LARGE_CLUSTER_ENDPOINTS, PortParts, TopLevel,
                                          jump_rules, port_context, port_order, render,
                                          render_port, render_top)
from kubeproxy_py.model import Endpoint, PortKey, ProxyOptions, ServicePort

log = logging.getLogger(__name__)

# A chunk of stale-chain deletions holds at most this many chains per chunk_services Service.
_CHAINS_PER_SERVICE = 6
# Deletion order: a chain's referrers go before it.
_RANK = {names.FW_PREFIX: 0, names.EXT_PREFIX: 1, names.SVC_PREFIX: 2, names.SVL_PREFIX: 2,
         names.SEP_PREFIX: 3}
_TOP_NAT_CHAINS = (names.NODEPORTS, names.SERVICES)


class SyncError(Exception):
    """A restore failed; the next sync will be a full one. ``__cause__`` is the
    :class:`podnet.iptables.IptablesError` with the numbered payload context."""


@dataclass(frozen=True)
class SyncResult:
    """What a sync did.

    ``rules`` — rules kube-proxy keeps in filter and nat now, ``filter_rules`` and
    ``nat_rules`` the same per table (upstream's ``sync_proxy_rules_iptables_total{table}``);
    ``chains`` — per-service nat chains in use now;
    ``services_written`` — Services whose own chains were (re)written; ``deleted_chains`` —
    stale chains removed; ``rules_written`` and ``transactions`` — what was sent.
    """

    partial: bool
    services_written: int
    rules: int
    chains: int
    deleted_chains: int
    seconds: float
    filter_rules: int = 0
    nat_rules: int = 0
    rules_written: int = 0
    transactions: int = 0


_NO_ENDPOINTS: list[Endpoint] = []
# (port, its endpoints, its parts) as of the last good sync.
_Cached = tuple[ServicePort, list[Endpoint], PortParts]


def _shares(p: PortParts) -> tuple[list[str], ...]:
    """A port's rules in the shared chains."""
    return (p.f_nodeports, p.f_services, p.f_external, p.f_firewall, p.n_nodeports,
            p.n_services)


def _rank(chain: str) -> int:
    return _RANK.get(chain[:9], _RANK.get(chain[:8], 4))


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def _nat_section(blocks: Sequence[tuple[str, str]], top: TopLevel | None = None,
                 deleted: Sequence[str] = (), jumps: Sequence[str] = ()) -> tuple[str, int]:
    """One ``*nat … COMMIT`` section (and the number of rules in it): the chains of
    ``blocks`` (and of ``top``) declared and filled, then ``deleted`` flushed and removed,
    then the built-in ``jumps``. Every chain is declared before any rule refers to it."""
    decls = [c for c, _ in blocks]
    rules = [t for _, t in blocks if t]
    n = sum(t.count("\n") + 1 for t in rules)
    head: list[str] = []
    if top is not None:
        decls = [*_TOP_NAT_CHAINS, *(c for c, _ in top.nat_blocks), *decls]
        head = top.nat_lines
        rules = [t for _, t in top.nat_blocks] + rules
        n += len(head) + sum(t.count("\n") + 1 for _, t in top.nat_blocks)
    decls += deleted
    # Sorted: iptables-legacy-restore inserts each new chain into a sorted list, and in
    # order that costs far less (10,000 Services: ≈ 0.5 s of a 3.5 s restore).
    decls.sort()
    out = ["*nat"]
    if decls:
        out.append(":" + " - [0:0]\n:".join(decls) + " - [0:0]")
    out += head
    out += rules
    out += [f"-X {c}" for c in deleted]
    out += jumps
    out.append("COMMIT")
    return "\n".join(out), n + len(jumps)


def _filter_section(top: TopLevel, jumps: Sequence[str] = ()) -> str:
    text = top.filter_text
    if jumps:
        assert text.endswith("\nCOMMIT")
        text = text[:-len("COMMIT")] + "\n".join(jumps) + "\nCOMMIT"
    return text


class IptablesSyncer:
    """Keeps one namespace's kube-proxy chains in step with the Services it is given.

    Not thread-safe: one sync loop owns it. ``restorer`` (for tests) needs ``variant``,
    ``apply(payload, noflush=True)``, ``save(table)`` and ``rule_exists(table, chain, spec)``
    like :class:`podnet.iptables.Restorer`.
    """

    def __init__(self, options: ProxyOptions, *, netns: str | None = None,
                 variant: str | None = None, chunk_services: int = 200,
                 restorer: Any = None, parallel: int | None = None) -> None:
        if chunk_services < 1:
            raise ValueError("chunk_services must be at least 1")
        # Concurrent phase-1 restores: 2 for the real tool (2 measured best on 2 CPUs:
        # 10,000 Services 6.6 s → 4.6 s), 1 for an injected restorer unless asked.
        self.parallel = parallel if parallel is not None else (1 if restorer else 2)
        if restorer is None:
            from podnet.iptables import Restorer
            restorer = Restorer(family=options.ip_family, variant=variant, netns=netns)
        self.options = options
        self.restorer = restorer
        self.variant: str = restorer.variant
        self.chunk_services = chunk_services
        self._parts: dict[PortKey, _Cached] = {}
        self._top: TopLevel | None = None
        self._chain_rules = 0  # rules in the per-service chains
        self._order: list[PortKey] = []
        self._large: bool | None = None
        self._known: set[str] | None = None   # per-service nat chains in the kernel
        self._top_written: tuple[str, str] | None = None
        self._need_full = True
        self._jumps_ok = False

    # --- public -------------------------------------------------------------------------

    @property
    def needs_full_sync(self) -> bool:
        return self._need_full

    def dry_run(self, ports: Iterable[ServicePort],
                endpoints: Mapping[PortKey, Sequence[Endpoint]]) -> str:
        """The full restore payload for this state; nothing is applied."""
        return render(ports, endpoints, self.options).text

    def sync(self, ports: Iterable[ServicePort], endpoints: Mapping[PortKey, Sequence[Endpoint]],
             *, full: bool = False) -> SyncResult:
        """Converge the tables on ``ports``/``endpoints`` (see the module docstring).

        Raises :class:`SyncError` when a restore fails; the next call is then a full sync.
        """
        # The cached parts are ~100,000 objects at 10k Services: a cyclic-GC pass over them
        # costs more than a partial sync, and nothing here makes cycles.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return self._sync(ports, endpoints, full)
        finally:
            if was_enabled:
                gc.enable()

    def _sync(self, ports: Iterable[ServicePort],
              endpoints: Mapping[PortKey, Sequence[Endpoint]], full: bool) -> SyncResult:
        t0 = time.perf_counter()
        full = full or self._need_full
        old = self._parts
        new: dict[PortKey, _Cached | None] = {}
        todo: list[tuple[PortKey, ServicePort, list[Endpoint]]] = []
        total_eps = 0
        get_eps = endpoints.get
        get_old = old.get
        for sp in ports:
            key = sp.key
            if key in new:
                continue  # duplicates of one key keep the first, as render() does
            eps = get_eps(key) or _NO_ENDPOINTS
            if type(eps) is not list:
                eps = list(eps)
            total_eps += len(eps)
            cached = get_old(key)
            # Lists compare element by element, identity first: cheap when unchanged.
            if cached is not None and (cached[0] is sp or cached[0] == sp) and cached[1] == eps:
                new[key] = cached
            else:
                new[key] = None
                todo.append((key, sp, eps))
        large = total_eps > LARGE_CLUSTER_ENDPOINTS
        full = full or large != self._large
        ctx = port_context(self.options, large)
        if full:
            pending = {t[0]: t for t in todo}
            todo = [pending[k] if c is None else (k, c[0], c[1]) for k, c in new.items()]
        changed: list[PortKey] = []
        for key, sp, eps in todo:
            new[key] = (sp, list(eps), render_port(sp, eps, ctx))
            changed.append(key)
        cur: dict[PortKey, _Cached] = new  # type: ignore[assignment]  # all filled now
        added = sum(1 for k in changed if k not in old)
        removed = [k for k in old if k not in cur] if len(cur) - added < len(old) else []

        # The shared chains: re-assembled only when some port's share of them changed.
        shares_changed = full or bool(removed) or any(
            k not in old or _shares(old[k][2]) != _shares(cur[k][2]) for k in changed)
        if shares_changed or self._top is None:
            if full or removed or added or not self._order:
                order = sorted(cur, key=lambda k: port_order(cur[k][0]))
            else:
                order = self._order
            top = render_top((cur[k][2] for k in order), self.options)
        else:
            order, top = self._order, self._top
        nat_top_text = "\n".join(top.nat_lines) + "".join(t for _, t in top.nat_blocks)
        write_top = full or self._top_written != (top.filter_text, nat_top_text)

        # Stale chains: what the changed and removed ports used and no longer do.
        if full:
            active: set[str] = set()
            for c in cur.values():
                active.update(c[2].active)
            known = self._known if self._known is not None else self._kernel_chains()
            stale = known - active
        else:
            was: set[str] = set()
            now: set[str] = set()
            for key in changed:
                if key in old:
                    was.update(old[key][2].active)
                now.update(cur[key][2].active)
            for key in removed:
                was.update(old[key][2].active)
            stale = was - now
        deleted = sorted(stale, key=lambda c: (_rank(c), c))

        jumps: dict[str, list[str]] = {}
        if not self._jumps_ok:
            # Only jumps whose target this sync declares (KUBE-FIREWALL is conditional).
            declared = top.filter_text
            jumps = {t: [j for j in js if t == "nat" or f"\n:{j.rsplit(' ', 1)[1]} - " in declared]
                     for t, js in self._missing_jumps().items()}
            write_top = True

        # Written ports grouped by Service, in order.
        written = sorted(changed, key=lambda k: port_order(cur[k][0]))
        groups: list[list[tuple[str, str]]] = []
        last = None
        for key in written:
            parts = cur[key][2]
            if parts.sp.service_name != last:
                groups.append([])
                last = parts.sp.service_name
            groups[-1].extend(parts.blocks or ())

        payloads = self._plan(groups, top if write_top else None, deleted, jumps)
        rules_written = 0
        try:
            for batch in self._batches(payloads):
                self._apply_batch(batch)
                rules_written += sum(n for _, n, _ in batch)
        except Exception as e:
            self._need_full = True
            self._known = None
            self._top_written = None
            self._jumps_ok = False
            raise SyncError(f"iptables restore failed ({'full' if full else 'partial'} sync,"
                            f" {self.variant}); next sync is a full one: {e}") from e

        if full:
            self._known = active
            self._chain_rules = sum(c[2].nat_rules for c in cur.values())
        else:
            assert self._known is not None
            self._known.difference_update(stale)
            for key in changed:
                self._known.update(cur[key][2].active)
                self._chain_rules += cur[key][2].nat_rules - (
                    old[key][2].nat_rules if key in old else 0)
            for key in removed:
                self._chain_rules -= old[key][2].nat_rules
        self._parts = cur
        self._order = order
        self._top = top
        self._large = large
        self._top_written = (top.filter_text, nat_top_text)
        self._need_full = False
        self._jumps_ok = True
        result = SyncResult(partial=not full, services_written=len(groups),
                            rules=top.filter_rules + top.nat_rules + self._chain_rules,
                            filter_rules=top.filter_rules,
                            nat_rules=top.nat_rules + self._chain_rules,
                            chains=len(self._known), deleted_chains=len(deleted),
                            seconds=time.perf_counter() - t0, rules_written=rules_written,
                            transactions=len(payloads))
        log.debug("%s sync: %d services written, %d chains deleted, %d transactions, %.3fs",
                  "partial" if result.partial else "full", result.services_written,
                  result.deleted_chains, result.transactions, result.seconds)
        return result

    def cleanup(self) -> None:
        """Remove every KUBE-* chain and every jump to one from the built-in chains."""
        from podnet.iptables import chains_in
        builtin = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
        for table in ("filter", "nat"):
            text = self.restorer.save(table)
            ours = sorted((c for c in chains_in(text) if c.startswith("KUBE-")),
                          key=lambda c: (_rank(c), c))
            refs = []
            for line in text.splitlines():
                if not line.startswith("-A "):
                    continue
                _, chain, spec = line.split(" ", 2)
                words = spec.split()
                if chain in builtin and any(
                        w in ("-j", "-g") and i + 1 < len(words) and words[i + 1].startswith("KUBE-")
                        for i, w in enumerate(words)):
                    refs.append(f"-D {chain} {spec}")
            if not ours and not refs:
                continue
            shared = [c for c in ours if _rank(c) == 4]
            own = [c for c in ours if _rank(c) < 4]
            # Unhook and empty the shared chains first: then only per-service chains refer
            # to per-service chains, and rank order deletes referrers first.
            first = [f"*{table}", *refs, *(f":{c} - [0:0]" for c in shared), "COMMIT"]
            last = [f"*{table}", *(f"-X {c}" for c in shared), "COMMIT"]
            size = len(own) + 1 if self.variant == "legacy" else \
                self.chunk_services * _CHAINS_PER_SERVICE
            middle = ["\n".join([f"*{table}", *(f":{c} - [0:0]" for c in chunk),
                                 *(f"-X {c}" for c in chunk), "COMMIT"])
                      for chunk in _chunks(own, size)]
            steps = ["\n".join(first), *middle, "\n".join(last)]
            if self.variant == "legacy":
                steps = ["\n".join(steps)]
            for payload in steps:
                self.restorer.apply(payload + "\n", noflush=True)
        self._parts = {}
        self._top = None
        self._order = []
        self._known = None
        self._top_written = None
        self._need_full = True
        self._jumps_ok = False

    # --- internals ----------------------------------------------------------------------

    def _kernel_chains(self) -> set[str]:
        """Per-service chains in the kernel's nat table: read once after start or failure,
        so chains left by an earlier run (or a failed sync) are collected."""
        from podnet.iptables import chains_in
        return {c for c in chains_in(self.restorer.save("nat")) if names.is_service_chain(c)}

    def _missing_jumps(self) -> dict[str, list[str]]:
        """The built-in jump rules not there yet, as ``-I chain 1 spec`` lines per table;
        inserted in list order as upstream prepends them."""
        out: dict[str, list[str]] = {}
        for table, chain, spec in jump_rules(self.options):
            if not self.restorer.rule_exists(table, chain, spec):
                out.setdefault(table, []).append(f"-I {chain} 1 {spec}")
        return out

    @staticmethod
    def _batches(payloads: list[tuple[str, int, bool]]) -> list[list[tuple[str, int, bool]]]:
        """Consecutive payloads that may run concurrently form one batch; others run alone."""
        out: list[list[tuple[str, int, bool]]] = []
        for p in payloads:
            if p[2] and out and out[-1][-1][2]:
                out[-1].append(p)
            else:
                out.append([p])
        return out

    def _apply_batch(self, batch: list[tuple[str, int, bool]]) -> None:
        if len(batch) == 1 or self.parallel <= 1:
            for text, _, _ in batch:
                self.restorer.apply(text, noflush=True)
            return
        with ThreadPoolExecutor(self.parallel) as pool:
            for future in [pool.submit(self.restorer.apply, text, noflush=True)
                           for text, _, _ in batch]:
                future.result()  # re-raises the first failure after all have ended

    def _plan(self, groups: list[list[tuple[str, str]]], top: TopLevel | None,
              deleted: list[str], jumps: Mapping[str, list[str]]) -> list[tuple[str, int, bool]]:
        """The payloads to restore, in order, each with its rule count and whether it may
        run concurrently with its concurrent neighbours (phase-1 chunks after the first)."""
        chunk = self.chunk_services
        max_del = chunk * _CHAINS_PER_SERVICE
        small = len(groups) <= chunk and len(deleted) <= max_del
        if self.variant == "legacy" or small:
            blocks = [b for g in groups for b in g]
            nat, n = _nat_section(blocks, top, deleted, jumps.get("nat", ()))
            if top is None and not blocks and not deleted:
                return []
            text = nat + "\n"
            if top is not None:
                text = _filter_section(top, jumps.get("filter", ())) + "\n" + text
                n += top.filter_rules + len(jumps.get("filter", ()))
            return [(text, n, False)]
        out: list[tuple[str, int, bool]] = []
        for i, chunk_groups in enumerate(_chunks(groups, chunk)):
            blocks = [b for g in chunk_groups for b in g]
            if i == 0 and top is not None:
                # KUBE-MARK-MASQ must exist before endpoint chains jump to it.
                blocks[:0] = top.nat_blocks
                top = replace(top, nat_blocks=())
            nat, n = _nat_section(blocks)
            out.append((nat + "\n", n, i > 0))
        inline = deleted if len(deleted) <= max_del else []
        if top is not None or inline:
            nat, n = _nat_section((), top, inline, jumps.get("nat", ()))
            text = nat + "\n"
            if top is not None:
                text = _filter_section(top, jumps.get("filter", ())) + "\n" + text
                n += top.filter_rules + len(jumps.get("filter", ()))
            out.append((text, n, False))
        if not inline:
            for part in _chunks(deleted, max_del):
                out.append((_nat_section((), None, part)[0] + "\n", 0, False))
        return out
