"""The lab: several nodes on one machine, each a network namespace, joined by an underlay.

``plan()`` decides everything from the spec (names, addresses, files, command lines) as data;
``up()`` carries the plan out, writing ``state.json`` after every step so that ``down()`` can
remove whatever exists — also after a crash or a ``kill -9`` half-way through. Nothing is
created in the root network namespace: the underlay bridge, etcd, the nodes and the CLI's
client namespace all live in namespaces named ``pn-<lab>-…``.

State directory ``/run/podnet/lab/<name>/``:
    state.json            what exists (read by ``down``, ``status`` and ``podnet --lab``)
    etcd-<i>/             etcd data
    nodes/<node>/         bin/ (CNI plugins), cni.sock, 10-flannel.conflist, subnet.env,
                          runner/ (pod runner state), cni/ (host-local + flannel data)
    logs/<process>.log
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from podnet import netns, node as nodecfg, pods, rtnl

LAB_ROOT = "/run/podnet/lab"
UNDERLAY = ipaddress.ip_network("192.168.200.0/24")
POD_NETWORK = nodecfg.POD_NETWORK
FLANNEL_PREFIX = nodecfg.FLANNEL_PREFIX
BACKENDS = ("vxlan", "udp", "host-gw")
SERVICE_CIDR = "10.96.0.0/12"     # podnet.store.DEFAULT_SERVICE_CIDR


class LabError(Exception):
    """A lab operation that cannot go on; the message says what and why."""


@dataclass(frozen=True)
class LabSpec:
    name: str = "lab"
    nodes: int = 3
    backend: str = "vxlan"
    etcd_members: int = 1
    proxy_mode: str = "iptables"
    netpol: bool = True

    def check(self) -> None:
        if not self.name or len(self.name) > 12 or not all(c.isalnum() or c == "-" for c in self.name):
            raise LabError(f"lab name {self.name!r}: use 1-12 letters, digits or '-'")
        if not 1 <= self.nodes <= 20:
            raise LabError(f"--nodes {self.nodes}: between 1 and 20")
        if self.backend not in BACKENDS:
            raise LabError(f"--backend {self.backend!r}: one of {', '.join(BACKENDS)}")
        if self.etcd_members not in (1, 3):
            raise LabError(f"--etcd-members {self.etcd_members}: 1 or 3")
        if self.proxy_mode not in nodecfg.PROXY_MODES:
            raise LabError(f"--proxy-mode {self.proxy_mode!r}: one of {', '.join(nodecfg.PROXY_MODES)}")


@dataclass
class Member:
    name: str
    netns: str
    ip: str
    data_dir: str

    @property
    def client_url(self) -> str:
        return f"http://{self.ip}:2379"

    @property
    def peer_url(self) -> str:
        return f"http://{self.ip}:2380"


@dataclass
class Node:
    name: str
    netns: str
    ip: str
    dir: str

    proxy_mode: str = "iptables"

    def config(self, etcd_endpoints: list[str] | tuple[str, ...] = ()) -> nodecfg.NodeConfig:
        """This node as :mod:`podnet.node` sees it: all its files in its lab directory."""
        return nodecfg.in_directory(self.name, tuple(etcd_endpoints), "eth0", self.ip, self.dir,
                                    proxy_mode=self.proxy_mode)

    @property
    def cni_bin(self) -> str:
        return self.config().cni_bin

    @property
    def cni_socket(self) -> str:
        return self.config().cni_socket

    @property
    def conflist(self) -> str:
        return self.config().conflist

    @property
    def subnet_file(self) -> str:
        return self.config().subnet_file

    @property
    def runner_dir(self) -> str:
        return self.config().runner_dir


@dataclass
class Process:
    role: str            # etcd | cni-daemon | flanneld | runner | kube-proxy
    owner: str           # member or node name
    netns: str
    argv: list[str]
    log: str
    pid: int = 0
    start_time: int | None = None


@dataclass
class LabState:
    name: str
    dir: str
    backend: str
    underlay_netns: str
    client_netns: str
    client_ip: str
    members: list[Member] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)      # created, in creation order
    processes: list[Process] = field(default_factory=list)
    phase: str = "creating"

    @property
    def etcd_endpoints(self) -> list[str]:
        return [m.client_url for m in self.members]

    def save(self) -> None:
        data = asdict(self)
        data["etcd_endpoints"] = self.etcd_endpoints
        tmp = os.path.join(self.dir, "state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, os.path.join(self.dir, "state.json"))

    @classmethod
    def load(cls, name: str) -> "LabState":
        path = os.path.join(LAB_ROOT, name, "state.json")
        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise LabError(f"no lab named {name!r} (no {path})") from None
        data.pop("etcd_endpoints", None)
        data["members"] = [Member(**m) for m in data["members"]]
        data["nodes"] = [Node(**n) for n in data["nodes"]]
        data["processes"] = [Process(**p) for p in data["processes"]]
        return cls(**data)


# --- the plan (pure) -----------------------------------------------------------------------


def plan(spec: LabSpec, python: str = sys.executable) -> LabState:
    spec.check()
    base = os.path.join(LAB_ROOT, spec.name)
    hosts = UNDERLAY.hosts()
    addr = [str(next(hosts)) for _ in range(254)]       # .1 … .254
    ns = f"pn-{spec.name}"
    state = LabState(name=spec.name, dir=base, backend=spec.backend,
                     underlay_netns=f"{ns}-underlay", client_netns=f"{ns}-ctl",
                     client_ip=addr[249])
    for i in range(spec.etcd_members):
        state.members.append(Member(f"etcd-{i}", f"{ns}-etcd-{i}", addr[1 + i],
                                    os.path.join(base, f"etcd-{i}")))
    for i in range(1, spec.nodes + 1):
        name = f"node-{i}"
        state.nodes.append(Node(name, f"{ns}-{name}", addr[9 + i], os.path.join(base, "nodes", name),
                                proxy_mode=spec.proxy_mode))
    return state


def etcd_argv(m: Member, members: list[Member]) -> list[str]:
    cluster = ",".join(f"{x.name}={x.peer_url}" for x in members)
    return nodecfg.etcd_argv(m.name, m.ip, m.data_dir, cluster)


def node_processes(state: LabState, node: Node, python: str = sys.executable) -> list[Process]:
    """The node's daemons as :func:`podnet.node.daemons` gives them, run in its namespace."""
    logs = os.path.join(state.dir, "logs")
    return [Process(role, node.name, node.netns, argv,
                    os.path.join(logs, f"{node.name}-{role}.log"))
            for role, argv in nodecfg.daemons(node.config(state.etcd_endpoints), python)]


