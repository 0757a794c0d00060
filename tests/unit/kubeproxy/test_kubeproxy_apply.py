"""IptablesSyncer against an in-memory fake of iptables-restore: assert the tables it leaves.

The fake applies ``--noflush`` payloads the way the real tools do where it matters here: a
declared chain is created or flushed, a rule may only jump to a chain that exists at that
point, ``-X`` refuses a chain that still has rules or is referred to, and every table
section is all-or-nothing.
"""
from __future__ import annotations

import re
import threading
import time

import pytest

from kubeproxy_py.iptables import names
from kubeproxy_py.iptables.apply import IptablesSyncer, SyncError
from kubeproxy_py.iptables.render import jump_rules
from kubeproxy_py.model import ProxyOptions, parse_endpoint_slices, parse_services
from podnet.iptables import BUILTIN_CHAINS, IptablesError

OPTS = ProxyOptions(node_name="node1", cluster_cidr="10.0.0.0/8")
_TARGET = re.compile(r"-[jg] (\S+)")


class FakeTables:
    """iptables state of one namespace for one family."""

    def __init__(self, variant: str = "nft") -> None:
        self.variant = variant
        self.tables = {t: {c: [] for c in BUILTIN_CHAINS[t]} for t in ("filter", "nat")}
        self.payloads: list[str] = []
        self.fail_on: str | None = None
        self.after_commit = None  # called with self after each table commit

    def apply(self, payload: str, noflush: bool = True) -> None:
        assert noflush
        self.payloads.append(payload)
        staged = name = None
        for n, line in enumerate(payload.splitlines(), 1):
            try:
                if not line or line.startswith("#"):
                    continue
                if self.fail_on and self.fail_on in line:
                    raise ValueError("injected failure")
                if line.startswith("*"):
                    name = line[1:]
                    staged = {c: list(r) for c, r in self.tables[name].items()}
                elif line == "COMMIT":
                    self.tables[name] = staged
                    staged = None
                    if self.after_commit:
                        self.after_commit(self)
                elif line.startswith(":"):
                    staged[line[1:].split()[0]] = []
                else:
                    op, chain, *rest = line.split(" ", 2)
                    spec = rest[0] if rest else ""
                    if chain not in staged:
                        raise ValueError(f"chain {chain} does not exist")
                    if op in ("-A", "-I"):
                        m = _TARGET.search(spec)
                        if m and m.group(1).startswith("KUBE-") and m.group(1) not in staged:
                            raise ValueError(f"chain {m.group(1)} does not exist")
                        if op == "-A":
                            staged[chain].append(spec)
                        else:
                            pos, spec = spec.split(" ", 1)
                            staged[chain].insert(int(pos) - 1, spec)
                    elif op == "-D":
                        staged[chain].remove(spec)
                    elif op == "-X":
                        if staged[chain]:
                            raise ValueError(f"chain {chain} is not empty")
                        if any(f"-j {chain}" == t.group(0) for rules in staged.values()
                               for r in rules for t in _TARGET.finditer(r)):
                            raise ValueError(f"chain {chain} is referenced")
                        del staged[chain]
                    else:
                        raise ValueError(f"unknown op {op}")
            except ValueError as e:
                raise IptablesError(f"line {n} failed: {e}", line=n) from None

    def save(self, table: str | None = None) -> str:
        out = []
        for t in [table] if table else sorted(self.tables):
            out.append(f"*{t}")
            out += [f":{c} - [0:0]" for c in sorted(self.tables[t])]
            out += [f"-A {c} {r}" for c in sorted(self.tables[t]) for r in self.tables[t][c]]
            out.append("COMMIT")
        return "\n".join(out) + "\n"

    def rule_exists(self, table: str, chain: str, spec: str) -> bool:
        return spec in self.tables[table].get(chain, ())

    def own(self) -> dict[str, dict[str, list[str]]]:
        """The KUBE-* chains only."""
        return {t: {c: r for c, r in chains.items() if c.startswith("KUBE-")}
                for t, chains in self.tables.items()}


