"""IptablesSyncer against the real iptables tools, in throwaway namespaces, both variants."""
from __future__ import annotations

import re
import subprocess
import sys
import threading

import pytest

from kubeproxy_py.iptables import names
from kubeproxy_py.iptables.apply import IptablesSyncer, SyncError
from kubeproxy_py.model import ProxyOptions, parse_endpoint_slices, parse_services
from podnet.iptables import IptablesError, Restorer
from tests.conftest import ns_run

pytestmark = pytest.mark.root
VARIANTS = ["nft", "legacy"]
OPTS = ProxyOptions(node_name="node1", cluster_cidr="10.0.0.0/8")


def saved(ns: str, variant: str) -> str:
    text = ns_run(ns, [f"iptables-{variant}-save"]).stdout
    return "\n".join(re.sub(r"\[\d+:\d+\]", "", line) for line in text.splitlines()
                     if not line.startswith("#"))


def svc(i: int) -> dict:
    return {"metadata": {"namespace": "ns", "name": f"svc{i}"},
            "spec": {"clusterIP": f"172.30.{i // 250}.{i % 250 + 1}",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}


def state(n: int, eps: dict[int, list[str]] | None = None):
    eps = eps if eps is not None else {i: [f"10.1.{i}.{j + 1}" for j in range(3)] for i in range(n)}
    slices = [{"metadata": {"namespace": "ns", "name": f"svc{i}-x",
                            "labels": {"kubernetes.io/service-name": f"svc{i}"}},
               "addressType": "IPv4",
               "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
               "endpoints": [{"addresses": [ip], "nodeName": "node2"} for ip in ips]}
              for i, ips in eps.items() if ips]
    return parse_services([svc(i) for i in range(n)]), parse_endpoint_slices(slices)


def nat_chains(ns: str, variant: str) -> set[str]:
    return {line[1:].split()[0] for line in saved(ns, variant).splitlines()
            if line.startswith(":KUBE-")}


@pytest.mark.parametrize("variant", VARIANTS)
def test_sync_twice_partial_and_removal(netns_factory, variant):
    ns = netns_factory("kp")
    syncer = IptablesSyncer(OPTS, netns=ns, variant=variant)
    base = {i: [f"10.1.{i}.{j + 1}" for j in range(3)] for i in range(12)}
    ports, eps = state(12, base)
    assert not syncer.sync(ports, eps).partial
    first = saved(ns, variant)
    assert "-A KUBE-SERVICES" in first and "-j KUBE-SERVICES" in first  # chains and jumps
    r = syncer.sync(*state(12, base))
    assert r.partial and r.transactions == 0 and saved(ns, variant) == first

    # One endpoint of svc3 moves: only svc3's chains change.
    base[3] = ["10.1.3.1", "10.1.3.2", "10.1.3.9"]
    ports, eps = state(12, base)
    r = syncer.sync(ports, eps)
    assert r.partial and r.services_written == 1 and r.deleted_chains == 1
    after = saved(ns, variant)
    sp3 = ports[3]
    svc3_chains = {sp3.svc_chain, *(e.chain for e in eps[sp3.key]),
                   names.endpoint_chain("ns/svc3:http", "tcp", "10.1.3.3:8080")}
    diff = set(first.splitlines()) ^ set(after.splitlines())
    assert diff and all(any(c in line for c in svc3_chains) for line in diff), diff
    assert "10.1.3.9:8080" in after and "10.1.3.3:8080" not in after
    assert syncer.dry_run(ports, eps).count("\n-A ") == len(
        [line for line in after.splitlines() if line.startswith("-A KUBE-")])

    # svc11 goes away: its chains are deleted.
    gone = ports[11]
    ports, eps = state(11, {i: base[i] for i in range(11)})
    r = syncer.sync(ports, eps)
    assert r.partial and r.deleted_chains == 4
    left = nat_chains(ns, variant)
    assert gone.svc_chain not in left and ports[10].svc_chain in left
    assert gone.cluster_ip not in saved(ns, variant)

    syncer.cleanup()
    assert not any("KUBE-" in line for line in saved(ns, variant).splitlines())


class Mangling(Restorer):
    """A real restorer that breaks payloads mentioning ``poison``."""

    poison: str | None = None

    def apply(self, payload: str, *, noflush: bool = True) -> None:
        if self.poison and self.poison in payload:
            payload = payload.replace(self.poison, self.poison + " --no-such-option")
        super().apply(payload, noflush=noflush)


@pytest.mark.parametrize("variant", VARIANTS)
def test_failed_restore_then_full_sync(netns_factory, variant):
    ns = netns_factory("kp")
    restorer = Mangling(family=4, variant=variant, netns=ns)
    syncer = IptablesSyncer(OPTS, restorer=restorer)
    base = {i: [f"10.1.{i}.{j + 1}" for j in range(2)] for i in range(5)}
    syncer.sync(*state(5, base))
    base[1] = ["10.1.1.1", "10.1.1.7"]
    restorer.poison = "--to-destination 10.1.1.7:8080"
    with pytest.raises(SyncError) as err:
        syncer.sync(*state(5, base))
    assert isinstance(err.value.__cause__, IptablesError)
    assert "--no-such-option" in err.value.__cause__.context  # numbered payload context
    assert "10.1.1.7" not in saved(ns, variant)
    restorer.poison = None
    ports, eps = state(5, base)
    r = syncer.sync(ports, eps)
    assert not r.partial and "10.1.1.7:8080" in saved(ns, variant)
    assert r.deleted_chains == 1  # the old endpoint's chain, found by reading the table


SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("10.200.0.2", 8080)); s.listen(64); print("ready", flush=True)
while True:
    c, _ = s.accept(); c.sendall(b"served-by-backend"); c.close()