def flannel_conflist(node: Node) -> dict[str, Any]:
    """The node's CNI config: flannel (→ bridge + host-local) then portmap, state in the lab."""
    return nodecfg.conflist(node.config())


def network_config(backend: str) -> dict[str, Any]:
    return nodecfg.network_config(backend)


def node_object(node: Node, ready: bool, pod_cidr: str | None = None) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": node.name, "labels": {"kubernetes.io/hostname": node.name}},
        "spec": {},
        "status": {"addresses": [{"type": "InternalIP", "address": node.ip},
                                 {"type": "Hostname", "address": node.name}],
                   "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }
    if pod_cidr:
        obj["spec"]["podCIDR"] = pod_cidr
        obj["spec"]["podCIDRs"] = [pod_cidr]
    return obj


# --- carrying it out -----------------------------------------------------------------------


Progress = Callable[[str], None]


def up(spec: LabSpec, progress: Progress = lambda msg: None, timeout: float = 60.0) -> LabState:
    state = plan(spec)
    if os.path.exists(os.path.join(state.dir, "state.json")):
        raise LabError(f"lab {spec.name!r} already exists: `podnet lab down --name {spec.name}` first")
    others = list_labs()
    if others:
        # Every lab names its nodes node-1…node-K, and pod namespaces are named after the node.
        raise LabError(f"lab {others[0]!r} is up; one lab at a time (pod namespaces are named "
                       f"by node): `podnet lab down --name {others[0]}` first")
    for n in [state.underlay_netns, state.client_netns, *(m.netns for m in state.members),
              *(n.netns for n in state.nodes)]:
        if netns.exists(n):
            raise LabError(f"network namespace {n} already exists (a lab left behind?): "
                           f"`podnet lab down --name {spec.name}` removes it")
    os.makedirs(os.path.join(state.dir, "logs"), exist_ok=True)
    state.save()
    try:
        t0 = time.monotonic()
        progress(f"creating the underlay and {len(state.nodes)} node namespaces")
        _make_underlay(state)
        progress(f"starting etcd ({len(state.members)} member{'s' if len(state.members) > 1 else ''})")
        _start_etcd(state)
        store = _wait_for_etcd(state, timeout)
        with netns.entered(state.client_netns):
            store.put(f"{FLANNEL_PREFIX}/config", json.dumps(network_config(spec.backend)))
            objects = _object_store(store)
            objects.apply([node_object(n, ready=False) for n in state.nodes])
        progress("starting flanneld, the CNI daemon and the pod runner on every node")
        _start_nodes(state)
        _wait_for_nodes(state, store, timeout, progress)
        state.phase = "ready"
        state.save()
        progress(f"lab {spec.name!r} is ready in {time.monotonic() - t0:.1f} s")
        return state
    except BaseException:
        state.phase = "failed"
        state.save()
        raise


def _object_store(etcd_store):
    from podnet.store import ObjectStore
    return ObjectStore(etcd_store)


def _create_ns(state: LabState, name: str) -> None:
    netns.create(name)
    state.namespaces.append(name)
    state.save()
    with rtnl.RTNL(netns=name) as h:
        h.set_link("lo", up=True)


def _make_underlay(state: LabState) -> None:
    _create_ns(state, state.underlay_netns)
    with rtnl.RTNL(netns=state.underlay_netns) as u:
        u.add_link("br0", "bridge", up=True)
        br = u.link_index("br0")
        legs = [(state.client_netns, state.client_ip)]
        legs += [(m.netns, m.ip) for m in state.members]
        legs += [(n.netns, n.ip) for n in state.nodes]
        node_netns = {n.netns for n in state.nodes}
        for i, (ns_name, ip) in enumerate(legs):
            _create_ns(state, ns_name)
            leg = f"leg{i}"
            fd = netns.open_fd(ns_name)
            try:
                u.add_link(leg, "veth", peer_name="eth0", peer_netns=fd)
            finally:
                os.close(fd)
            u.set_link(leg, master=br, up=True)
            with rtnl.RTNL(netns=ns_name) as h:
                h.add_addr("eth0", f"{ip}/{UNDERLAY.prefixlen}")
                h.set_link("eth0", up=True)
                if ns_name in node_netns:
                    # A real node routes Service IPs (its default route): without a route,
                    # a ClusterIP with no endpoints fails routing before kube-proxy's REJECT.
                    h.add_route(SERVICE_CIDR, oif="eth0")


def _spawn(state: LabState, proc: Process) -> None:
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "PYTHONUNBUFFERED": "1", "HOME": os.environ.get("HOME", "/root")}
    proc.pid, proc.start_time = pods.start_process(proc.argv, env, proc.netns, proc.log)
    state.processes.append(proc)
    state.save()


