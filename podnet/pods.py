"""What the pod runner does to one pod on its node: names, CNI through a conflist, processes
and the state files that let a restarted runner adopt what it left running.

Pure helpers (naming, config building, result parsing) sit next to the few effects (exec a
plugin, start/stop a process, read/write ``state.json``) so that the runner's decisions in
:mod:`podnet.runner` can be tested against fakes of everything here.

State layout (one directory per pod, named by UID)::

    <state-dir>/pods/<uid>/state.json      # PodState (CNI config + result, PIDs)
    <state-dir>/pods/<uid>/<container>.log # the container's stdout + stderr
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from podnet import netns

log = logging.getLogger(__name__)

NETNS_MAX = 60
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
IFNAME = "eth0"

Json = dict[str, Any]


# --- names -------------------------------------------------------------------------------

def _sanitize(part: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", part)


def netns_name(node: str, namespace: str, name: str) -> str:
    """``pn-<node>-<ns>-<name>``, or a prefix of it plus a hash of the whole when that is
    longer than 60 characters: deterministic, so the CLI computes it without the runner."""
    full = f"pn-{_sanitize(node)}-{_sanitize(namespace)}-{_sanitize(name)}"
    if len(full) <= NETNS_MAX:
        return full
    digest = hashlib.sha256(f"{node}\0{namespace}\0{name}".encode()).hexdigest()[:12]
    return f"{full[:NETNS_MAX - 13]}-{digest}"


def pod_uid(pod: Json) -> str:
    """metadata.uid, or a stable stand-in derived from the pod's key when it has none."""
    meta = pod.get("metadata") or {}
    uid = meta.get("uid")
    if uid:
        return str(uid)
    key = f"{meta.get('namespace', 'default')}/{meta.get('name', '')}"
    return "nouid-" + hashlib.sha256(key.encode()).hexdigest()[:24]


def pod_key(pod: Json) -> tuple[str, str]:
    meta = pod.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name") or ""


def container_id(pod: Json) -> str:
    """The sandbox ("infra container") id passed as CNI_CONTAINERID."""
    return re.sub(r"[^A-Za-z0-9]", "", pod_uid(pod)) or "pod"


def cni_args(pod: Json) -> str:
    ns, name = pod_key(pod)
    return (f"IgnoreUnknown=1;K8S_POD_NAMESPACE={ns};K8S_POD_NAME={name};"
            f"K8S_POD_INFRA_CONTAINER_ID={container_id(pod)}")


def port_mappings(pod: Json) -> list[Json]:
    """``runtimeConfig.portMappings`` for every container port that declares a hostPort."""
    out = []
    for c in (pod.get("spec") or {}).get("containers") or []:
        for p in c.get("ports") or []:
            if not p.get("hostPort"):
                continue
            m = {"hostPort": int(p["hostPort"]), "containerPort": int(p["containerPort"]),
                 "protocol": (p.get("protocol") or "TCP").lower()}
            if p.get("hostIP"):
                m["hostIP"] = p["hostIP"]
            out.append(m)
    return out


# --- CNI through a conflist (libcni's semantics) -----------------------------------------

class CNIError(Exception):
    """A plugin failed; ``str()`` names the plugin, the command and the plugin's message."""

    def __init__(self, plugin: str, command: str, msg: str, code: int | None = None) -> None:
        super().__init__(f"plugin {plugin} ({command}) failed: {msg}")
        self.plugin, self.command, self.code, self.msg = plugin, command, code, msg


def load_conflist(path: str) -> Json:
    """Read a ``.conflist`` (or a single-plugin ``.conf``, wrapped into a list)."""
    with open(path) as f:
        conf = json.load(f)
    if "plugins" not in conf:
        conf = {"cniVersion": conf.get("cniVersion", "0.4.0"), "name": conf.get("name", ""),
                "plugins": [conf]}
    if not isinstance(conf["plugins"], list) or not conf["plugins"]:
        raise ValueError(f"{path}: conflist has no plugins")
    for p in conf["plugins"]:
        if not isinstance(p, dict) or not p.get("type"):
            raise ValueError(f"{path}: every plugin needs a type")
    return conf


def plugin_config(conflist: Json, plugin: Json, prev_result: Json | None,
                  capability_args: Json) -> Json:
    """One plugin's stdin as libcni builds it: name and cniVersion from the list, the previous
    result, and runtimeConfig restricted to the capabilities the plugin declares."""
    conf = dict(plugin)
    conf["name"] = conflist.get("name", "")
    conf["cniVersion"] = conflist.get("cniVersion", "0.4.0")
    caps = conf.pop("capabilities", None) or {}
    if caps:
        conf["capabilities"] = caps  # kept, as libcni does
    runtime = {k: v for k, v in capability_args.items() if caps.get(k)}
    if runtime:
        conf["runtimeConfig"] = runtime
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


