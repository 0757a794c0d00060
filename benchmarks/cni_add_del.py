"""ADD and DEL latency of bridge + host-local: podnet's plugins against the Go reference.

Runs each plugin set the way a runtime does: ``bridge`` exec'd with a clean environment
(``PATH`` + ``CNI_*``) from a process inside the host network namespace, delegating to
``host-local`` through ``CNI_PATH``. Every iteration creates a throwaway host namespace and a
pod namespace, times one ADD and one DEL, and deletes both namespaces in ``finally``. The
implementations alternate (and swap who goes first) every iteration, with and without
``ipMasq``, all in the same run. Prints JSON: median ADD/DEL in ms per implementation and
mode, and podnet/go ratios.

    python benchmarks/cni_add_del.py [--iterations 30] [--go-dir /usr/lib/cni]
        [--podnet-dir DIR] [--mode standalone|daemon|both]
        [--podnet-daemon-cmd 'CMD {host_ns} {state_dir}'] [--exec setns|ip-netns]

Without ``--podnet-dir`` the script tries ``podnet cni install --dir <tmp>``; when that gives
no plugins the podnet side is skipped with a message. ``daemon`` mode starts
``--podnet-daemon-cmd`` inside each iteration's host namespace before podnet's ADD (not
timed) and stops it by PID afterwards; without that option daemon mode is skipped.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shlex
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_REC, MS_SLAVE, MNT_DETACH = 0x4000, 0x80000, 2
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
NS_PREFIX = "pn-bench-"
BRIDGE = "pnbench0"
SUBNET = "10.99.0.0/24"
NEEDED = ("bridge", "host-local")

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


@contextmanager
def inside_netns(name: str) -> Iterator[None]:
    """Move this (single-threaded) process into netns ``name`` and back.

    Like ``ip netns exec``, but once per iteration instead of once per plugin exec: a private
    mount namespace with /sys remounted, so plugins see the namespace's own sysfs, and the
    plugin itself is then a plain child of a process in the host namespace, as under a
    runtime.
    """
    cwd = os.getcwd()
    orig_net = os.open("/proc/self/ns/net", os.O_RDONLY)
    orig_mnt = os.open("/proc/self/ns/mnt", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        try:
            _check(_libc.mount(b"none", b"/", None, MS_REC | MS_SLAVE, None),
                   "mount --make-rslave /")
            _check(_libc.setns(target, CLONE_NEWNET), f"setns({name})")
            _check(_libc.umount2(b"/sys", MNT_DETACH), "umount /sys")
            _check(_libc.mount(name.encode(), b"/sys", b"sysfs", 0, None), "mount sysfs")
            yield
        finally:
            _check(_libc.setns(orig_net, CLONE_NEWNET), "setns(back to original netns)")
            _check(_libc.setns(orig_mnt, CLONE_NEWNS), "setns(back to original mount ns)")
            os.chdir(cwd)
    finally:
        for fd in (orig_net, orig_mnt, target):
            os.close(fd)


def _run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@contextmanager
def throwaway_namespaces(*tags: str) -> Iterator[list[str]]:
    names: list[str] = []
    try:
        for tag in tags:
            name = f"{NS_PREFIX}{tag}-{uuid.uuid4().hex[:8]}"
            _run(["ip", "netns", "add", name])
            names.append(name)
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
        yield names
    finally:
        for name in reversed(names):
            subprocess.run(["ip", "netns", "del", name], stderr=subprocess.DEVNULL)


def bridge_config(data_dir: str, ip_masq: bool) -> bytes:
    return json.dumps({
        "cniVersion": "1.0.0", "name": "pn-bench", "type": "bridge", "bridge": BRIDGE,
        "isGateway": True, "ipMasq": ip_masq,
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": [[{"subnet": SUBNET}]],
                 "routes": [{"dst": "0.0.0.0/0"}]},
    }).encode()


def timed_exec(argv: list[str], env: dict[str, str], stdin: bytes) -> float:
    """Run argv, return wall time in ms; raise with the plugin's output if it failed.

    An ADD must also print a result with an address: a fast wrong answer is no answer.
    """
    start = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, env=env, capture_output=True)
    elapsed = (time.perf_counter() - start) * 1000
    if proc.returncode != 0:
        raise RuntimeError(f"{env['CNI_COMMAND']} via {argv} failed rc={proc.returncode}: "
                           f"{proc.stdout.decode()[-500:]} {proc.stderr.decode()[-500:]}")
    if env["CNI_COMMAND"] == "ADD":
        try:
            ok = bool(json.loads(proc.stdout)["ips"])
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise RuntimeError(f"ADD via {argv} printed no result with ips: {proc.stdout[:300]!r}")
    return elapsed


class Daemon:
    """The optional podnet node daemon, started inside the iteration's host namespace."""

    def __init__(self, cmd: str, settle: float, socket_path: str | None = None) -> None:
        self.cmd, self.settle, self.socket_path = cmd, settle, socket_path
        self.proc: subprocess.Popen | None = None

    def start(self, host_ns: str, state_dir: str) -> None:
        argv = shlex.split(self.cmd.format(host_ns=host_ns, state_dir=state_dir))
        self.proc = subprocess.Popen(["ip", "netns", "exec", host_ns, *argv],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if self.socket_path:
            self._wait_for_socket()
        else:
            time.sleep(self.settle)
        if self.proc.poll() is not None:
            raise RuntimeError(f"podnet daemon exited with {self.proc.returncode}: {argv}: "
                               f"{self.proc.stderr.read().decode()[-500:]}")

    def _wait_for_socket(self, limit: float = 30.0) -> None:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline and self.proc.poll() is None:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                try:
                    sock.connect(self.socket_path)
                    return
                except OSError:
                    time.sleep(0.02)
        if self.proc.poll() is None:
            raise RuntimeError(f"podnet daemon did not listen on {self.socket_path}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()  # by PID (Popen), never by name
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        self.proc = None


def start_node_daemon(socket_path: str) -> subprocess.Popen:
    """One `podnet cni daemon` for the run. It starts in this (root) namespace but changes
    nothing there: each request runs in the caller's namespace, whose fd comes with it."""
    proc = subprocess.Popen([sys.executable, "-m", "podnet", "cni", "daemon", "--socket",
                             socket_path], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(socket_path):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("podnet cni daemon did not start")
        time.sleep(0.02)
    return proc


def one_iteration(plugin_dir: Path, ip_masq: bool, exec_mode: str,
                  daemon: Daemon | None = None,
                  extra_env: dict[str, str] | None = None) -> tuple[float, float]:
    """ADD then DEL in fresh namespaces; returns (add_ms, del_ms)."""
    state_dir = tempfile.mkdtemp(prefix="pn-bench-")
    try:
        with throwaway_namespaces("host", "pod") as (host_ns, pod_ns):
            if daemon:
                daemon.start(host_ns, state_dir)
            try:
                stdin = bridge_config(os.path.join(state_dir, "ipam"), ip_masq)
                cid = f"bench{uuid.uuid4().hex[:12]}"
                env = {"PATH": CLEAN_PATH, "CNI_CONTAINERID": cid,
                       "CNI_NETNS": f"/run/netns/{pod_ns}", "CNI_IFNAME": "eth0",
                       "CNI_ARGS": "", "CNI_PATH": str(plugin_dir), **(extra_env or {})}
                plugin = str(plugin_dir / "bridge")
                if exec_mode == "ip-netns":
                    argv = ["ip", "netns", "exec", host_ns, plugin]
                    add = timed_exec(argv, {**env, "CNI_COMMAND": "ADD"}, stdin)
                    dele = timed_exec(argv, {**env, "CNI_COMMAND": "DEL"}, stdin)
                else:
                    with inside_netns(host_ns):
                        add = timed_exec([plugin], {**env, "CNI_COMMAND": "ADD"}, stdin)
                        dele = timed_exec([plugin], {**env, "CNI_COMMAND": "DEL"}, stdin)
                return add, dele
            finally:
                if daemon:
                    daemon.stop()
    finally:
        shutil.rmtree(state_dir, ignore_errors=True)


def has_plugins(d: Path | None) -> bool:
    return d is not None and all(os.access(d / p, os.X_OK) for p in NEEDED)


def install_podnet(dest: Path, socket_path: str | None = None) -> Path | None:
    """``podnet cni install --dir dest [--socket S]`` if the command exists; else None."""
    podnet = Path(sys.executable).with_name("podnet")
    cmd = str(podnet) if podnet.exists() else shutil.which("podnet")
    if cmd is None:
        return None
    argv = [cmd, "cni", "install", "--dir", str(dest)]
    if socket_path:
        argv += ["--socket", socket_path]
    proc = subprocess.run(argv, capture_output=True, text=True)
    return dest if proc.returncode == 0 and has_plugins(dest) else None


def summarize(samples: dict[str, list[tuple[float, float]]]) -> dict[str, dict]:
    return {masq: {"add_ms": round(statistics.median(a for a, _ in xs), 2),
                   "del_ms": round(statistics.median(d for _, d in xs), 2), "n": len(xs)}
            for masq, xs in samples.items() if xs}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--podnet-dir", type=Path, help="podnet's installed plugins "
                    "(default: `podnet cni install` into a temp dir)")
    ap.add_argument("--go-dir", type=Path, default=Path("/usr/lib/cni"))
    ap.add_argument("--iterations", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=1, help="untimed iterations per impl")
    ap.add_argument("--mode", choices=["daemon", "standalone", "both"], default="both",
                    help="podnet with its node daemon, without, or both")
    ap.add_argument("--podnet-daemon-cmd", help="a daemon command of your own: started "
                    "inside each iteration's host netns before podnet's runs and stopped by "
                    "PID after; {host_ns} and {state_dir} are substituted. Default: one "
                    "`podnet cni daemon` for the whole run, as on a node")
    ap.add_argument("--podnet-daemon-socket",
                    help="wait until the daemon accepts connections here (else sleep "
                    "--podnet-daemon-settle); also passed to `podnet cni install --socket`")
    ap.add_argument("--podnet-daemon-settle", type=float, default=0.5,
                    help="seconds to wait after starting the daemon")
    ap.add_argument("--pause", type=float, default=0.1,
                    help="seconds between iterations, so the kernel's asynchronous cleanup "
                    "of the last iteration's namespaces does not hold rtnl during the next")
    ap.add_argument("--exec", dest="exec_mode", choices=["setns", "ip-netns"], default="setns",
                    help="exec plugins from this process inside the host netns (like a "
                    "runtime) or through `ip netns exec` (adds ≈2 ms per exec)")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (creates network namespaces)", file=sys.stderr)
        return 2

    notes: list[str] = []
    tmp = Path(tempfile.mkdtemp(prefix="pn-bench-plugins-"))
    node_daemon: subprocess.Popen | None = None
    try:
        if not args.podnet_daemon_cmd and not args.podnet_daemon_socket:
            args.podnet_daemon_socket = str(tmp / "cni.sock")
        podnet_dir = args.podnet_dir or install_podnet(tmp / "bin", args.podnet_daemon_socket)
        if not has_plugins(podnet_dir):
            notes.append(f"podnet skipped: no {'/'.join(NEEDED)} plugins in "
                         f"{podnet_dir or '(podnet cni install unavailable)'}")
        if not has_plugins(args.go_dir):
            print(f"no Go reference plugins in {args.go_dir}", file=sys.stderr)
            return 2

        Impl = tuple[Path, "Daemon | None", "dict[str, str] | None"]
        impls: dict[str, Impl] = {"go": (args.go_dir, None, None)}
        if has_plugins(podnet_dir):
            if args.mode in ("standalone", "both"):
                impls["podnet_standalone"] = (podnet_dir, None, {"PODNET_CNI_STANDALONE": "1"})
            if args.mode in ("daemon", "both"):
                if args.podnet_daemon_cmd:
                    impls["podnet_daemon"] = (podnet_dir, Daemon(
                        args.podnet_daemon_cmd, args.podnet_daemon_settle,
                        args.podnet_daemon_socket), None)
                else:
                    node_daemon = start_node_daemon(args.podnet_daemon_socket)
                    impls["podnet_daemon"] = (podnet_dir, None, None)
        for note in notes:
            print(note, file=sys.stderr)

        samples = {name: {"no_masq": [], "masq": []} for name in impls}
        order = list(impls)
        for ip_masq in (False, True):
            key = "masq" if ip_masq else "no_masq"
            for i in range(args.warmup + args.iterations):
                rot = i % len(order)
                for name in order[rot:] + order[:rot]:  # alternate who goes first
                    if name not in impls:
                        continue
                    plugin_dir, daemon, extra_env = impls[name]
                    time.sleep(args.pause)
                    try:
                        timing = one_iteration(plugin_dir, ip_masq, args.exec_mode, daemon,
                                               extra_env)
                    except RuntimeError as exc:
                        if name == "go":
                            raise
                        notes.append(f"{name} dropped after a failure: {exc}")
                        print(notes[-1], file=sys.stderr)
                        del impls[name]
                        continue
                    if i >= args.warmup:
                        samples[name][key].append(timing)

        results = {name: summarize(samples[name]) for name in impls}
        go = results["go"]
        ratios = {f"{name}/go": {masq: {op: round(r[f"{op}_ms"] / go[masq][f"{op}_ms"], 2)
                                        for op in ("add", "del")}
                                 for masq, r in res.items()}
                  for name, res in results.items() if name != "go"}
        print(json.dumps({"iterations": args.iterations, "exec": args.exec_mode,
                          "dirs": {"go": str(args.go_dir), "podnet": str(podnet_dir)},
                          "results": results, "ratios": ratios, "notes": notes}, indent=2))
        return 0
    finally:
        if node_daemon is not None:
            node_daemon.terminate()  # by PID
            node_daemon.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