"""
CLIENT = """
import socket, sys
c = socket.create_connection(("172.30.0.1", 80), timeout=2); print(c.recv(100).decode())
"""
PROBE = """
import socket, sys
ok = bad = 0
while sys.stdin.readline().strip() == "go":
    try:
        c = socket.create_connection(("172.30.0.1", 80), timeout=1)
        ok += c.recv(100) == b"served-by-backend"; c.close()
    except OSError:
        bad += 1
    print(ok, bad, flush=True)
"""


@pytest.mark.parametrize("variant", VARIANTS)
def test_clusterip_reaches_backend_and_stays_whole_during_chunked_sync(netns_factory, variant):
    node, server = netns_factory("kpnode"), netns_factory("kpsrv")
    subprocess.run(["ip", "-n", node, "link", "add", "kp0", "type", "veth", "peer", "name",
                    "kp1", "netns", server], check=True)
    ns_run(node, ["ip", "addr", "add", "10.200.0.1/24", "dev", "kp0"])
    ns_run(node, ["ip", "link", "set", "kp0", "up"])
    ns_run(node, ["ip", "route", "add", "172.30.0.0/16", "dev", "kp0"])
    ns_run(server, ["ip", "addr", "add", "10.200.0.2/24", "dev", "kp1"])
    ns_run(server, ["ip", "link", "set", "kp1", "up"])
    proc = subprocess.Popen(["ip", "netns", "exec", server, sys.executable, "-c", SERVER],
                            stdout=subprocess.PIPE, text=True)
    probe = None
    try:
        assert proc.stdout.readline().strip() == "ready"
        syncer = IptablesSyncer(OPTS, netns=node, variant=variant, chunk_services=20)
        ports, eps = state(1, {0: ["10.200.0.2"]})
        syncer.sync(ports, eps)
        out = ns_run(node, [sys.executable, "-c", CLIENT]).stdout
        assert out.strip() == "served-by-backend"

        # A full resync of 400 Services (20 chunks on nft) while a client keeps connecting.
        many = {i: [f"10.1.{i // 250}.{i % 250 + 1}"] for i in range(1, 400)}
        many[0] = ["10.200.0.2"]
        ports, eps = state(400, many)
        probe = subprocess.Popen(["ip", "netns", "exec", node, sys.executable, "-c", PROBE],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        done = threading.Event()
        counts: list[str] = []

        def drive() -> None:
            while not done.is_set():
                probe.stdin.write("go\n")
                probe.stdin.flush()
                counts.append(probe.stdout.readline().strip())

        t = threading.Thread(target=drive)
        t.start()
        try:
            r = syncer.sync(ports, eps, full=True)
        finally:
            done.set()
            t.join()
        assert r.transactions == (21 if variant == "nft" else 1)
        ok, bad = map(int, counts[-1].split())
        assert ok >= 1 and bad == 0, counts[-1]
    finally:
        for p in (probe, proc):
            if p is not None:
                p.kill()
                p.wait()