def find_plugin(cni_path: str, ptype: str) -> str:
    for d in cni_path.split(":"):
        p = os.path.join(d, ptype)
        if d and os.access(p, os.X_OK):
            return p
    raise CNIError(ptype, "find", f'failed to find plugin "{ptype}" in path [{cni_path}]')


Exec = Callable[[str, Json, bytes], tuple[int, bytes, bytes]]


def exec_subprocess(path: str, env: Json, stdin: bytes) -> tuple[int, bytes, bytes]:
    proc = subprocess.run([path], input=stdin, env=env, capture_output=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr


@dataclass
class CNIInvocation:
    """Everything but the command that a CNI call needs; cached in the pod's state so DEL
    later runs with exactly the configuration ADD had."""
    conflist: Json
    container_id: str
    netns: str
    ifname: str = IFNAME
    args: str = ""
    capability_args: Json = field(default_factory=dict)


def _env(inv: CNIInvocation, command: str, cni_path: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k.startswith("PODNET_")}
    env.update({"PATH": os.environ.get("PATH", CLEAN_PATH), "CNI_COMMAND": command,
                "CNI_CONTAINERID": inv.container_id, "CNI_NETNS": inv.netns,
                "CNI_IFNAME": inv.ifname, "CNI_ARGS": inv.args, "CNI_PATH": cni_path})
    return env


def _invoke(inv: CNIInvocation, plugin: Json, command: str, prev: Json | None, cni_path: str,
            run: Exec) -> Json | None:
    ptype = plugin["type"]
    conf = plugin_config(inv.conflist, plugin, prev, inv.capability_args)
    rc, out, err = run(find_plugin(cni_path, ptype), _env(inv, command, cni_path),
                       json.dumps(conf).encode())
    text = out.decode(errors="replace").strip()
    if rc != 0:
        msg, code = text or err.decode(errors="replace").strip() or f"exit status {rc}", None
        try:
            parsed = json.loads(text)
            msg = parsed.get("msg") or msg
            if parsed.get("details"):
                msg = f"{msg}: {parsed['details']}"
            code = parsed.get("code")
        except (ValueError, AttributeError):
            pass
        raise CNIError(ptype, command, msg, code)
    if command != "ADD" or not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise CNIError(ptype, command, f"result is not JSON: {text[:200]!r}") from None


def cni_add(inv: CNIInvocation, cni_path: str, run: Exec = exec_subprocess) -> Json:
    """ADD through every plugin in order, each getting the previous one's result."""
    result: Json | None = None
    for plugin in inv.conflist["plugins"]:
        out = _invoke(inv, plugin, "ADD", result, cni_path, run)
        result = out if out is not None else result
    return result or {}


def cni_del(inv: CNIInvocation, cni_path: str, cached_result: Json | None,
            run: Exec = exec_subprocess) -> None:
    """DEL through the plugins in reverse order with the cached ADD result as prevResult;
    stops at the first failure (as libcni does) so the caller retries the whole DEL."""
    prev = cached_result if cached_result and _version_ge(inv.conflist, "0.4.0") else None
    for plugin in reversed(inv.conflist["plugins"]):
        _invoke(inv, plugin, "DEL", prev, cni_path, run)


def _version_ge(conflist: Json, v: str) -> bool:
    def t(s: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", s)[:3])
    return t(str(conflist.get("cniVersion", "0.4.0"))) >= t(v)


def result_ips(result: Json) -> list[str]:
    """Pod addresses (without prefix length) from a CNI result of any version."""
    ips = [str(e.get("address", "")).split("/")[0] for e in result.get("ips") or []]
    for old in ("ip4", "ip6"):  # 0.2.0
        if isinstance(result.get(old), dict) and result[old].get("ip"):
            ips.append(result[old]["ip"].split("/")[0])
    return [ip for ip in ips if ip]


# --- processes ---------------------------------------------------------------------------

def proc_start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat (start time in clock ticks), None when gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    rest = data[data.rfind(b")") + 2:].split()
    if not rest or rest[0] in (b"Z", b"X"):
        return None
    return int(rest[19])


def reap(pid: int) -> int | None:
    """Collect the exit status of a child of ours that has exited (None: not ours / running)."""
    try:
        done, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    return os.waitstatus_to_exitcode(status) if done else None


def is_alive(pid: int, start_time: int | None) -> bool:
    """True when ``pid`` still runs and is the process that was started (same start time)."""
    if not pid:
        return False
    reap(pid)
    now = proc_start_time(pid)
    return now is not None and (start_time is None or now == start_time)


def start_process(argv: list[str], env: dict[str, str], ns: str, log_path: str,
                  cwd: str = "/") -> tuple[int, int | None]:
    """Start ``argv`` inside netns ``ns`` in its own session, output appended to
    ``log_path``; returns (pid, start time)."""
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=netns.preexec(ns), close_fds=True)
    _children[proc.pid] = proc  # keeps Popen from warning; liveness is judged from /proc
    return proc.pid, proc_start_time(proc.pid)


_children: dict[int, subprocess.Popen] = {}


def stop_process(pid: int, start_time: int | None, grace: float = 5.0,
                 sleep: Callable[[float], Any] = time.sleep) -> None:
    """SIGTERM the process's group (it leads its own session), SIGKILL after ``grace``.
    Does nothing when the PID no longer belongs to the process that was started."""
    if not is_alive(pid, start_time):
        _children.pop(pid, None)
        return
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not is_alive(pid, start_time):
            break
        sleep(0.02)
    else:
        _signal_group(pid, signal.SIGKILL)
        while is_alive(pid, start_time):
            sleep(0.01)
    _children.pop(pid, None)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        os.kill(pid, sig)


def container_argv(container: Json, pod_name: str, python: str | None = None) -> list[str]:
    """The container's command + args, or the built-in serve-hostname server answering on
    every declared containerPort (by protocol) when it has no command."""
    if container.get("command"):
        return [str(x) for x in container["command"]] + [str(x) for x in container.get("args") or []]
    argv = [python or sys.executable, "-m", "podnet.serve_hostname", "--name", pod_name]
    for p in container.get("ports") or []:
        proto = (p.get("protocol") or "TCP").upper()
        argv += ["--udp" if proto == "UDP" else "--tcp", str(int(p["containerPort"]))]
    return argv


def container_env(container: Json, pod: Json, pod_ip: str) -> dict[str, str]:
    ns, name = pod_key(pod)
    env = {"PATH": CLEAN_PATH, "HOME": "/", "POD_NAME": name, "POD_NAMESPACE": ns,
           "POD_IP": pod_ip}
    if not container.get("command"):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = root
    for e in container.get("env") or []:
        if e.get("name"):
            env[str(e["name"])] = str(e.get("value", ""))
    return env


# --- state files -------------------------------------------------------------------------

@dataclass
class ContainerState:
    pid: int = 0
    start_time: int | None = None
    restarts: int = 0
    ready_file: str | None = None


@dataclass
class PodState:
    uid: str
    namespace: str
    name: str
    netns: str
    cni: Json = field(default_factory=dict)          # CNIInvocation as dict
    result: Json | None = None                        # cached ADD result (None: ADD not done)
    containers: dict[str, ContainerState] = field(default_factory=dict)

    @property
    def ips(self) -> list[str]:
        return result_ips(self.result or {})

    def invocation(self) -> CNIInvocation:
        return CNIInvocation(**self.cni)

    def to_json(self) -> Json:
        """``containers`` is written as a list of ``{name, pid, start_time, ...}`` so that
        other readers (``lab down``) find every PID without knowing container names."""
        data = asdict(self)
        data["containers"] = [dict(v, name=k) for k, v in sorted(data["containers"].items())]
        return data

    @classmethod
    def from_json(cls, data: Json) -> PodState:
        data = dict(data)
        raw = data.get("containers") or []
        items = raw.items() if isinstance(raw, dict) else ((c.get("name", ""), c) for c in raw)
        fields = set(ContainerState.__dataclass_fields__)
        data["containers"] = {k: ContainerState(**{f: v for f, v in c.items() if f in fields})
                              for k, c in items}
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def pod_dir(state_dir: str, uid: str) -> str:
    return os.path.join(state_dir, "pods", uid)


def save_state(state_dir: str, st: PodState) -> None:
    d = pod_dir(state_dir, st.uid)
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, ".state.json.tmp")
    with open(tmp, "w") as f:
        json.dump(st.to_json(), f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(d, "state.json"))


def load_states(state_dir: str) -> dict[str, PodState]:
    """Every pod state under ``state_dir``; unreadable files are logged and skipped."""
    root = os.path.join(state_dir, "pods")
    out: dict[str, PodState] = {}
    try:
        uids = sorted(os.listdir(root))
    except FileNotFoundError:
        return out
    for uid in uids:
        path = os.path.join(root, uid, "state.json")
        try:
            with open(path) as f:
                out[uid] = PodState.from_json(json.load(f))
        except FileNotFoundError:
            continue
        except (ValueError, TypeError) as e:
            log.warning("ignoring unreadable pod state %s: %s", path, e)
    return out


def remove_state(state_dir: str, uid: str) -> None:
    import shutil
    shutil.rmtree(pod_dir(state_dir, uid), ignore_errors=True)
