"""Harness for driving CNI plugins (podnet's or the Go reference) inside test namespaces.

Everything here runs plugins, the libcni driver and probes *inside* namespaces the caller
created (``netns_factory``), with a clean environment (``PATH`` + ``CNI_*``), so that a test
can point the same code at ``/usr/lib/cni`` or at podnet's installed plugins by changing one
directory.
"""
from __future__ import annotations

import copy
import importlib.util
import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
DRIVER_SRC = REPO / "tests" / "libcni" / "driver.go"
GO_PLUGIN_DIR = Path("/usr/lib/cni")
NETNS_DIR = Path("/run/netns")
PLUGINS = ("bridge", "host-local", "loopback", "portmap")
CLEAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

Json = dict[str, Any]


# --------------------------------------------------------------------------- running

def netns_path(ns: str) -> str:
    """The bind-mount path a runtime passes as ``CNI_NETNS`` for an ``ip netns`` name."""
    return str(NETNS_DIR / ns)


def _parse(text: str) -> Any:
    text = text.strip()
    if not text:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def plugin_env(command: str, *, container_id: str, netns: str, ifname: str, args: str = "",
               cni_path: str | os.PathLike[str]) -> dict[str, str]:
    """The environment a runtime gives a plugin: PATH plus the CNI_* variables, nothing else."""
    return {
        "PATH": CLEAN_PATH,
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_ARGS": args,
        "CNI_PATH": str(cni_path),
    }


def exec_plugin(plugin_path: str | os.PathLike[str], command: str, *, config: Json | bytes,
                container_id: str, netns: str, ifname: str, args: str = "",
                cni_path: str | os.PathLike[str], host_netns: str,
                timeout: float = 60) -> tuple[int, Any, str]:
    """Exec a plugin as a runtime would, inside ``host_netns``; returns (rc, stdout, stderr).

    ``netns`` is the value of ``CNI_NETNS`` (a path, e.g. ``netns_path(pod_ns)``, or "" for
    commands that take none). stdout is parsed as JSON when it is JSON (the result, or the
    spec's error object), else returned as text (None when empty).
    """
    stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
    env = plugin_env(command, container_id=container_id, netns=netns, ifname=ifname,
                     args=args, cni_path=cni_path)
    log.debug("exec %s %s in %s (netns %s)", plugin_path, command, host_netns, netns)
    proc = subprocess.run(["ip", "netns", "exec", host_netns, str(plugin_path)], input=stdin,
                          env=env, capture_output=True, timeout=timeout)
    return proc.returncode, _parse(proc.stdout.decode(errors="replace")), \
        proc.stderr.decode(errors="replace")


def exec_driver(driver: str | os.PathLike[str], command: str, *,
                conflist_path: str | os.PathLike[str], container_id: str, netns: str,
                ifname: str, cni_path: str | os.PathLike[str], host_netns: str,
                cache_dir: str | os.PathLike[str], args: str = "",
                capability_args: Json | None = None,
                timeout: float = 60) -> tuple[int, Any, Any]:
    """Run the libcni driver (``add|check|del``) inside ``host_netns``.

    Returns (rc, stdout, stderr), each parsed as JSON when possible: the result on ADD, the
    libcni error object (``{"code", "msg", "details"}``) on stderr when rc != 0.
    """
    argv = ["ip", "netns", "exec", host_netns, str(driver), command, str(conflist_path),
            container_id, netns, ifname, "--cache-dir", str(cache_dir)]
    if args:
        argv += ["--args", args]
    if capability_args is not None:
        argv += ["--capability-args", json.dumps(capability_args)]
    env = {"PATH": CLEAN_PATH, "CNI_PATH": str(cni_path)}
    log.debug("libcni %s %s in %s", command, container_id, host_netns)
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, _parse(proc.stdout), _parse(proc.stderr)


