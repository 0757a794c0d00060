"""The pod runner's pure parts: naming, scheduling, desired-vs-actual decisions, status, and
CNI conflist chaining (with fake plugin executables that record what they were given)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

from podnet import pods as P
from podnet import runner as R
from tests.fakes.objects import node, object_store, pod


def with_uid(p: dict, uid: str) -> dict:
    p["metadata"]["uid"] = uid
    return p


# --- names -------------------------------------------------------------------------------

def test_netns_name_short_is_readable():
    assert P.netns_name("node1", "default", "web") == "pn-node1-default-web"


def test_netns_name_long_is_bounded_unique_and_deterministic():
    a = P.netns_name("node-" + "x" * 40, "team-" + "y" * 50, "pod-a" + "z" * 60)
    b = P.netns_name("node-" + "x" * 40, "team-" + "y" * 50, "pod-b" + "z" * 60)
    assert len(a) <= 60 and len(b) <= 60
    assert a != b
    assert a == P.netns_name("node-" + "x" * 40, "team-" + "y" * 50, "pod-a" + "z" * 60)
    assert a.startswith("pn-node-")


# --- scheduling --------------------------------------------------------------------------

def test_schedule_fewest_pods_then_name_skipping_not_ready():
    nodes = [node("n2"), node("n1"), node("n3", ready=False)]
    pods = [pod("bound", node_name="n1"), pod("c"), pod("a"), pod("b")]
    got = {p["metadata"]["name"]: n for p, n in R.schedule(pods, nodes)}
    # n1 has one pod already: a → n2 (0 pods), b → n1 (1-1 tie, name), c → n2
    assert got == {"a": "n2", "b": "n1", "c": "n2"}


def test_schedule_without_ready_nodes_binds_nothing():
    assert R.schedule([pod("a")], [node("n1", ready=False)]) == []


def test_only_first_ready_node_schedules():
    nodes = [node("b"), node("a", ready=False), node("c")]
    assert R.is_scheduler("b", nodes)
    assert not R.is_scheduler("c", nodes)
    assert not R.is_scheduler("a", nodes)


def test_binding_race_only_one_writer_wins():
    store = object_store()
    created = store.create(pod("p"))
    first = dict(created, spec=dict(created["spec"], nodeName="n1"))
    second = dict(created, spec=dict(created["spec"], nodeName="n2"))
    store.update(first)
    with pytest.raises(Exception) as exc:
        store.update(second)
    assert "modified" in str(exc.value)
    assert store.get("pods", "default", "p")["spec"]["nodeName"] == "n1"


# --- decisions ---------------------------------------------------------------------------

def state(uid: str, name: str = "p", result: dict | None = None, containers=None) -> P.PodState:
    return P.PodState(uid=uid, namespace="default", name=name,
                      netns=P.netns_name("n1", "default", name),
                      result={"ips": [{"address": "10.0.0.2/24"}]} if result is None else result,
                      containers={"srv": P.ContainerState(pid=100, start_time=5)}
                      if containers is None else containers)


def test_new_pod_is_set_up_and_deleted_pod_torn_down():
    desired = {"u1": with_uid(pod("a", node_name="n1"), "u1")}
    actual = {"u9": R.Observed(state("u9", "gone"), True, {"srv": True})}
    acts = R.decide(desired, actual, set(), 0.0, {})
    assert acts == [R.Teardown("u9", acts[0].reason), R.Setup("u1")]


def test_intact_pod_is_adopted_once_then_left_alone():
    desired = {"u1": with_uid(pod("p", node_name="n1"), "u1")}
    actual = {"u1": R.Observed(state("u1"), True, {"srv": True})}
    assert R.decide(desired, actual, set(), 0.0, {}) == [R.Adopt("u1")]
    assert R.decide(desired, actual, {"u1"}, 0.0, {}) == []


def test_dead_container_restarted_unless_policy_never_or_backing_off():
    actual = {"u1": R.Observed(state("u1"), True, {"srv": False})}
    always = {"u1": with_uid(pod("p", node_name="n1"), "u1")}
    never = {"u1": with_uid(pod("p", node_name="n1", restartPolicy="Never"), "u1")}
    assert R.decide(always, actual, {"u1"}, 10.0, {}) == [R.StartContainers("u1", ("srv",))]
    assert R.decide(never, actual, {"u1"}, 10.0, {}) == []
    assert R.decide(always, actual, {"u1"}, 10.0, {"u1/srv": 12.0}) == []
    assert R.decide(always, actual, {"u1"}, 13.0, {"u1/srv": 12.0}) == [R.StartContainers("u1", ("srv",))]


def test_container_never_started_is_started_even_with_policy_never():
    desired = {"u1": with_uid(pod("p", node_name="n1", restartPolicy="Never"), "u1")}
    actual = {"u1": R.Observed(state("u1", containers={}), True, {})}
    assert R.decide(desired, actual, {"u1"}, 0.0, {}) == [R.StartContainers("u1", ("srv",))]


def test_lost_netns_or_unfinished_add_means_start_over():
    desired = {"u1": with_uid(pod("p", node_name="n1"), "u1")}
    lost = {"u1": R.Observed(state("u1"), False, {"srv": True})}
    acts = R.decide(desired, lost, {"u1"}, 0.0, {})
    assert [type(a) for a in acts] == [R.Teardown, R.Setup]
    unfinished = {"u1": R.Observed(state("u1", result={}), True, {})}
    unfinished["u1"].state.result = None
    assert [type(a) for a in R.decide(desired, unfinished, set(), 0.0, {})] == [R.Teardown, R.Setup]


def test_setup_waits_for_backoff_after_cni_failure():
    desired = {"u1": with_uid(pod("p", node_name="n1"), "u1")}
    assert R.decide(desired, {}, set(), 5.0, {"u1": 6.0}) == []
    assert R.decide(desired, {}, set(), 6.0, {"u1": 6.0}) == [R.Setup("u1")]
    assert R.backoff_delay(1) == 1.0 and R.backoff_delay(3) == 4.0 and R.backoff_delay(99) == 30.0


def test_recreated_pod_same_name_tears_down_old_uid_first():
    desired = {"new": with_uid(pod("p", node_name="n1"), "new")}
    actual = {"old": R.Observed(state("old"), True, {"srv": True})}
    acts = R.decide(desired, actual, {"old"}, 0.0, {})
    assert acts[0] == R.Teardown("old", acts[0].reason) and acts[1] == R.Setup("new")


# --- status ------------------------------------------------------------------------------

def test_running_status_then_nothing_to_write():
    p = with_uid(pod("p", node_name="n1"), "u1")
    obs = R.Observed(state("u1"), True, {"srv": True})
    want = R.running_status(p, obs, "192.168.0.1", {"srv": True})
    assert want["phase"] == "Running" and want["podIP"] == "10.0.0.2"
    assert want["podIPs"] == [{"ip": "10.0.0.2"}] and want["hostIP"] == "192.168.0.1"
    assert {"type": "Ready", "status": "True"} in want["conditions"]
    current = dict(want)
    assert R.status_changes(current, R.running_status(p, obs, "192.168.0.1", {"srv": True})) == {}


def test_not_ready_until_builtin_server_bound():
    p = with_uid(pod("p", node_name="n1"), "u1")
    obs = R.Observed(state("u1"), True, {"srv": True})
    want = R.running_status(p, obs, None, {"srv": False})
    assert {"type": "Ready", "status": "False"} in want["conditions"]


def test_pending_status_names_the_cni_error():
    st = R.pending_status("plugin bridge (ADD) failed: no IP addresses available")
    assert st["phase"] == "Pending" and st["podIP"] is None
    ready = [c for c in st["conditions"] if c["type"] == "Ready"][0]
    assert ready["status"] == "False" and "no IP addresses available" in ready["message"]
    assert "no IP addresses available" in st["message"]


# --- state files -------------------------------------------------------------------------

def test_state_roundtrip_lists_containers_for_other_readers(tmp_path):
    st = state("u1", containers={"a": P.ContainerState(pid=7, start_time=9, restarts=2),
                                 "b": P.ContainerState(pid=8, start_time=10)})
    P.save_state(str(tmp_path), st)
    raw = json.loads((tmp_path / "pods" / "u1" / "state.json").read_text())
    assert {c["name"]: c["pid"] for c in raw["containers"]} == {"a": 7, "b": 8}
    back = P.load_states(str(tmp_path))["u1"]
    assert back == st
    P.remove_state(str(tmp_path), "u1")
    assert P.load_states(str(tmp_path)) == {}


# --- processes ---------------------------------------------------------------------------

def test_is_alive_checks_start_time_and_treats_exited_as_dead():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = P.proc_start_time(proc.pid)
        assert start is not None
        assert P.is_alive(proc.pid, start)
        assert not P.is_alive(proc.pid, start + 1)      # same PID, another process
        proc.kill()
        proc.wait()
        assert not P.is_alive(proc.pid, start)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_builtin_server_argv_per_protocol():
    c = {"name": "srv", "ports": [{"containerPort": 80}, {"containerPort": 53, "protocol": "UDP"}]}
    argv = P.container_argv(c, "web-1", python="py")
    assert argv == ["py", "-m", "podnet.serve_hostname", "--name", "web-1", "--tcp", "80",
                    "--udp", "53"]
    assert P.container_argv({"command": ["sh", "-c"], "args": ["echo hi"]}, "x") == ["sh", "-c", "echo hi"]


def test_port_mappings_from_host_ports():
    p = pod("p", containers=[{"name": "a", "ports": [
        {"containerPort": 80, "hostPort": 8080},
        {"containerPort": 53, "hostPort": 5353, "protocol": "UDP", "hostIP": "10.1.1.1"},
        {"containerPort": 9000}]}])
    assert P.port_mappings(p) == [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "10.1.1.1"}]


# --- conflist chaining with fake plugins -------------------------------------------------

FAKE_PLUGIN = r"""#!{python}
import json, os, sys
conf = json.load(sys.stdin)
log = {log!r}
with open(log, "a") as f:
    f.write(json.dumps({{"plugin": {name!r}, "cmd": os.environ["CNI_COMMAND"],
                         "args": os.environ["CNI_ARGS"], "netns": os.environ["CNI_NETNS"],
                         "path": os.environ["CNI_PATH"], "conf": conf}}) + "\n")