def _start_etcd(state: LabState) -> None:
    for m in state.members:
        os.makedirs(m.data_dir, exist_ok=True)
        _spawn(state, Process("etcd", m.name, m.netns, etcd_argv(m, state.members),
                              os.path.join(state.dir, "logs", f"{m.name}.log")))


def _wait_for_etcd(state: LabState, timeout: float):
    from podnet.etcd import Store, StoreError
    store = Store(state.etcd_endpoints, timeout=2.0)
    deadline = time.monotonic() + timeout
    while True:
        _check_alive(state)
        try:
            with netns.entered(state.client_netns):
                store.put("/podnet/lab", state.name)
            return store
        except StoreError:
            if time.monotonic() > deadline:
                raise LabError("etcd did not become ready; see " + os.path.join(state.dir, "logs"))
            time.sleep(0.1)


def _start_nodes(state: LabState) -> None:
    for node in state.nodes:
        nodecfg.install_files(node.config(state.etcd_endpoints))
        for proc in node_processes(state, node):
            _spawn(state, proc)


def _wait_for_nodes(state: LabState, store, timeout: float, progress: Progress) -> None:
    from flannel_py.subnet.subnet_env import SubnetEnvError, read_subnet_env
    deadline = time.monotonic() + timeout
    pending = {n.name: n for n in state.nodes}
    objects = _object_store(store)
    while pending:
        _check_alive(state)
        for name, node in list(pending.items()):
            try:
                env = read_subnet_env(node.subnet_file)
            except (OSError, SubnetEnvError):
                continue
            if not os.path.exists(node.cni_socket):
                continue
            with netns.entered(state.client_netns):
                objects.apply([node_object(node, ready=True, pod_cidr=str(env.subnet.network))])
            progress(f"  {name}: ready, pod subnet {env.subnet.network}")
            del pending[name]
        if pending and time.monotonic() > deadline:
            raise LabError(f"nodes not ready after {timeout:.0f} s: {', '.join(sorted(pending))}; "
                           f"see {os.path.join(state.dir, 'logs')}")
        time.sleep(0.05)