def svc(i: int, **spec) -> dict:
    return {"metadata": {"namespace": "ns", "name": f"svc{i}"},
            "spec": {"clusterIP": f"172.30.{i // 250}.{i % 250 + 1}",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}], **spec}}


def eslice(i: int, ips) -> dict:
    return {"metadata": {"namespace": "ns", "name": f"svc{i}-x",
                         "labels": {"kubernetes.io/service-name": f"svc{i}"}},
            "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip], "nodeName": "node2"} for ip in ips]}


def state(n: int, eps: dict[int, list[str]] | None = None):
    eps = eps if eps is not None else {i: [f"10.1.{i}.{j + 1}" for j in range(3)] for i in range(n)}
    ports = parse_services([svc(i) for i in range(n)])
    return ports, parse_endpoint_slices([eslice(i, ips) for i, ips in eps.items() if ips])


def expected(ports, endpoints, variant="nft") -> dict:
    """What a fresh full restore of the renderer's payload leaves (plus the jumps)."""
    fake = FakeTables(variant)
    fake.apply(IptablesSyncer(OPTS, restorer=fake).dry_run(ports, endpoints))
    return fake.own()


def service_chains(fake: FakeTables) -> set[str]:
    return {c for c in fake.tables["nat"] if names.is_service_chain(c)}


@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_first_sync_programs_renderer_state_and_jumps(variant):
    fake = FakeTables(variant)
    syncer = IptablesSyncer(OPTS, restorer=fake)
    ports, eps = state(5)
    r = syncer.sync(ports, eps)
    assert not r.partial and r.services_written == 5 and r.transactions == 1
    assert fake.own() == expected(ports, eps)
    assert r.chains == len(service_chains(fake)) == 5 * 4
    assert r.rules == sum(len(v) for t in fake.own().values() for v in t.values())
    assert (r.filter_rules, r.nat_rules) == tuple(
        sum(len(v) for v in fake.own()[t].values()) for t in ("filter", "nat"))
    for table, chain, spec in jump_rules(OPTS):
        assert fake.tables[table][chain].count(spec) == 1, (table, chain, spec)


@pytest.mark.parametrize("variant", ["nft", "legacy"])
def test_second_sync_with_same_state_writes_nothing(variant):
    fake = FakeTables(variant)
    syncer = IptablesSyncer(OPTS, restorer=fake)
    ports, eps = state(5)
    syncer.sync(ports, eps)
    before, n = fake.save(), len(fake.payloads)
    ports2, eps2 = state(5)  # equal, not identical, objects
    r = syncer.sync(ports2, eps2)
    assert r.partial and r.services_written == 0 and r.transactions == 0
    assert fake.save() == before and len(fake.payloads) == n


def test_endpoint_change_rewrites_only_that_service():
    fake = FakeTables()
    syncer = IptablesSyncer(OPTS, restorer=fake)
    base = {i: [f"10.1.{i}.{j + 1}" for j in range(3)] for i in range(6)}
    syncer.sync(*state(6, base))
    old_chains = service_chains(fake)
    base[2] = ["10.1.2.1", "10.1.2.2", "10.1.2.9"]
    ports, eps = state(6, base)
    n = len(fake.payloads)
    r = syncer.sync(ports, eps)
    assert r.partial and r.services_written == 1 and r.deleted_chains == 1
    assert fake.own() == expected(ports, eps)
    sent = "".join(fake.payloads[n:])
    touched = {c for c in re.findall(r"^:(\S+)", sent, re.M) if names.is_service_chain(c)}
    svc2 = ports[2]
    svc2_chains = {svc2.svc_chain} | {e.chain for e in eps[svc2.key]} | {
        names.endpoint_chain("ns/svc2:http", "tcp", "10.1.2.3:8080")}
    assert touched == svc2_chains and svc2_chains - touched <= old_chains | touched
    assert "KUBE-SERVICES" not in sent  # the shared chains did not change
    assert names.endpoint_chain("ns/svc2:http", "tcp", "10.1.2.3:8080") not in fake.tables["nat"]


def test_removed_service_and_empty_service():
    fake = FakeTables()
    syncer = IptablesSyncer(OPTS, restorer=fake)
    syncer.sync(*state(4))
    gone = parse_services([svc(3)])[0]
    base = {i: [f"10.1.{i}.{j + 1}" for j in range(3)] for i in range(4)}
    base[1] = []  # svc1 loses its endpoints: REJECT in filter
    ports, eps = state(3, {i: base[i] for i in range(3)})
    r = syncer.sync(ports, eps)
    assert r.partial and r.deleted_chains == 4 + 4
    assert fake.own() == expected(ports, eps)
    assert gone.svc_chain not in fake.tables["nat"] and ports[1].svc_chain not in fake.tables["nat"]
    assert not any(gone.cluster_ip in rule for rule in fake.tables["nat"]["KUBE-SERVICES"])
    assert any("REJECT" in r and ports[1].cluster_ip in r
               for r in fake.tables["filter"]["KUBE-SERVICES"])


def test_failed_restore_raises_and_next_sync_is_full():
    fake = FakeTables()
    syncer = IptablesSyncer(OPTS, restorer=fake)
    base = {i: [f"10.1.{i}.{j + 1}" for j in range(3)] for i in range(4)}
    syncer.sync(*state(4, base))
    base[0] = ["10.1.0.1", "10.66.6.6"]
    fake.fail_on = "10.66.6.6"
    before = fake.save()
    with pytest.raises(SyncError) as err:
        syncer.sync(*state(4, base))
    assert isinstance(err.value.__cause__, IptablesError)
    assert syncer.needs_full_sync and fake.save() == before  # all-or-nothing
    fake.fail_on = None
    ports, eps = state(4, base)
    r = syncer.sync(ports, eps)
    assert not r.partial and fake.own() == expected(ports, eps)
    assert syncer.sync(ports, eps).partial


def reachable_is_whole(fake: FakeTables) -> None:
    """No Service is half-programmed: every chain traffic can reach holds its final rules."""
    nat = fake.tables["nat"]
    seen, todo = set(), ["KUBE-SERVICES", "KUBE-NODEPORTS"]
    while todo:
        chain = todo.pop()
        if chain in seen:
            continue
        seen.add(chain)
        if chain in ("KUBE-SERVICES", "KUBE-NODEPORTS") and chain not in nat:
            continue  # before the first shared-chain transaction
        rules = nat[chain]
        if chain.startswith(("KUBE-SVC-", "KUBE-SEP-")):
            assert rules, f"{chain} reachable but empty"
        if chain.startswith("KUBE-SEP-"):
            assert any("DNAT" in r for r in rules), f"{chain} reachable without DNAT"
        if chain.startswith("KUBE-SVC-"):
            assert rules[-1].endswith(tuple(f"-j {c}" for c in nat if c.startswith("KUBE-SEP")))
        todo += [m.group(1) for r in rules for m in _TARGET.finditer(r)
                 if m.group(1).startswith("KUBE-") and m.group(1) != names.MARK_MASQ]


def test_nft_large_sync_is_chunked_per_service_and_never_half_visible():
    fake = FakeTables("nft")
    fake.after_commit = reachable_is_whole
    syncer = IptablesSyncer(OPTS, restorer=fake, chunk_services=4)
    ports, eps = state(30)
    r = syncer.sync(ports, eps)
    assert r.transactions == 8 + 1  # 8 chunks of ≤ 4 services, then the shared chains
    assert fake.own() == expected(ports, eps)
    # Each service's chains were written in one transaction, before KUBE-SERVICES.
    for sp in ports:
        mine = [i for i, p in enumerate(fake.payloads)
                if any(f":{c} " in p for c in [sp.svc_chain, *(e.chain for e in eps[sp.key])])]
        assert len(mine) == 1 and mine[0] < len(fake.payloads) - 1
    assert ":KUBE-SERVICES " in fake.payloads[-1]
    # Change every endpoint set: the live chains are rewritten in place, still whole.
    eps2 = state(30, {i: [f"10.2.{i}.{j + 1}" for j in range(2)] for i in range(30)})[1]
    r = syncer.sync(ports, eps2)
    assert r.partial and r.services_written == 30 and r.deleted_chains == 90
    assert fake.own() == expected(ports, eps2)
    # Removing most Services deletes their chains in chunks, referrers first.
    ports3, eps3 = state(2)
    syncer.sync(ports3, eps3)
    assert fake.own() == expected(ports3, eps3)


class ConcurrentFake(FakeTables):
    """FakeTables whose commits are serialised (as the kernel's are), counting how many
    restores were in flight at once."""

    def __init__(self, variant: str = "nft") -> None:
        super().__init__(variant)
        self.lock = threading.Lock()
        self.in_flight = self.max_in_flight = 0
        self.first_done = threading.Event()

    def apply(self, payload: str, noflush: bool = True) -> None:
        with self.lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(0.02)  # the tool loading the table
        with self.lock:
            if ":KUBE-SEP-" in payload or ":KUBE-SVC-" in payload:
                # every endpoint chain jumps to KUBE-MARK-MASQ: the first chunk made it
                assert ":KUBE-MARK-MASQ " in payload or self.first_done.is_set()
            super().apply(payload, noflush)
            self.first_done.set()
            self.in_flight -= 1


def test_nft_chunks_after_the_first_run_concurrently_and_end_whole():
    fake = ConcurrentFake("nft")
    fake.after_commit = reachable_is_whole
    syncer = IptablesSyncer(OPTS, restorer=fake, chunk_services=4, parallel=2)
    ports, eps = state(30)
    syncer.sync(ports, eps)
    assert fake.max_in_flight == 2
    assert fake.own() == expected(ports, eps)
    assert ":KUBE-SERVICES " in fake.payloads[-1]  # the switch-over still comes last
    eps2 = state(30, {i: [f"10.3.{i}.{j + 1}" for j in range(3)] for i in range(30)})[1]
    syncer.sync(ports, eps2)
    assert fake.own() == expected(ports, eps2)


def test_legacy_large_sync_is_one_transaction():
    fake = FakeTables("legacy")
    syncer = IptablesSyncer(OPTS, restorer=fake, chunk_services=4)
    ports, eps = state(30)
    assert syncer.sync(ports, eps).transactions == 1
    assert fake.own() == expected(ports, eps)


def test_restart_collects_chains_of_an_earlier_run():
    fake = FakeTables()
    IptablesSyncer(OPTS, restorer=fake).sync(*state(5))
    ports, eps = state(2)
    r = IptablesSyncer(OPTS, restorer=fake).sync(ports, eps)
    assert not r.partial and r.deleted_chains == 3 * 4
    assert fake.own() == expected(ports, eps)
    for table, chain, spec in jump_rules(OPTS):
        assert fake.tables[table][chain].count(spec) == 1


def test_large_cluster_switch_forces_full_sync():
    fake = FakeTables()
    syncer = IptablesSyncer(OPTS, restorer=fake)
    syncer.sync(*state(3))
    ports, eps = state(3, {i: [f"10.{i}.{j // 250}.{j % 250 + 1}" for j in range(400)]
                           for i in range(3)})
    r = syncer.sync(ports, eps)
    assert not r.partial and fake.own() == expected(ports, eps)
    assert not any("--comment" in rule for c, rules in fake.tables["nat"].items()
                   if c.startswith("KUBE-SEP-") for rule in rules)


def test_cleanup_removes_every_kube_chain_and_jump():
    for variant in ("nft", "legacy"):
        fake = FakeTables(variant)
        syncer = IptablesSyncer(OPTS, restorer=fake, chunk_services=2)
        syncer.sync(*state(7))
        syncer.cleanup()
        assert fake.tables == FakeTables().tables
        assert syncer.needs_full_sync


def test_dry_run_applies_nothing():
    fake = FakeTables()
    text = IptablesSyncer(OPTS, restorer=fake).dry_run(*state(2))
    assert text.startswith("*filter") and ":KUBE-SVC-" in text
    assert not fake.payloads