def build_driver(out_dir: Path) -> Path:
    """Build tests/libcni/driver.go offline against Debian's libcni; returns the binary.

    Raises FileNotFoundError when ``go`` is missing and CalledProcessError on a failed build.
    """
    go = shutil.which("go")
    if go is None:
        raise FileNotFoundError("go")
    out_dir.mkdir(parents=True, exist_ok=True)
    gopath = out_dir / "gopath"
    gopath.mkdir(exist_ok=True)
    binary = out_dir / "cnidriver"
    env = {**os.environ, "GO111MODULE": "off", "GOFLAGS": "",
           "GOPATH": f"{gopath}:/usr/share/gocode", "GOCACHE": str(out_dir / "gocache")}
    subprocess.run([go, "build", "-o", str(binary), str(DRIVER_SRC)], env=env, check=True,
                   capture_output=True, text=True, cwd=out_dir)
    return binary


class PodnetCniMissing(Exception):
    """``podnet cni install`` does not exist (yet)."""


def _podnet_argv() -> list[str]:
    script = Path(sys.executable).with_name("podnet")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from podnet.cli import main; sys.exit(main())"]


def install_podnet_plugins(dest: Path) -> Path:
    """Run ``podnet cni install --dir dest`` and return ``dest``.

    Raises PodnetCniMissing when podnet has no ``cni install`` command, and RuntimeError
    when the command exists but fails or leaves one of PLUGINS out.
    """
    if importlib.util.find_spec("podnet.cli") is None:
        raise PodnetCniMissing("podnet.cli does not exist")
    argv = _podnet_argv()
    if subprocess.run([*argv, "cni", "install", "--help"], capture_output=True,
                      timeout=60).returncode != 0:
        raise PodnetCniMissing("`podnet cni install` does not exist")
    dest.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([*argv, "cni", "install", "--dir", str(dest)],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"`podnet cni install` failed (rc {proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    missing = [p for p in PLUGINS if not os.access(dest / p, os.X_OK)]
    if missing:
        raise RuntimeError(f"`podnet cni install` did not install {missing}")
    return dest


# --------------------------------------------------------------------------- inspecting

def _ip_json(ns: str, *args: str) -> list[Json]:
    out = subprocess.run(["ip", "-j", "-n", ns, *args], check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out) if out.strip() else []


def links(ns: str) -> list[Json]:
    """``ip -j link show`` in ``ns``; each entry has ifname, link_type, master, address..."""
    return _ip_json(ns, "-d", "link", "show")


def link_names(ns: str) -> set[str]:
    return {link["ifname"] for link in links(ns)}


def addrs(ns: str, ifname: str, *, scope: str | None = "global") -> list[str]:
    """Addresses on ``ifname`` as "addr/prefixlen" (only ``scope`` ones unless None)."""
    out = []
    for entry in _ip_json(ns, "addr", "show", "dev", ifname):
        for a in entry.get("addr_info", []):
            if scope is None or a.get("scope") == scope:
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out


def routes(ns: str, *, family: int = 4, table: str = "main") -> list[Json]:
    """``ip -j route show`` in ``ns`` (dst "default" for the default route)."""
    return _ip_json(ns, f"-{family}", "route", "show", "table", table)


def ping(from_ns: str, ip: str) -> bool:
    """One ICMP echo from ``from_ns`` to ``ip``; True when it was answered."""
    argv = ["ip", "netns", "exec", from_ns, "ping", "-c1", "-W1", "-n", "-q", ip]
    if ":" in ip:
        argv.insert(5, "-6")
    return subprocess.run(argv, capture_output=True).returncode == 0


def iptables_save(ns: str, variant: str | None = None, *, ipv6: bool = False) -> str:
    """``iptables-save`` text of ``ns``; variant None (the host default), "nft" or "legacy"."""
    tool = "ip6tables" if ipv6 else "iptables"
    tool += f"-{variant}-save" if variant else "-save"
    return subprocess.run(["ip", "netns", "exec", ns, tool], check=True,
                          capture_output=True, text=True).stdout


# Shared chains upstream portmap creates once per node and keeps after the last DEL.
SHARED_CHAINS = frozenset({"CNI-HOSTPORT-DNAT", "CNI-HOSTPORT-SETMARK", "CNI-HOSTPORT-MASQ"})


def cni_leftovers(save_text: str, *, container_ids: Sequence[str] = (),
                  ips: Sequence[str] = ()) -> list[str]:
    """Lines of ``iptables-save`` output that belong to a container after its DEL.

    Per-container chains (``CNI-<hash>`` from ip-masq, ``CNI-DN-``/``CNI-SN-`` from portmap)
    and any rule that names one of ``container_ids`` or ``ips`` count; the shared
    CNI-HOSTPORT-* chains and their (per-container-free) rules do not.
    """
    def per_container(chain: str) -> bool:
        return chain.startswith("CNI-") and chain not in SHARED_CHAINS

    words = [c for c in container_ids if c] + [ip.split("/")[0] for ip in ips if ip]
    bad = []
    for line in save_text.splitlines():
        tokens = line.split()
        if line.startswith(":"):
            if per_container(tokens[0][1:]):
                bad.append(line)
            continue
        if not line.startswith("-A "):
            continue
        targets = [tokens[i + 1] for i, t in enumerate(tokens[:-1]) if t in ("-j", "-g")]
        if per_container(tokens[1]) or any(per_container(t) for t in targets) or any(
                re.search(rf"(?<![\w.]){re.escape(w)}(?![\w])", line) for w in words):
            bad.append(line)
    return bad


# --------------------------------------------------------------------------- results

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
_RANDOM_VETH = re.compile(r"^veth[0-9a-f]{6,11}$")


def normalize_result(result: Json) -> Json:
    """A copy of a CNI result with the parts that differ between runs replaced.

    MAC addresses become "<mac>", ``sandbox`` paths "<sandbox>", host-side veth names that
    are random (``veth`` + hex, as upstream's ``RandomVethName``) "<veth>". Everything else —
    cniVersion, interface order and indexes, ips, routes, dns — is kept, so equal normalized
    results mean structurally equal results.
    """
    out = copy.deepcopy(result)
    for iface in out.get("interfaces") or []:
        if _MAC.match(str(iface.get("mac", ""))):
            iface["mac"] = "<mac>"
        if "sandbox" in iface:
            iface["sandbox"] = "<sandbox>"
        elif _RANDOM_VETH.match(str(iface.get("name", ""))):
            iface["name"] = "<veth>"
    return out


# --------------------------------------------------------------------------- topologies

def make_conflist(name: str = "pn-test", *, cni_version: str = "1.0.0", bridge: str = "cni-pn0",
                  subnet: str = "10.88.7.0/24", data_dir: str | os.PathLike[str],
                  is_gateway: bool = True, ip_masq: bool = True, portmap: bool = True,
                  range_start: str | None = None) -> Json:
    """A conflist: bridge (+ host-local with its dataDir under the test's tmp) [+ portmap]."""
    ipam: Json = {"type": "host-local", "dataDir": str(data_dir),
                  "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}]}
    if range_start:
        ipam["ranges"][0][0]["rangeStart"] = range_start
    plugins: list[Json] = [{"type": "bridge", "bridge": bridge, "isGateway": is_gateway,
                            "ipMasq": ip_masq, "ipam": ipam}]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True},
                        "snat": True})
    return {"cniVersion": cni_version, "name": name, "plugins": plugins}