def _check_alive(state: LabState) -> None:
    for p in state.processes:
        if not pods.is_alive(p.pid, p.start_time):
            tail = ""
            try:
                with open(p.log) as f:
                    tail = f.read()[-800:]
            except OSError:
                pass
            raise LabError(f"{p.role} on {p.owner} exited (log {p.log}):\n{tail}")


def restart(name: str, node: str, role: str, *, kill: bool = False) -> Process:
    """Stop one node daemon (SIGKILL with ``kill``, as a crash would) and start it again
    with the same command line. Daemons adopt what they find, so pods keep working."""
    state = LabState.load(name)
    proc = next((p for p in state.processes if p.owner == node and p.role == role), None)
    if proc is None:
        raise LabError(f"lab {name!r} has no {role} on {node!r}")
    if kill:
        if pods.is_alive(proc.pid, proc.start_time):
            os.kill(proc.pid, 9)
        while pods.is_alive(proc.pid, proc.start_time):
            time.sleep(0.01)
    else:
        pods.stop_process(proc.pid, proc.start_time, grace=5.0)
    state.processes.remove(proc)
    fresh = Process(proc.role, proc.owner, proc.netns, proc.argv, proc.log)
    _spawn(state, fresh)
    return fresh


# --- down and status -------------------------------------------------------------------------


def pod_namespaces(state: LabState) -> list[str]:
    """Pod namespaces the runners created, from their state files."""
    found = []
    for node in state.nodes:
        pods_dir = os.path.join(node.runner_dir, "pods")
        try:
            entries = os.listdir(pods_dir)
        except OSError:
            continue
        for uid in entries:
            try:
                with open(os.path.join(pods_dir, uid, "state.json")) as f:
                    name = json.load(f).get("netns")
            except (OSError, ValueError):
                continue
            if name:
                found.append(name)
    return found


def down(name: str, progress: Progress = lambda msg: None) -> None:
    """Remove everything the lab made, from its state file; safe to repeat."""
    state = LabState.load(name)
    # Runners first (so they do not recreate pods), then pods' processes, then the rest.
    order = {"runner": 0, "flanneld": 1, "cni-daemon": 2, "etcd": 3}
    procs = sorted(state.processes, key=lambda p: order.get(p.role, 9))
    progress(f"stopping {len(procs)} processes")
    for p in procs:
        pods.stop_process(p.pid, p.start_time, grace=3.0)
    _stop_pod_processes(state)
    pod_ns = pod_namespaces(state)
    progress(f"removing {len(pod_ns)} pod and {len(state.namespaces)} lab namespaces")
    for ns_name in pod_ns + list(reversed(state.namespaces)):
        netns.remove(ns_name)
    shutil.rmtree(state.dir, ignore_errors=True)
    progress(f"lab {name!r} removed")


def _stop_pod_processes(state: LabState) -> None:
    for node in state.nodes:
        pods_dir = os.path.join(node.runner_dir, "pods")
        try:
            entries = os.listdir(pods_dir)
        except OSError:
            continue
        for uid in entries:
            try:
                with open(os.path.join(pods_dir, uid, "state.json")) as f:
                    data = json.load(f)
            except (OSError, ValueError):
                continue
            for c in data.get("containers", []):
                if c.get("pid"):
                    pods.stop_process(c["pid"], c.get("start_time"), grace=2.0)


def status(name: str) -> dict[str, Any]:
    state = LabState.load(name)
    out: dict[str, Any] = {"name": state.name, "phase": state.phase, "backend": state.backend,
                           "etcd": state.etcd_endpoints, "nodes": [], "daemons": []}
    for p in state.processes:
        out["daemons"].append({"role": p.role, "owner": p.owner, "pid": p.pid,
                               "alive": pods.is_alive(p.pid, p.start_time)})
    for node in state.nodes:
        subnet = None
        try:
            from flannel_py.subnet.subnet_env import read_subnet_env
            subnet = str(read_subnet_env(node.subnet_file).subnet.network)
        except Exception:
            pass
        out["nodes"].append({"name": node.name, "ip": node.ip, "netns": node.netns,
                             "subnet": subnet})
    out["pods"] = pod_namespaces(state)
    return out


def list_labs() -> list[str]:
    try:
        return sorted(d for d in os.listdir(LAB_ROOT)
                      if os.path.exists(os.path.join(LAB_ROOT, d, "state.json")))
    except FileNotFoundError:
        return []
