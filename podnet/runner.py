"""The pod runner: the kubelet's part of podnet, one per node.

Level-triggered: every watch event and every ``resync`` seconds the runner lists the Pods and
Nodes, and compares what should run here (the store) with what does (the state directory
plus /proc). :func:`decide` turns that comparison into actions — a pure function, tested on
its own — and :class:`Runner` carries them out (netns, CNI, processes, status writes).

Restarting the runner touches nothing that works: pods whose state, netns and processes are
intact are adopted as they are; dead processes are restarted; pods gone from the store are
torn down. SIGTERM makes the runner exit leaving its pods running, as the kubelet does.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from podnet import netns as netns_mod
from podnet import pods as P

log = logging.getLogger(__name__)

Json = dict[str, Any]

READY_WAIT = 5.0          # how long a setup waits for built-in servers to bind
BACKOFF_BASE, BACKOFF_CAP = 1.0, 30.0


# --- pure: scheduling --------------------------------------------------------------------

def node_ready(node: Json) -> bool:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return False


def node_name(node: Json) -> str:
    return (node.get("metadata") or {}).get("name", "")


def ready_nodes(nodes: list[Json]) -> list[str]:
    return sorted(node_name(n) for n in nodes if node_ready(n) and node_name(n))


def is_scheduler(me: str, nodes: list[Json]) -> bool:
    """Only the runner whose node sorts first among the Ready nodes binds pods."""
    ready = ready_nodes(nodes)
    return bool(ready) and ready[0] == me


def schedule(pods: list[Json], nodes: list[Json]) -> list[tuple[Json, str]]:
    """Bind every pod without ``spec.nodeName`` to a Ready node: fewest pods, then name.
    Deterministic (pods taken in (namespace, name) order)."""
    ready = ready_nodes(nodes)
    if not ready:
        return []
    count = {n: 0 for n in ready}
    unbound = []
    for pod in pods:
        bound = (pod.get("spec") or {}).get("nodeName")
        if bound:
            if bound in count:
                count[bound] += 1
        else:
            unbound.append(pod)
    out = []
    for pod in sorted(unbound, key=P.pod_key):
        target = min(ready, key=lambda n: (count[n], n))
        count[target] += 1
        out.append((pod, target))
    return out


# --- pure: desired vs actual -------------------------------------------------------------

@dataclass(frozen=True)
class Observed:
    """One pod as found on this node: its state file, whether its netns exists, and which
    recorded processes are still the ones that were started."""
    state: P.PodState
    netns_ok: bool
    alive: dict[str, bool] = field(default_factory=dict)


@dataclass(frozen=True)
class Setup:
    uid: str            # netns + CNI ADD + start every container


@dataclass(frozen=True)
class Adopt:
    uid: str            # found intact after a restart: keep as it is


@dataclass(frozen=True)
class StartContainers:
    uid: str
    names: tuple[str, ...]   # (re)start these containers


@dataclass(frozen=True)
class Teardown:
    uid: str
    reason: str


Action = Setup | Adopt | StartContainers | Teardown


def restart_allowed(pod: Json) -> bool:
    return (pod.get("spec") or {}).get("restartPolicy", "Always") != "Never"


def container_names(pod: Json) -> list[str]:
    return [c.get("name") or f"c{i}" for i, c in enumerate((pod.get("spec") or {}).get("containers") or [])]


def decide(desired: dict[str, Json], actual: dict[str, Observed], known: set[str],
           now: float, not_before: dict[str, float]) -> list[Action]:
    """Actions that bring this node from ``actual`` to ``desired`` (both keyed by pod UID).

    ``known``: UIDs this runner has set up or adopted already; ``not_before``: back-off
    deadlines keyed by UID (setup) or ``UID/container`` (restart). Teardowns come first so a
    pod recreated under the same name finds its netns name free.
    """
    teardowns: list[Action] = []
    rest: list[Action] = []
    for uid in sorted(actual):
        obs = actual[uid]
        if uid not in desired:
            teardowns.append(Teardown(uid, "pod deleted or no longer bound to this node"))
        elif obs.state.result is None or not obs.netns_ok:
            # ADD never finished, or the netns vanished: start over from scratch
            teardowns.append(Teardown(uid, "incomplete sandbox"))
            if now >= not_before.get(uid, 0.0):
                rest.append(Setup(uid))
    for uid in sorted(desired):
        obs = actual.get(uid)
        if obs is None:
            if now >= not_before.get(uid, 0.0):
                rest.append(Setup(uid))
            continue
        if obs.state.result is None or not obs.netns_ok:
            continue  # handled above
        pod = desired[uid]
        dead = []
        for name in container_names(pod):
            started = name in obs.state.containers and obs.state.containers[name].pid
            if obs.alive.get(name):
                continue
            if started and not restart_allowed(pod):
                continue
            if now >= not_before.get(f"{uid}/{name}", 0.0):
                dead.append(name)
        if dead:
            rest.append(StartContainers(uid, tuple(dead)))
        elif uid not in known:
            rest.append(Adopt(uid))
    return teardowns + rest


def backoff_delay(failures: int) -> float:
    return min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, failures - 1))


# --- pure: status ------------------------------------------------------------------------

def _cond(ctype: str, ok: bool, reason: str = "", message: str = "") -> Json:
    c = {"type": ctype, "status": "True" if ok else "False"}
    if reason:
        c["reason"] = reason
    if message:
        c["message"] = message
    return c


def running_status(pod: Json, obs: Observed, host_ip: str | None,
                   ready: dict[str, bool]) -> Json:
    """The status a pod with a working sandbox should have."""
    ips = obs.state.ips
    statuses = []
    for name in container_names(pod):
        cs = obs.state.containers.get(name) or P.ContainerState()
        alive = bool(obs.alive.get(name))
        state = ({"running": {}} if alive else
                 {"waiting": {"reason": "CrashLoopBackOff" if cs.pid else "ContainerCreating"}})
        statuses.append({"name": name, "ready": alive and ready.get(name, True),
                         "restartCount": cs.restarts, "started": alive, "state": state})
    all_ready = all(s["ready"] for s in statuses)
    status: Json = {
        "phase": "Running",
        "conditions": [_cond("PodScheduled", True), _cond("Initialized", True),
                       _cond("ContainersReady", all_ready), _cond("Ready", all_ready)],
        "podIP": ips[0] if ips else None,
        "podIPs": [{"ip": ip} for ip in ips],
        "containerStatuses": statuses,
        "message": None,
        "reason": None,
    }
    if host_ip:
        status["hostIP"] = host_ip
        status["hostIPs"] = [{"ip": host_ip}]
    return status


def pending_status(error: str | None) -> Json:
    msg = f"CNI ADD failed: {error}" if error else None
    return {"phase": "Pending",
            "conditions": [_cond("PodScheduled", True),
                           _cond("Ready", False, "NetworkNotReady" if error else "ContainersNotReady", msg or "")],
            "podIP": None, "podIPs": [], "message": msg, "reason": "CNIError" if error else None}


def status_changes(current: Json | None, want: Json) -> Json:
    """The fields of ``want`` that differ from ``current`` (empty: nothing to write)."""
    current = current or {}
    return {k: v for k, v in want.items() if current.get(k) != v}


# --- effects -----------------------------------------------------------------------------

class Runner:
    """Runs one node's pods. ``store`` is an :class:`podnet.store.ObjectStore` (or a fake)."""

    def __init__(self, store: Any, node: str, cni_bin: str, cni_conf: str, state_dir: str, *,
                 resync: float = 5.0, grace: float = 5.0, node_ip: str | None = None,
                 workers: int = 4, exec_plugin: P.Exec = P.exec_subprocess,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.node = store, node
        self.cni_bin, self.cni_conf, self.state_dir = cni_bin, cni_conf, state_dir
        self.resync, self.grace, self.workers = resync, grace, workers
        self.exec_plugin, self.clock = exec_plugin, clock
        self.node_ip = node_ip
        self.conflist = P.load_conflist(cni_conf)
        self.known: set[str] = set()
        self.not_before: dict[str, float] = {}
        self.failures: dict[str, int] = {}
        self.errors: dict[str, str] = {}          # uid -> last CNI ADD error
        self.ready_files: dict[str, dict[str, str]] = {}
        self._wake = threading.Event()
        self._lock = threading.Lock()
        os.makedirs(os.path.join(state_dir, "pods"), exist_ok=True)

    # ---- loop
    def run(self, stop: threading.Event) -> None:
        """Watch and reconcile until ``stop`` is set; pods are left running on exit."""
        self.register_node()
        watchers = [threading.Thread(target=self._watch, args=(res, stop), daemon=True,
                                     name=f"runner-watch-{res}") for res in ("pods", "nodes")]
        for w in watchers:
            w.start()
        while not stop.is_set():
            self._wake.clear()
            try:
                delay = self.reconcile()
            except Exception:  # a failed pass is repaired by the next one
                log.exception("reconcile failed")
                delay = self.resync
            self._wake.wait(delay)
        log.info("runner for %s stopping; pods keep running", self.node)

    def _watch(self, resource: str, stop: threading.Event) -> None:
        def handler(*_event: Any) -> None:
            self._wake.set()
        while not stop.is_set():
            try:
                self.store.watch(resource, handler, stop)
            except Exception as e:
                log.warning("watch of %s failed: %s", resource, e)
                stop.wait(1.0)

    def wake(self) -> None:
        self._wake.set()

    # ---- node registration
    def register_node(self) -> None:
        """Create this node's Node object if missing and mark it Ready (as kubelet does)."""
        node = self.store.get("nodes", None, self.node)
        if node is None:
            try:
                self.store.create({"apiVersion": "v1", "kind": "Node",
                                   "metadata": {"name": self.node}})
            except Exception as e:  # created concurrently (Conflict): fine
                log.debug("node create: %s", e)
            node = self.store.get("nodes", None, self.node) or {}
        status = node.get("status") or {}
        want: Json = {}
        if not node_ready(node):
            others = [c for c in status.get("conditions") or [] if c.get("type") != "Ready"]
            want["conditions"] = others + [_cond("Ready", True, "PodRunnerReady",
                                                 "podnet pod runner is running")]
        ip = self.host_ip(node)
        if ip and not status.get("addresses"):
            want["addresses"] = [{"type": "InternalIP", "address": ip},
                                 {"type": "Hostname", "address": self.node}]
        if want:
            self.store.patch_status("nodes", None, self.node, want)

    def host_ip(self, node: Json | None = None) -> str | None:
        if self.node_ip:
            return self.node_ip
        for a in ((node or {}).get("status") or {}).get("addresses") or []:
            if a.get("type") == "InternalIP":
                self.node_ip = a.get("address")
                return self.node_ip
        self.node_ip = detect_node_ip()
        return self.node_ip

    # ---- one pass
    def reconcile(self) -> float:
        """One level-triggered pass; returns how long to wait before the next one."""
        with self._lock:
            pods, _ = self.store.list("pods")
            nodes, _ = self.store.list("nodes")
            if is_scheduler(self.node, nodes):
                self._bind(pods, nodes)
            desired = {P.pod_uid(p): p for p in pods
                       if (p.get("spec") or {}).get("nodeName") == self.node}
            actual = self.observe()
            now = self.clock()
            actions = decide(desired, actual, self.known, now, self.not_before)
            self.execute(actions, desired, actual)
            self.sync_status(desired, self.observe())
            live = set(desired) | set(self.observe())
            for key in set(self.errors) | set(self.failures) | set(self.not_before):
                if key.split("/")[0] not in live:
                    self._forget(key.split("/")[0])
            pending = [t - now for t in self.not_before.values() if t > now]
            return max(0.05, min([self.resync] + pending))

    def _bind(self, pods: list[Json], nodes: list[Json]) -> None:
        for pod, target in schedule(pods, nodes):
            bound = dict(pod, spec=dict(pod.get("spec") or {}, nodeName=target))
            try:
                self.store.update(bound)
                pod.setdefault("spec", {})["nodeName"] = target  # this pass sees the binding
                log.info("bound %s/%s to %s", *P.pod_key(pod), target)
            except Exception as e:  # Conflict: someone else changed it; next pass re-reads
                log.info("binding %s/%s lost: %s", *P.pod_key(pod), e)
                self._wake.set()

    def observe(self) -> dict[str, Observed]:
        out = {}
        for uid, st in P.load_states(self.state_dir).items():
            alive = {name: P.is_alive(cs.pid, cs.start_time) for name, cs in st.containers.items()}
            out[uid] = Observed(st, netns_mod.exists(st.netns), alive)
        return out

    def execute(self, actions: list[Action], desired: dict[str, Json],
                actual: dict[str, Observed]) -> None:
        teardowns = [a for a in actions if isinstance(a, Teardown)]
        others = [a for a in actions if not isinstance(a, Teardown)]

        def run(a: Action) -> None:
            try:
                if isinstance(a, Teardown):
                    self.teardown(actual[a.uid].state, a.reason)
                elif isinstance(a, Setup):
                    self.setup(desired[a.uid])
                elif isinstance(a, StartContainers):
                    self.start_containers(desired[a.uid], actual[a.uid].state, a.names)
                elif isinstance(a, Adopt):
                    log.info("adopted pod %s/%s", actual[a.uid].state.namespace,
                             actual[a.uid].state.name)
                    self.known.add(a.uid)
            except Exception:
                log.exception("%s failed", a)
                self._fail(a.uid)

        for batch in (teardowns, others):
            if len(batch) <= 1 or self.workers <= 1:
                for a in batch:
                    run(a)
            else:
                with ThreadPoolExecutor(self.workers, thread_name_prefix="runner") as pool:
                    list(pool.map(run, batch))

    def _fail(self, key: str) -> None:
        n = self.failures[key] = self.failures.get(key, 0) + 1
        self.not_before[key] = self.clock() + backoff_delay(n)

    def _forget(self, uid: str) -> None:
        for d in (self.errors, self.failures, self.not_before):
            for k in [k for k in d if k == uid or k.startswith(uid + "/")]:
                del d[k]
        self.known.discard(uid)
        self.ready_files.pop(uid, None)

    # ---- setup / teardown
    def invocation(self, pod: Json, ns_name: str) -> P.CNIInvocation:
        caps: Json = {}
        mappings = P.port_mappings(pod)
        if mappings:
            caps["portMappings"] = mappings
        return P.CNIInvocation(conflist=self.conflist, container_id=P.container_id(pod),
                               netns=netns_mod.path(ns_name), ifname=P.IFNAME,
                               args=P.cni_args(pod), capability_args=caps)

    def setup(self, pod: Json) -> None:
        uid = P.pod_uid(pod)
        ns, name = P.pod_key(pod)
        ns_name = P.netns_name(self.node, ns, name)
        inv = self.invocation(pod, ns_name)
        st = P.PodState(uid=uid, namespace=ns, name=name, netns=ns_name, cni=asdict(inv))
        P.save_state(self.state_dir, st)   # first, so a crash from here on is cleaned up
        if netns_mod.exists(ns_name):
            netns_mod.remove(ns_name)      # a leftover without state: start clean
        netns_mod.create(ns_name)
        _loopback_up(ns_name)
        try:
            result = P.cni_add(inv, self.cni_bin, self.exec_plugin)
        except Exception as e:
            log.warning("CNI ADD for %s/%s failed: %s", ns, name, e)
            self.errors[uid] = str(e)
            self._fail(uid)
            self._undo_add(st)
            return
        st.result = result
        P.save_state(self.state_dir, st)
        self.errors.pop(uid, None)
        self.failures.pop(uid, None)
        self.not_before.pop(uid, None)
        self.start_containers(pod, st, tuple(container_names(pod)), initial=True)
        self.known.add(uid)
        self._wait_ready(uid)
        log.info("pod %s/%s running in %s with %s", ns, name, ns_name, st.ips)

    def _undo_add(self, st: P.PodState) -> None:
        try:
            P.cni_del(st.invocation(), self.cni_bin, None, self.exec_plugin)
        except Exception as e:
            log.warning("CNI DEL after failed ADD of %s/%s: %s", st.namespace, st.name, e)
            return  # keep the state: the next pass tears down (and retries DEL)
        netns_mod.remove(st.netns)
        P.remove_state(self.state_dir, st.uid)

    def start_containers(self, pod: Json, st: P.PodState, names: tuple[str, ...],
                         initial: bool = False) -> None:
        specs = {n: c for n, c in zip(container_names(pod), (pod.get("spec") or {}).get("containers") or [])}
        d = P.pod_dir(self.state_dir, st.uid)
        ip = st.ips[0] if st.ips else ""
        for name in names:
            c = specs[name]
            argv = P.container_argv(c, st.name)
            prev = st.containers.get(name) or P.ContainerState()
            ready_file = None
            if not c.get("command"):
                ready_file = os.path.join(d, f"{name}.ready")
                try:
                    os.unlink(ready_file)
                except FileNotFoundError:
                    pass
                argv += ["--ready-file", ready_file]
            pid, start = P.start_process(argv, P.container_env(c, pod, ip), st.netns,
                                         os.path.join(d, f"{name}.log"))
            restarts = prev.restarts + (0 if initial or not prev.pid else 1)
            st.containers[name] = P.ContainerState(pid=pid, start_time=start,
                                                   restarts=restarts, ready_file=ready_file)
            if not initial:
                self._fail(f"{st.uid}/{name}")   # a restart: next one waits longer
            log.info("started %s/%s container %s: pid %d", st.namespace, st.name, name, pid)
        P.save_state(self.state_dir, st)

    def _wait_ready(self, uid: str) -> None:
        st = P.load_states(self.state_dir).get(uid)
        if st is None:
            return
        deadline = time.monotonic() + READY_WAIT
        for cs in st.containers.values():
            while cs.ready_file and not os.path.exists(cs.ready_file):
                if time.monotonic() > deadline or not P.is_alive(cs.pid, cs.start_time):
                    return
                time.sleep(0.01)

    def teardown(self, st: P.PodState, reason: str) -> None:
        log.info("tearing down pod %s/%s (%s)", st.namespace, st.name, reason)
        for cs in st.containers.values():
            P.stop_process(cs.pid, cs.start_time, self.grace)
        st.containers = {}
        P.save_state(self.state_dir, st)
        if st.cni:
            P.cni_del(st.invocation(), self.cni_bin, st.result, self.exec_plugin)  # raises: retried
        netns_mod.remove(st.netns)
        P.remove_state(self.state_dir, st.uid)
        self.known.discard(st.uid)

    # ---- status
    def sync_status(self, desired: dict[str, Json], actual: dict[str, Observed]) -> None:
        host_ip = self.host_ip()
        for uid, pod in sorted(desired.items()):
            obs = actual.get(uid)
            if obs is not None and obs.state.result is not None and obs.netns_ok:
                ready = {n: (not cs.ready_file or os.path.exists(cs.ready_file))
                         for n, cs in obs.state.containers.items()}
                want = running_status(pod, obs, host_ip, ready)
            else:
                want = pending_status(self.errors.get(uid))
            changes = status_changes(pod.get("status"), want)
            if not changes:
                continue
            ns, name = P.pod_key(pod)
            try:
                self.store.patch_status("pods", ns, name, changes)
            except Exception as e:  # deleted meanwhile, or the store is away: next pass
                log.info("status of %s/%s not written: %s", ns, name, e)


def _loopback_up(ns_name: str) -> None:
    from podnet import rtnl
    with rtnl.RTNL(netns=ns_name) as h:
        h.set_link("lo", up=True)


def detect_node_ip() -> str | None:
    """The node's address: eth0's first global IPv4, else any global IPv4 (this netns)."""
    import socket

    from podnet import rtnl
    try:
        with rtnl.RTNL() as h:
            links = {l.index: l.name for l in h.links()}
            addrs = [a for a in h.addrs(family=socket.AF_INET) if a.scope == 0]
    except OSError:
        return None
    addrs.sort(key=lambda a: (links.get(a.index) != "eth0", a.index))
    return addrs[0].address if addrs else None