def plugin_config(conflist: Json, index: int = 0, prev_result: Json | None = None) -> Json:
    """The stdin a runtime sends to plugin ``index`` of ``conflist`` (name/version injected)."""
    conf = dict(conflist["plugins"][index])
    conf["name"] = conflist["name"]
    conf["cniVersion"] = conflist["cniVersion"]
    if prev_result is not None:
        conf["prevResult"] = prev_result
    return conf


@dataclass
class Pod:
    ns: str
    container_id: str
    ifname: str = "eth0"

    @property
    def netns(self) -> str:
        return netns_path(self.ns)


@dataclass
class PodNet:
    """A host namespace, its pods and the conflist/data/cache dirs they share."""

    host_ns: str
    pods: list[Pod]
    conflist: Json
    conflist_path: Path
    data_dir: Path
    cache_dir: Path
    plugin_dir: Path
    driver: Path | None = None
    results: dict[str, Json] = field(default_factory=dict)

    @property
    def net_dir(self) -> Path:
        """host-local's per-network store: ``<dataDir>/<network name>``."""
        return self.data_dir / self.conflist["name"]

    def reservations(self) -> list[str]:
        """Reserved IPs in host-local's store (files named after an IP)."""
        if not self.net_dir.is_dir():
            return []
        return sorted(p.name for p in self.net_dir.iterdir() if _is_ip(p.name))

    def drive(self, command: str, pod: Pod, *, capability_args: Json | None = None,
              args: str = "") -> tuple[int, Any, Any]:
        """``command`` (add|check|del) for ``pod`` through libcni; remembers ADD results."""
        if self.driver is None:
            raise RuntimeError("PodNet has no libcni driver")
        rc, out, err = exec_driver(self.driver, command, conflist_path=self.conflist_path,
                                   container_id=pod.container_id, netns=pod.netns,
                                   ifname=pod.ifname, cni_path=self.plugin_dir,
                                   host_netns=self.host_ns, cache_dir=self.cache_dir,
                                   args=args, capability_args=capability_args)
        if command == "add" and rc == 0:
            self.results[pod.container_id] = out
        return rc, out, err

    def exec(self, plugin: str, command: str, pod: Pod, config: Json | bytes,
             args: str = "") -> tuple[int, Any, str]:
        """Exec one plugin of this PodNet's plugin dir directly for ``pod``."""
        return exec_plugin(self.plugin_dir / plugin, command, config=config,
                           container_id=pod.container_id, netns=pod.netns, ifname=pod.ifname,
                           args=args, cni_path=self.plugin_dir, host_netns=self.host_ns)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def host_with_pods(netns_factory: Callable[[str], str], tmp_path: Path, n: int = 2, *,
                   plugin_dir: str | os.PathLike[str] = GO_PLUGIN_DIR,
                   driver: Path | None = None, **conflist_kw: Any) -> PodNet:
    """A host namespace plus ``n`` pod namespaces and a conflist written under ``tmp_path``.

    ``conflist_kw`` goes to :func:`make_conflist` (dataDir is always under ``tmp_path``, never
    /var/lib/cni). Namespaces come from ``netns_factory``, which deletes them at teardown.
    """
    tmp_path.mkdir(parents=True, exist_ok=True)
    host_ns = netns_factory("host")
    pods = [Pod(netns_factory(f"pod{i}"), f"pn{os.urandom(6).hex()}{i}") for i in range(n)]
    data_dir = tmp_path / "cni-data"
    cache_dir = tmp_path / "cni-cache"
    conflist = make_conflist(data_dir=data_dir, **conflist_kw)
    conflist_path = tmp_path / f"{conflist['name']}.conflist"
    conflist_path.write_text(json.dumps(conflist, indent=2))
    return PodNet(host_ns, pods, conflist, conflist_path, data_dir, cache_dir,
                  Path(plugin_dir), driver)


# --------------------------------------------------------------------------- servers

_SERVER = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
    print("ready", flush=True)
    while True:
        c, _ = s.accept(); c.sendall(sys.argv[2].encode()); c.close()
""")

_CLIENT = textwrap.dedent("""
    import socket, sys
    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    sys.stdout.write(c.recv(256).decode())
""")


def start_tcp_server(ns: str, port: int, reply: str) -> subprocess.Popen:
    """A TCP server in ``ns`` that sends ``reply`` to every client; stop with stop_process."""
    proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-c", _SERVER,
                             str(port), reply], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # ip netns exec execs python: proc.pid is the server's
    if line.strip() != "ready":
        stop_process(proc)
        raise RuntimeError(f"tcp server in {ns} did not start")
    return proc


def stop_process(proc: subprocess.Popen) -> None:
    """Stop a process we started, by its PID."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout:
        proc.stdout.close()


def tcp_request(ns: str, ip: str, port: int) -> str | None:
    """Connect from ``ns`` to ip:port and return what the server sent (None on failure)."""
    proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", _CLIENT, ip,
                           str(port)], capture_output=True, text=True, timeout=30)
    return proc.stdout if proc.returncode == 0 else None