if os.environ["CNI_COMMAND"] == "ADD":
    if {fail!r}:
        print(json.dumps({{"cniVersion": "1.0.0", "code": 11, "msg": "no more addresses"}}))
        sys.exit(1)
    prev = conf.get("prevResult") or {{"cniVersion": "1.0.0", "ips": [], "interfaces": []}}
    prev = dict(prev, interfaces=prev.get("interfaces", []) + [{{"name": {name!r}}}])
    if not prev["ips"]:
        prev["ips"] = [{{"address": "10.9.0.5/24"}}]
    print(json.dumps(prev))
"""


def fake_plugins(tmp_path, fail: str = "") -> tuple[str, str]:
    bindir, log = tmp_path / "bin", tmp_path / "calls.jsonl"
    bindir.mkdir()
    for name in ("first", "second", "mapper"):
        f = bindir / name
        f.write_text(FAKE_PLUGIN.format(python=sys.executable, log=str(log), name=name,
                                        fail=name == fail))
        f.chmod(f.stat().st_mode | stat.S_IXUSR)
    return str(bindir), str(log)


def calls(log: str) -> list[dict]:
    if not os.path.exists(log):
        return []
    with open(log) as f:
        return [json.loads(line) for line in f]


CONFLIST = {"cniVersion": "1.0.0", "name": "testnet", "plugins": [
    {"type": "first", "bridge": "cni0"},
    {"type": "second"},
    {"type": "mapper", "capabilities": {"portMappings": True}},
]}


def invocation(**kw) -> P.CNIInvocation:
    args = dict(conflist=CONFLIST, container_id="abc", netns="/run/netns/x",
                args="K8S_POD_NAMESPACE=default;K8S_POD_NAME=p",
                capability_args={"portMappings": [{"hostPort": 80, "containerPort": 8080,
                                                   "protocol": "tcp"}], "bandwidth": {}})
    args.update(kw)
    return P.CNIInvocation(**args)


def test_add_chains_prev_result_and_restricts_runtime_config(tmp_path):
    bindir, log = fake_plugins(tmp_path)
    result = P.cni_add(invocation(), bindir)
    assert [i["name"] for i in result["interfaces"]] == ["first", "second", "mapper"]
    assert P.result_ips(result) == ["10.9.0.5"]
    by = {c["plugin"]: c for c in calls(log)}
    assert "prevResult" not in by["first"]["conf"]
    assert [i["name"] for i in by["second"]["conf"]["prevResult"]["interfaces"]] == ["first"]
    assert by["first"]["conf"]["name"] == "testnet" and by["first"]["conf"]["cniVersion"] == "1.0.0"
    assert by["first"]["conf"]["bridge"] == "cni0"
    assert "runtimeConfig" not in by["first"]["conf"]          # no capability declared
    assert by["mapper"]["conf"]["runtimeConfig"] == {"portMappings": [
        {"hostPort": 80, "containerPort": 8080, "protocol": "tcp"}]}
    assert all(c["path"] == bindir and "K8S_POD_NAME=p" in c["args"] for c in calls(log))


def test_del_runs_in_reverse_with_cached_result(tmp_path):
    bindir, log = fake_plugins(tmp_path)
    cached = {"cniVersion": "1.0.0", "ips": [{"address": "10.9.0.5/24"}], "interfaces": []}
    P.cni_del(invocation(), bindir, cached)
    dels = [c for c in calls(log) if c["cmd"] == "DEL"]
    assert [c["plugin"] for c in dels] == ["mapper", "second", "first"]
    assert all(c["conf"]["prevResult"] == cached for c in dels)


def test_failing_plugin_is_named_with_its_message(tmp_path):
    bindir, log = fake_plugins(tmp_path, fail="second")
    with pytest.raises(P.CNIError) as exc:
        P.cni_add(invocation(), bindir)
    assert exc.value.plugin == "second" and exc.value.code == 11
    assert "no more addresses" in str(exc.value) and "second" in str(exc.value)
    assert "mapper" not in {c["plugin"] for c in calls(log)}


def test_missing_plugin_is_an_error(tmp_path):
    bindir, _ = fake_plugins(tmp_path)
    conf = dict(CONFLIST, plugins=[{"type": "nope"}])
    with pytest.raises(P.CNIError, match='failed to find plugin "nope"'):
        P.cni_add(invocation(conflist=conf), bindir)


def test_load_conflist_wraps_single_conf(tmp_path):
    f = tmp_path / "10-one.conf"
    f.write_text(json.dumps({"cniVersion": "0.4.0", "name": "one", "type": "bridge"}))
    conf = P.load_conflist(str(f))
    assert conf["name"] == "one" and [p["type"] for p in conf["plugins"]] == ["bridge"]
    bad = tmp_path / "bad.conflist"
    bad.write_text(json.dumps({"name": "x", "plugins": []}))
    with pytest.raises(ValueError):
        P.load_conflist(str(bad))
