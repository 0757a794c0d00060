"""The pod runner on a "node" namespace with podnet's CNI plugins (bridge + host-local +
portmap through a conflist): pods run and answer each other, commands run in the pod netns,
deletion cleans up, and a killed runner's successor adopts its pods untouched.

Two set-ups: the runner in-process against the in-memory store, and the real thing —
``podnet runner`` as a process against a real etcd, killed with SIGKILL and restarted.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time


from podnet import netns, pods
from podnet.cli_pods import run_matrix, running_pods
from podnet.probe import probe
from podnet.runner import Runner
from tests.conftest import ns_run
from tests.fakes.objects import object_store, pod
from tests.integration.flannel.conftest import etcd  # noqa: F401  (fixture)

SUBNET, GATEWAY = "10.244.7.0/24", "10.244.7.1"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def conflist(tmp_path) -> str:
    conf = {"cniVersion": "1.0.0", "name": "podnet-test", "plugins": [
        {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
         "hairpinMode": True,
         "ipam": {"type": "host-local", "subnet": SUBNET, "gateway": GATEWAY,
                  "dataDir": str(tmp_path / "ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}
    path = tmp_path / "10-podnet.conflist"
    path.write_text(json.dumps(conf))
    return str(path)


def reservations(tmp_path) -> set[str]:
    d = tmp_path / "ipam" / "podnet-test"
    if not d.exists():
        return set()
    return {f.name for f in d.iterdir() if f.name[0].isdigit()}


def wait_for(what: str, fn, timeout: float = 60.0, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


def pids_of(state_dir: str) -> dict[tuple[str, str], tuple[int, int | None]]:
    return {(st.name, c): (cs.pid, cs.start_time)
            for st in pods.load_states(state_dir).values() for c, cs in st.containers.items()}


def cleanup_node(node_ns: str, state_dir: str, cni_bin: str) -> None:
    """Stop by PID, CNI DEL and remove the netns of whatever pods are left (test teardown)."""
    for st in pods.load_states(state_dir).values():
        for cs in st.containers.values():
            pods.stop_process(cs.pid, cs.start_time, grace=1)
        try:
            with netns.entered(node_ns):
                pods.cni_del(st.invocation(), cni_bin, st.result)
        except Exception:
            pass
        netns.remove(st.netns)


class InProcessRunner:
    """A Runner in a thread inside the node namespace; ``kill()`` stops it without any
    cleanup (what SIGKILL leaves), so another instance can adopt."""

    def __init__(self, store, node_ns: str, cni_bin: str, conf: str, state_dir: str) -> None:
        self.runner = Runner(store, "n1", cni_bin, conf, state_dir, resync=0.5, grace=1.0,
                             node_ip=GATEWAY)
        self.node_ns = node_ns
        self.stop = threading.Event()
        self.error: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            with netns.entered(self.node_ns):
                self.runner.run(self.stop)
        except BaseException as e:
            self.error.append(e)

    def kill(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive() and not self.error


def running(store, names: list[str]):
    got = {}
    for n in names:
        p = store.get("pods", "default", n)
        st = (p or {}).get("status") or {}
        ready = any(c.get("type") == "Ready" and c.get("status") == "True"
                    for c in st.get("conditions") or [])
        if st.get("phase") != "Running" or not st.get("podIP") or not ready:
            return None
        got[n] = p
    return got


def test_pods_run_answer_restart_adopt_and_clean_up(netns_factory, cni_dirs, tmp_path):
    cni_bin, _ = cni_dirs
    node_ns = netns_factory("node")
    state_dir = str(tmp_path / "state")
    conf = conflist(tmp_path)
    store = object_store()
    out = tmp_path / "c-addr"
    store.create(pod("a", containers=[{"name": "srv", "ports": [
        {"containerPort": 8080, "hostPort": 18080},
        {"containerPort": 8080, "protocol": "UDP"}]}]))
    store.create(pod("b"))
    store.create(pod("c", containers=[{"name": "sh", "command": ["sh", "-c"], "args": [
        f'ip -4 -o addr show eth0 > {out}.tmp; mv {out}.tmp {out}; echo "$POD_NAME $MYVAR"; '
        "exec sleep 1000"], "env": [{"name": "MYVAR", "value": "hello"}]}]))
    r1 = r2 = None
    try:
        r1 = InProcessRunner(store, node_ns, cni_bin, conf, state_dir)
        got = wait_for("pods running", lambda: running(store, ["a", "b", "c"]))
        assert all(p["spec"]["nodeName"] == "n1" for p in got.values())   # scheduled
        assert store.get("nodes", None, "n1") is not None                  # registered
        ips = {n: p["status"]["podIP"] for n, p in got.items()}
        assert len(set(ips.values())) == 3 and all(ip.startswith("10.244.7.") for ip in ips.values())
        assert got["a"]["status"]["hostIP"] == GATEWAY
        ns_a = pods.netns_name("n1", "default", "a")
        ns_b = pods.netns_name("n1", "default", "b")
        assert netns.exists(ns_a) and netns.exists(ns_b)

        # serve-hostname answers TCP and UDP from the other pod
        assert probe(ns_a, ips["b"], 8080, "TCP").answer == "b"
        assert probe(ns_a, ips["b"], 8080, "UDP").answer == "b"
        assert probe(ns_b, ips["a"], 8080, "TCP").answer == "a"
        # hostPort through the portmap plugin (capability args reached it)
        assert probe(node_ns, GATEWAY, 18080, "TCP").answer == "a"
        # the command ran inside the pod's netns, with the pod's env
        wait_for("command output", out.exists)
        assert f"inet {ips['c']}/24" in out.read_text()
        log = tmp_path / "state" / "pods" / got["c"]["metadata"]["uid"] / "sh.log"
        wait_for("container log", lambda: "c hello" in log.read_text())
        # probe-matrix over the Running pods
        targets = running_pods(store.list("pods")[0])
        results = run_matrix([t for t in targets if t[0] != "default/c"], 8080, "TCP", 2.0)
        assert len(results) == 4 and all(r.ok for r in results.values())

        # runner "killed" (no cleanup), a container dies meanwhile, a new runner adopts
        r1.kill()
        before = pids_of(state_dir)
        dead_pid, dead_start = before[("b", "srv")]
        pods.stop_process(dead_pid, dead_start, grace=1)
        r2 = InProcessRunner(store, node_ns, cni_bin, conf, state_dir)
        uids = {p["metadata"]["uid"] for p in got.values()}
        wait_for("adoption", lambda: uids <= r2.runner.known)
        restarted = wait_for("b restarted", lambda: (
            pids_of(state_dir)[("b", "srv")][0] != dead_pid and
            pods.is_alive(*pids_of(state_dir)[("b", "srv")]) and pids_of(state_dir)))
        for key in (("a", "srv"), ("c", "sh")):
            assert restarted[key] == before[key] and pods.is_alive(*before[key])
        wait_for("restart count", lambda: (store.get("pods", "default", "b")["status"]
                                           ["containerStatuses"][0]["restartCount"] == 1))
        assert wait_for("b answers", lambda: probe(ns_a, ips["b"], 8080, "TCP").answer == "b")
        assert probe(ns_b, ips["a"], 8080, "UDP").answer == "a"

        # delete → processes gone by PID, netns gone, CNI DEL released the address
        assert ips["a"] in reservations(tmp_path)
        store.delete("pods", "default", "a")
        uid_a = got["a"]["metadata"]["uid"]
        wait_for("teardown", lambda: not os.path.exists(pods.pod_dir(state_dir, uid_a)))
        assert not pods.is_alive(*before[("a", "srv")])
        assert not netns.exists(ns_a)
        assert ips["a"] not in reservations(tmp_path) and ips["b"] in reservations(tmp_path)
        assert "CNI-DN-" not in ns_run(node_ns, ["iptables-save", "-t", "nat"]).stdout
        assert probe(ns_b, GATEWAY, 18080, "TCP", timeout=0.5).error == "refused"
    finally:
        for r in (r1, r2):
            if r is not None:
                r.stop.set()
                r.thread.join(30)
        cleanup_node(node_ns, state_dir, cni_bin)
    assert not any(n.startswith("pn-n1-") for n in netns.list_names())


def test_cni_failure_leaves_pod_pending_with_the_error(netns_factory, cni_dirs, tmp_path):
    """A subnet with room for no pod: ADD fails, the pod stays Pending naming the CNI error,
    and nothing is left behind (no netns, no state, no reservation)."""
    cni_bin, _ = cni_dirs
    node_ns = netns_factory("node")
    state_dir = str(tmp_path / "state")
    conf = json.loads(open(conflist(tmp_path)).read())
    conf["plugins"][0]["ipam"].update(subnet="10.244.8.0/30", gateway="10.244.8.1",
                                      rangeStart="10.244.8.1", rangeEnd="10.244.8.1")
    path = tmp_path / "full.conflist"
    path.write_text(json.dumps(conf))
    store = object_store()
    store.create(pod("x", node_name="n1"))
    r = None
    try:
        r = InProcessRunner(store, node_ns, cni_bin, str(path), state_dir)
        st = wait_for("CNI error in status", lambda: (
            (store.get("pods", "default", "x").get("status") or {}).get("message")))
        p = store.get("pods", "default", "x")
        assert p["status"]["phase"] == "Pending" and "CNI ADD failed" in st
        assert "bridge" in st and not p["status"].get("podIP")
        assert not netns.exists(pods.netns_name("n1", "default", "x"))
        assert pods.load_states(state_dir) == {}
        assert reservations(tmp_path) == set()
    finally:
        if r is not None:
            r.stop.set()
            r.thread.join(30)
        cleanup_node(node_ns, state_dir, cni_bin)


# --- the real thing: `podnet runner` against etcd, SIGKILLed and restarted --------------



def test_runner_process_sigkilled_and_restarted_keeps_pods(etcd, cni_dirs, tmp_path):
    from podnet.etcd import Store
    from podnet.store import ObjectStore

    cni_bin, _ = cni_dirs
    node_ns = etcd.client_ns            # the "node" is where etcd is reachable
    state_dir = str(tmp_path / "state")
    conf = conflist(tmp_path)
    argv = [sys.executable, "-m", "podnet", "-v", "--etcd-endpoints", etcd.url, "runner",
            "--node", "n1", "--cni-bin", cni_bin, "--cni-conf", conf, "--state-dir", state_dir,
            "--resync", "1", "--node-ip", GATEWAY]
    env = {"PATH": pods.CLEAN_PATH, "PYTHONPATH": REPO, "PODNET_CNI_STANDALONE": "1"}
    log = str(tmp_path / "runner.log")
    procs: list[tuple[int, int | None]] = []
    with etcd.client():
        store = ObjectStore(Store(etcd.url))
        store.create(pod("a"))
        store.create(pod("b"))
    try:
        procs.append(pods.start_process(argv, env, node_ns, log))
        with etcd.client():
            got = wait_for("pods running", lambda: running(store, ["a", "b"]))
        ips = {n: p["status"]["podIP"] for n, p in got.items()}
        ns_a = pods.netns_name("n1", "default", "a")
        assert probe(ns_a, ips["b"], 8080, "UDP").answer == "b"
        before = pids_of(state_dir)

        # the CLI: exec, probe and probe-matrix find the pods' namespaces from the store
        def podnet(*cli: str) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-m", "podnet", "--etcd-endpoints", etcd.url,
                                   *cli], capture_output=True, text=True, timeout=60,
                                  preexec_fn=netns.preexec(node_ns))
        r = podnet("exec", "a", "--", "ip", "-4", "-o", "addr", "show", "eth0")
        assert r.returncode == 0 and f"inet {ips['a']}/24" in r.stdout, r.stderr
        assert podnet("exec", "a", "--", "sh", "-c", "exit 3").returncode == 3
        r = podnet("probe", "default/a", "default/b", "--port", "8080", "--protocol", "udp")
        assert r.returncode == 0 and r.stdout.startswith(
            f"default/a -> default/b ({ips['b']}):8080/UDP ok (answer: b, "), r.stdout + r.stderr
        r = podnet("probe", "default/b", ips["a"], "--port", "9", "--timeout", "0.5")
        assert r.returncode == 1 and "FAILED (refused)" in r.stdout, r.stdout + r.stderr
        r = podnet("probe-matrix", "--port", "8080", "-o", "json")
        matrix = json.loads(r.stdout)
        assert r.returncode == 0 and matrix["allReachable"] and len(matrix["results"]) == 4
        assert {(x["from"], x["to"], x["answer"]) for x in matrix["results"]} >= {
            ("default/a", "default/b", "b"), ("default/b", "default/a", "a")}
        r = podnet("probe-matrix", "--port", "8081", "--protocol", "UDP", "--timeout", "0.3")
        assert r.returncode == 1 and "✗" in r.stdout and "0/4 reachable" in r.stdout

        os.kill(procs[0][0], signal.SIGKILL)
        wait_for("runner dead", lambda: not pods.is_alive(*procs[0]))
        assert all(pods.is_alive(*p) for p in before.values())     # pods outlive the runner
        procs.append(pods.start_process(argv, env, node_ns, log))
        wait_for("adopted", lambda: open(log).read().count("adopted pod") >= 2)
        assert pids_of(state_dir) == before
        assert all(pods.is_alive(*p) for p in before.values())
        assert probe(ns_a, ips["b"], 8080, "TCP").answer == "b"
        with etcd.client():
            assert running(store, ["a", "b"])["a"]["status"]["podIP"] == ips["a"]

        # SIGTERM: the runner exits 0 and leaves the pods running (like the kubelet)
        os.kill(procs[1][0], signal.SIGTERM)
        wait_for("runner exit", lambda: not pods.is_alive(*procs[1]))
        assert all(pods.is_alive(*p) for p in before.values())
    finally:
        for pid, start in procs:
            pods.stop_process(pid, start, grace=2)
        cleanup_node(node_ns, state_dir, cni_bin)
    assert not any(n.startswith("pn-n1-") for n in netns.list_names())
