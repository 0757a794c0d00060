"""How fast flanneld converges the kernel to the leases in etcd, for vxlan and host-gw.

    python benchmarks/flannel_convergence.py [--backends vxlan,host-gw] [--reps 5]
        [--leases 500] [--modes txn,loop] [--only new-node,many-leases]

Two scenarios, each on a fresh cluster from tests/integration/flannel/cluster.py (node and
etcd namespaces on an underlay bridge in its own namespace, real flanneld processes):

* ``new_node``: three nodes run flanneld; a fourth node's flanneld starts.  Measured: from
  the moment the fourth node's lease shows up in an etcd watch to the route for its subnet
  being present on all three other nodes (target <= 1 s); then flanneld on the fourth node
  is stopped and its lease deleted, measured from the delete until the route is gone on all
  three.  Repeated ``--reps`` times; the median is reported.
* ``many_leases``: one node runs flanneld; ``--leases`` leases of fake nodes are written
  straight into etcd (``txn``: transactions of 100 puts; ``loop``: one put after another).
  Measured: from the first write until every route (vxlan: and neighbour and FDB entry) is
  programmed on the node (target <= 2 s), then from the first delete until all are gone.
  For host-gw the fake PublicIPs are 192.168.X.Y, made on-link by a second address
  192.168.0.1/16 on the node's eth0.

The kernel is watched by polling ``podnet.rtnl.RTNL(netns=...)`` dumps every ~5 ms from one
thread per node; etcd is watched from a thread inside the etcd namespace.  Every namespace,
flanneld and etcd process is stopped/removed in ``finally`` (processes by their PID).
Prints JSON.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from ipaddress import IPv4Network
from pathlib import Path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from podnet import netns
from podnet.netns import Scratch  # noqa: E402
from podnet.etcd import Store  # noqa: E402
from podnet.rtnl import RTNL  # noqa: E402
from tests.integration.flannel.cluster import PREFIX, Cluster, stop_proc  # noqa: E402

NS_PREFIX = "pn-bench-cv-"
SUBNETS = f"{PREFIX}/subnets/"
AF_INET = 2
AF_BRIDGE = 7
NUD_PERMANENT = 0x80
POLL = 0.005
TXN_OPS = 100                 # etcd's default --max-txn-ops is 128
NEW_NODE_TARGET = 1.0
MANY_TARGET = 2.0



# --- watching the kernel ------------------------------------------------------------------

class KernelPoller(threading.Thread):
    """Dumps routes (and, with ``overlay``, permanent neighbours/FDB entries of flannel.*)
    of one namespace every ~5 ms; remembers when each item was first seen in its current
    appearance and when it was last seen going away."""

    def __init__(self, ns: str, overlay: bool = False) -> None:
        super().__init__(name=f"poll-{ns}", daemon=True)
        self.ns, self.overlay = ns, overlay
        self.rtnl = RTNL(netns=ns)
        self.stop_event = threading.Event()
        self.lock = threading.Lock()
        self.present: dict[tuple, float] = {}     # item -> time it (re)appeared
        self.gone: dict[tuple, float] = {}        # item -> time it disappeared
        self.polls = 0

    def snapshot(self) -> set[tuple]:
        items: set[tuple] = set()
        for r in self.rtnl.routes(family=AF_INET):
            if r.gateway is not None:
                items.add(("route", r.dst))
        if self.overlay:
            vteps = {l.index for l in self.rtnl.links() if l.name.startswith("flannel.")}
            if vteps:
                for n in self.rtnl.neighs(family=AF_INET):
                    if n.index in vteps and n.state & NUD_PERMANENT:
                        items.add(("neigh", n.address))
                for idx in vteps:
                    for n in self.rtnl.fdbs(idx):
                        if n.dst and n.state & NUD_PERMANENT:
                            items.add(("fdb", n.mac, n.dst))
        return items

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                items = self.snapshot()
                now = time.monotonic()
                with self.lock:
                    for it in items:
                        if it not in self.present:
                            self.present[it] = now
                            self.gone.pop(it, None)
                    for it in [i for i in self.present if i not in items]:
                        del self.present[it]
                        self.gone[it] = now
                    self.polls += 1
                self.stop_event.wait(POLL)
        finally:
            self.rtnl.close()

    def wait(self, pred, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                if pred(self):
                    return True
            time.sleep(POLL)
        return False

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


def wait_all(pollers: list[KernelPoller], pred, timeout: float) -> bool:
    return all(p.wait(pred, timeout) for p in pollers)


# --- etcd, from inside the etcd namespace -------------------------------------------------

class Etcd:
    """A Store used only inside ``ns``, and a watch of the subnets prefix recording when
    each key was put / deleted (monotonic time of the watch response)."""

    def __init__(self, ns: str, url: str) -> None:
        self.ns = ns
        with netns.entered(ns):
            self.store = Store(url)
        self.lock = threading.Lock()
        self.puts: dict[str, float] = {}
        self.deletes: dict[str, float] = {}
        self.stream = None
        self.thread: threading.Thread | None = None

    def call(self, fn, *args):
        with netns.entered(self.ns):
            return fn(*args)

    def start_watch(self) -> None:
        rev = self.call(self.store.revision)
        ready = threading.Event()

        def run() -> None:
            with netns.entered(self.ns):
                self.stream = self.store.watch_prefix(SUBNETS, rev + 1)
                ready.set()
                for batch in self.stream:
                    now = time.monotonic()
                    with self.lock:
                        for ev in batch:
                            key = ev.key[len(SUBNETS):]
                            if ev.type == "PUT":
                                self.puts.setdefault(key, now)
                                self.deletes.pop(key, None)
                            else:
                                self.deletes.setdefault(key, now)
                                self.puts.pop(key, None)

        self.thread = threading.Thread(target=run, name="etcd-watch", daemon=True)
        self.thread.start()
        ready.wait(10)

    def wait_put(self, pred, timeout: float) -> tuple[str, float] | None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for key, t in self.puts.items():
                    if pred(key):
                        return key, t
            time.sleep(0.002)
        return None

    def parallel(self, fn_name: str, args: list[tuple], writers: int) -> None:
        """Call ``Store.<fn_name>(*a)`` for every ``a`` from ``writers`` threads, each with
        its own Store (connection), as fast as etcd takes them."""
        url = self.store.endpoints[0]

        def run(chunk: list[tuple]) -> None:
            with netns.entered(self.ns):
                store = Store(url)
                fn = getattr(store, fn_name)
                for a in chunk:
                    fn(*a)
        threads = [threading.Thread(target=run, args=(args[i::writers],), daemon=True)
                   for i in range(writers)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def txn_ops(self, ops: list[dict]) -> None:
        for i in range(0, len(ops), TXN_OPS):
            self.call(self.store.txn, [], ops[i:i + TXN_OPS])

    def close(self) -> None:
        if self.stream is not None:
            self.stream.close()
        if self.thread is not None:
            self.thread.join(5)


# --- helpers -------------------------------------------------------------------------------

def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def key_of(subnet: IPv4Network) -> str:
    return f"{subnet.network_address}-{subnet.prefixlen}"


def subnet_of_key(key: str) -> str:
    ip, plen = key.rsplit("-", 1)
    return f"{ip}/{plen}"


def fake_leases(n: int, backend: str) -> list[tuple[str, str, dict]]:
    """(subnet, public IP, lease value) for ``n`` fake nodes."""
    out = []
    for i in range(n):
        subnet = f"10.{100 + i // 256}.{i % 256}.0/24"
        public = f"192.168.{100 + i // 250}.{1 + i % 250}"
        value: dict = {"PublicIP": public, "PublicIPv6": None, "BackendType": backend}
        if backend == "vxlan":
            value["BackendData"] = {"VNI": 1, "VtepMAC": "0e:%02x:%02x:%02x:%02x:%02x" % (
                0x10, i >> 8, i & 0xFF, 0xAB, 0x01)}
        out.append((subnet, public, value))
    return out


def expected_items(leases: list[tuple[str, str, dict]], backend: str) -> list[tuple]:
    items = []
    for subnet, public, value in leases:
        items.append(("route", subnet))
        if backend == "vxlan":
            items.append(("neigh", subnet.split("/")[0]))
            items.append(("fdb", value["BackendData"]["VtepMAC"], public))
    return items


def summary(samples: list[float]) -> dict:
    if not samples:
        return {"median": None, "samples": []}
    return {"median": round(statistics.median(samples), 4), "max": round(max(samples), 4),
            "samples": [round(s, 4) for s in samples]}


def new_cluster(factory: Scratch, tmp: Path, n_nodes: int, config: dict) -> Cluster:
    cluster = Cluster(factory, tmp, cni_bin="")
    try:
        cluster.build(n_nodes)
        cluster.set_config(config)
    except BaseException:
        cluster.close()
        raise
    return cluster


def check_alive(cluster: Cluster, node) -> None:
    if node.proc is None or node.proc.poll() is not None:
        raise RuntimeError(f"flanneld on {node.name} exited:\n{cluster.log(node)[-3000:]}")


# --- scenario 1: a new node ----------------------------------------------------------------

def bench_new_node(factory: Scratch, tmp: Path, backend: str, reps: int) -> dict:
    config = {"Network": "10.244.0.0/16", "Backend": {"Type": backend}}
    cluster = new_cluster(factory, tmp, 4, config)
    pollers: list[KernelPoller] = []
    etcd = None
    try:
        old, new = cluster.nodes[:3], cluster.nodes[3]
        for node in old:
            cluster.start_flanneld(node)
        for node in old:
            cluster.wait_ready(node)
        subnets = {cluster.subnet_of(n) for n in old}
        pollers = [KernelPoller(n.ns) for n in old]
        for p in pollers:
            p.start()
        for p, node in zip(pollers, old):
            others = {("route", s) for s in subnets - {cluster.subnet_of(node)}}
            if not p.wait(lambda q, o=others: o <= q.present.keys(), 30):
                raise RuntimeError(f"{node.name} never got routes to {sorted(others)}")
        etcd = Etcd(cluster.etcd[0].ns, cluster.etcd[0].url)
        etcd.start_watch()
        known = {key_of(IPv4Network(s)) for s in subnets}
        adds, dels, failures = [], [], []
        for rep in range(reps):
            if rep % 2:                        # alternate: new subnet / previous subnet
                new.subnet_file.unlink(missing_ok=True)
            with etcd.lock:
                etcd.puts.clear()
            cluster.start_flanneld(new)
            got = etcd.wait_put(lambda k: k not in known, 60)
            if got is None:
                check_alive(cluster, new)
                raise RuntimeError("the new node's lease never appeared")
            key, t0 = got
            item = ("route", subnet_of_key(key))
            ok = wait_all(pollers, lambda q: item in q.present, 10)
            if ok:
                adds.append(max(p.present[item] for p in pollers) - t0)
            else:
                failures.append(f"rep {rep}: route {item[1]} missing after 10 s")
            cluster.wait_ready(new)
            stop_proc(new.proc)
            t0 = time.monotonic()
            etcd.call(etcd.store.delete, SUBNETS + key)
            if wait_all(pollers, lambda q: item not in q.present and item in q.gone, 10):
                dels.append(max(p.gone[item] for p in pollers) - t0)
            else:
                failures.append(f"rep {rep}: route {item[1]} still there 10 s after delete")
            for node in old:
                check_alive(cluster, node)
        return {"add_s": summary(adds), "delete_s": summary(dels), "failures": failures,
                "target_s": NEW_NODE_TARGET,
                "met": bool(adds and dels and not failures
                            and statistics.median(adds) <= NEW_NODE_TARGET
                            and statistics.median(dels) <= NEW_NODE_TARGET)}
    finally:
        for p in pollers:
            p.stop()
        if etcd is not None:
            etcd.close()
        cluster.close()


# --- scenario 2: many remote leases ----------------------------------------------------------

def bench_many(factory: Scratch, tmp: Path, backend: str, n: int, modes: list[str],
               writers: int) -> dict:
    config = {"Network": "10.0.0.0/8", "SubnetLen": 24, "Backend": {"Type": backend}}
    cluster = new_cluster(factory, tmp, 1, config)
    poller = None
    etcd = None
    try:
        node = cluster.nodes[0]
        cluster.start_flanneld(node)
        cluster.wait_ready(node)
        if backend == "host-gw":               # make the fake PublicIPs on-link
            subprocess.run(["ip", "-n", node.ns, "addr", "add", "192.168.0.1/16", "dev", "eth0"],
                           check=True)
        poller = KernelPoller(node.ns, overlay=(backend == "vxlan"))
        poller.start()
        etcd = Etcd(cluster.etcd[0].ns, cluster.etcd[0].url)
        leases = fake_leases(n, backend)
        items = expected_items(leases, backend)
        out: dict = {"leases": n, "target_s": MANY_TARGET}
        kvs = [(SUBNETS + key_of(IPv4Network(s)), json.dumps(v, separators=(",", ":")))
               for s, _pub, v in leases]
        for mode in modes:
            t0 = time.monotonic()
            cpu0 = cpu_seconds(node.proc.pid)
            if mode == "txn":
                etcd.txn_ops([{"request_put": {"key": _b64(k), "value": _b64(v)}} for k, v in kvs])
            else:
                etcd.parallel("put", kvs, writers)
            t_written = time.monotonic() - t0
            ok = poller.wait(lambda q: all(i in q.present for i in items), 60)
            check_alive(cluster, node)
            add = max(poller.present[i] for i in items) - t0 if ok else None
            cpu_add = cpu_seconds(node.proc.pid) - cpu0
            t1 = time.monotonic()
            if mode == "txn":
                etcd.txn_ops([{"request_delete_range": {"key": _b64(k)}} for k, _v in kvs])
            else:
                etcd.parallel("delete", [(k,) for k, _v in kvs], writers)
            t_deleted = time.monotonic() - t1
            gone = poller.wait(lambda q: not any(i in q.present for i in items), 60)
            check_alive(cluster, node)
            delete = max(poller.gone[i] for i in items) - t1 if gone else None
            out[mode] = {
                "write_s": round(t_written, 4), "add_s": _r(add),
                "add_after_last_write_s": _r(add - t_written if add is not None else None),
                "daemon_cpu_add_s": round(cpu_add, 3),
                "delete_writes_s": round(t_deleted, 4), "delete_s": _r(delete),
                "delete_after_last_write_s": _r(delete - t_deleted if delete is not None else None),
                "daemon_cpu_delete_s": round(cpu_seconds(node.proc.pid) - cpu0 - cpu_add, 3),
                "met": add is not None and delete is not None
                and add <= MANY_TARGET and delete <= MANY_TARGET}
        out["polls"] = poller.polls
        return out
    finally:
        if poller is not None:
            poller.stop()
        if etcd is not None:
            etcd.close()
        cluster.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _r(x: float | None) -> float | None:
    return None if x is None else round(x, 4)


# --- main ------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backends", default="vxlan,host-gw")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--leases", type=int, default=500)
    ap.add_argument("--modes", default="txn,loop")
    ap.add_argument("--writers", type=int, default=8,
                    help="concurrent writers in the 'loop' mode (one put/delete per request)")
    ap.add_argument("--only", default="new-node,many-leases")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    backends = [b for b in args.backends.split(",") if b]
    only = set(args.only.split(","))
    modes = [m for m in args.modes.split(",") if m]
    factory = Scratch(NS_PREFIX)
    tmp = Path(tempfile.mkdtemp(prefix="pn-bench-cv-"))
    result: dict = {"command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                    "cpus": os.cpu_count()}
    try:
        if "new-node" in only:
            result["new_node"] = {b: bench_new_node(factory, tmp / f"nn-{b}", b, args.reps)
                                  for b in backends}
        if "many-leases" in only:
            result["many_leases"] = {b: bench_many(factory, tmp / f"ml-{b}", b, args.leases,
                                                 modes, args.writers)
                                     for b in backends}
    finally:
        factory.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
