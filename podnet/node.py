"""One node's bootstrap, shared by the lab and by real machines (``podnet node setup``).

A node is described by :class:`NodeConfig` (name, address, etcd, interface and where its
files live). From it, pure functions give the node's CNI conflist and its daemons' command
lines in start order; :func:`install_files` puts the plugins and the conflist in place. The
lab runs those command lines inside a namespace; a real node gets them as systemd units
(:func:`units`), so both run exactly the same daemons with the same flags.

A real node uses the standard paths (:func:`standard`): plugins in ``/opt/cni/bin``, the
conflist in ``/etc/cni/net.d``, flannel's ``/run/flannel/subnet.env``, the pod runner's
state in ``/var/lib/podnet/runner`` and the CNI daemon on ``/run/podnet/cni.sock``.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

log = logging.getLogger(__name__)

POD_NETWORK = "10.244.0.0/16"
FLANNEL_PREFIX = "/coreos.com/network"
CONFLIST_NAME = "10-flannel.conflist"
UNIT_DIR = "/etc/systemd/system"
ETCD_DATA_DIR = "/var/lib/podnet/etcd"
HEALTHZ_PORT = 10256           # flanneld's /healthz on the node address
PROXY_METRICS_PORT = 10249     # kube-proxy's upstream default
PROXY_HEALTHZ_PORT = 10258     # kube-proxy's /healthz (upstream's 10256 is flanneld's here)
PROXY_MIN_SYNC = "100ms"       # endpoint changes reach the rules well within a second
PROXY_MODES = ("iptables", "ipvs", "none")

# role → (systemd unit, description); the order of node daemons is in daemons().
UNIT_NAMES = {
    "cni-daemon": ("podnet-cni.service", "podnet CNI daemon (serves the plugins in the CNI bin dir)"),
    "flanneld": ("flanneld.service", "flanneld: this node's pod subnet and the overlay"),
    "runner": ("podnet-runner.service", "podnet pod runner (the kubelet's part)"),
    "etcd": ("podnet-etcd.service", "etcd for podnet"),
    "kube-proxy": ("kube-proxy.service", "kube-proxy (iptables mode) and the endpoints controller"),
}


class NodeError(Exception):
    """A node set-up step that cannot go on; the message says what and why."""


@dataclass(frozen=True)
class NodeConfig:
    name: str
    etcd_endpoints: tuple[str, ...]
    iface: str = "eth0"
    ip: str | None = None
    cni_bin: str = "/opt/cni/bin"
    conflist: str = f"/etc/cni/net.d/{CONFLIST_NAME}"
    subnet_file: str = "/run/flannel/subnet.env"
    runner_dir: str = "/var/lib/podnet/runner"
    cni_socket: str = "/run/podnet/cni.sock"
    cni_data_dir: str = "/var/lib/cni"          # flannel's and host-local's state
    proxy_mode: str = "iptables"                # iptables: kube-proxy runs; ipvs/none: not yet

    @property
    def endpoints(self) -> str:
        return ",".join(self.etcd_endpoints)


def standard(name: str, etcd_endpoints: list[str] | tuple[str, ...] | str, iface: str,
             ip: str | None = None, proxy_mode: str = "iptables") -> NodeConfig:
    """A real machine's node: the standard paths."""
    return NodeConfig(name=name, etcd_endpoints=split_endpoints(etcd_endpoints), iface=iface, ip=ip,
                      proxy_mode=proxy_mode)


def in_directory(name: str, etcd_endpoints: list[str] | tuple[str, ...] | str, iface: str,
                 ip: str | None, directory: str, proxy_mode: str = "iptables") -> NodeConfig:
    """A node whose files all live in one directory (the lab's layout)."""
    return NodeConfig(name=name, etcd_endpoints=split_endpoints(etcd_endpoints), iface=iface,
                      ip=ip, proxy_mode=proxy_mode, cni_bin=os.path.join(directory, "bin"),
                      conflist=os.path.join(directory, CONFLIST_NAME),
                      subnet_file=os.path.join(directory, "subnet.env"),
                      runner_dir=os.path.join(directory, "runner"),
                      cni_socket=os.path.join(directory, "cni.sock"),
                      cni_data_dir=os.path.join(directory, "cni"))


def split_endpoints(endpoints: list[str] | tuple[str, ...] | str) -> tuple[str, ...]:
    if isinstance(endpoints, str):
        endpoints = endpoints.split(",")
    return tuple(e.strip() for e in endpoints if e.strip())


# --- pure: what the node runs ----------------------------------------------------------------


def conflist(cfg: NodeConfig) -> dict[str, Any]:
    """The node's CNI config: flannel (→ bridge + host-local) then portmap."""
    return {"cniVersion": "1.0.0", "name": "cbr0", "plugins": [
        {"type": "flannel", "subnetFile": cfg.subnet_file,
         "dataDir": os.path.join(cfg.cni_data_dir, "flannel"),
         "delegate": {"hairpinMode": True, "isDefaultGateway": True},
         "ipam": {"dataDir": os.path.join(cfg.cni_data_dir, "networks")}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
    ]}


def daemons(cfg: NodeConfig, python: str = sys.executable) -> list[tuple[str, list[str]]]:
    """(role, argv) of the node's daemons in start order: CNI daemon, flanneld, pod runner,
    and kube-proxy (with the endpoints controller; one node's wins the election) when
    ``proxy_mode`` is ``iptables``."""
    flanneld = [python, "-m", "flannel_py", f"--etcd-endpoints={cfg.endpoints}",
                f"--iface={cfg.iface}", "--ip-masq", f"--subnet-file={cfg.subnet_file}",
                f"--healthz-port={HEALTHZ_PORT}"]
    if cfg.ip:
        flanneld.append(f"--healthz-ip={cfg.ip}")
    runner = [python, "-m", "podnet", "--etcd-endpoints", cfg.endpoints, "runner",
              "--node", cfg.name, "--cni-bin", cfg.cni_bin, "--cni-conf", cfg.conflist,
              "--state-dir", cfg.runner_dir]
    if cfg.ip:
        runner += ["--node-ip", cfg.ip]
    out = [
        ("cni-daemon", [python, "-m", "podnet", "cni", "daemon", "--socket", cfg.cni_socket]),
        ("flanneld", flanneld),
        ("runner", runner),
    ]
    if cfg.proxy_mode == "iptables":
        out.append(("kube-proxy", kube_proxy_argv(cfg, python)))
    return out


def kube_proxy_argv(cfg: NodeConfig, python: str = sys.executable) -> list[str]:
    bind = cfg.ip or "0.0.0.0"
    return [python, "-m", "kubeproxy_py", "--proxy-mode=iptables",
            f"--hostname-override={cfg.name}", f"--etcd-endpoints={cfg.endpoints}",
            f"--cluster-cidr={POD_NETWORK}", f"--iptables-min-sync-period={PROXY_MIN_SYNC}",
            f"--metrics-bind-address={bind}:{PROXY_METRICS_PORT}",
            f"--healthz-bind-address={bind}:{PROXY_HEALTHZ_PORT}",
            "--run-endpoints-controller"]


def network_config(backend: str, network: str = POD_NETWORK) -> dict[str, Any]:
    """flannel's network config, stored at ``/coreos.com/network/config``."""
    return {"Network": network, "Backend": {"Type": backend}}


def etcd_argv(name: str, ip: str, data_dir: str, initial_cluster: str, *, etcd: str = "etcd",
              extra_client_urls: tuple[str, ...] = ()) -> list[str]:
    """One etcd member's command line (``initial_cluster``: ``name=http://ip:2380,…``)."""
    client, peer = f"http://{ip}:2379", f"http://{ip}:2380"
    return [etcd, "--name", name, "--data-dir", data_dir,
            "--listen-client-urls", ",".join((client, *extra_client_urls)),
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", initial_cluster, "--initial-cluster-state", "new",
            "--listen-metrics-urls", f"http://{ip}:2381",
            "--max-txn-ops", "1024"]  # `podnet apply` stores a whole file in one transaction


# --- pure: systemd units ------------------------------------------------------------------


def _exec_quote(arg: str) -> str:
    """One ExecStart word: systemd splits on blanks, honours quotes, expands % and $."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if arg and not any(c in arg for c in " \t\n\"'\\;"):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def render_unit(description: str, argv: list[str], *, after: tuple[str, ...] = (),
                wants: tuple[str, ...] = (), service: tuple[str, ...] = ()) -> str:
    lines = ["[Unit]", f"Description={description}"]
    if wants:
        lines.append(f"Wants={' '.join(wants)}")
    if after:
        lines.append(f"After={' '.join(after)}")
    lines += ["", "[Service]", "ExecStart=" + " ".join(_exec_quote(a) for a in argv),
              "Restart=always", "RestartSec=2", "Environment=PYTHONUNBUFFERED=1", *service,
              "", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def units(cfg: NodeConfig, python: str = sys.executable) -> dict[str, str]:
    """{unit file name: text} for the node's daemons, in start order."""
    net = ("network-online.target",)
    deps: dict[str, dict[str, tuple[str, ...]]] = {
        "cni-daemon": {"after": ("network.target",)},
        # podnet-etcd only exists on the etcd node; After= on a unit not started is a no-op.
        "flanneld": {"after": (*net, "podnet-etcd.service"), "wants": net},
        "runner": {"after": ("flanneld.service", "podnet-cni.service"),
                   "wants": ("flanneld.service", "podnet-cni.service"),
                   # Pods' processes live in the runner's cgroup; a restarted runner adopts
                   # them, so stopping it must not kill them (the kubelet does the same).
                   "service": ("KillMode=process",)},
        # Rules stay in place while it is down; restarting it never flushes them.
        "kube-proxy": {"after": (*net, "flanneld.service"), "wants": net},
    }
    out = {}
    for role, argv in daemons(cfg, python):
        unit, description = UNIT_NAMES[role]
        out[unit] = render_unit(f"{description}, node {cfg.name}", argv, **deps[role])
    return out


def etcd_unit(name: str, ip: str, initial_cluster: str | None = None,
              data_dir: str = ETCD_DATA_DIR, etcd: str | None = None) -> str:
    """podnet-etcd.service: one member, clients on ``ip`` and on localhost."""
    argv = etcd_argv(name, ip, data_dir, initial_cluster or f"{name}=http://{ip}:2380",
                     etcd=etcd or shutil.which("etcd") or "/usr/bin/etcd",
                     extra_client_urls=("http://127.0.0.1:2379",))
    return render_unit(UNIT_NAMES["etcd"][1], argv, after=("network-online.target",),
                       wants=("network-online.target",), service=("Type=notify",))


# --- carrying it out ---------------------------------------------------------------------


def _under(root: str, path: str) -> str:
    """``path`` inside ``root`` (like DESTDIR: the files name the real paths)."""
    return os.path.join(root, path.lstrip("/")) if root else path


def _write(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def install_files(cfg: NodeConfig, root: str = "", native: bool | None = None) -> list[str]:
    """Plugins into the CNI bin dir, the conflist, the state directories; the written paths."""
    from cni.install import install
    for d in (cfg.runner_dir, cfg.cni_data_dir):
        os.makedirs(_under(root, d), exist_ok=True)
    written = install(_under(root, cfg.cni_bin), cfg.cni_socket, native=native)
    path = _under(root, cfg.conflist)
    _write(path, json.dumps(conflist(cfg), indent=2) + "\n")
    return [*written, path]


Run = Callable[[list[str]], None]


def _systemctl(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


def write_units(texts: dict[str, str], root: str = "") -> list[str]:
    paths = []
    for unit, text in texts.items():
        path = _under(root, os.path.join(UNIT_DIR, unit))
        _write(path, text)
        paths.append(path)
    return paths


def start_units(names: list[str], run: Run = _systemctl) -> None:
    """daemon-reload, enable, and (re)start so that a re-provisioned node runs the new units."""
    run(["systemctl", "daemon-reload"])
    run(["systemctl", "enable", "--now", *names])
    run(["systemctl", "restart", *names])


def setup(cfg: NodeConfig, *, root: str = "", start: bool = True, native: bool | None = None,
          python: str = sys.executable, run: Run = _systemctl) -> list[str]:
    """Install the node: plugins, conflist, systemd units; start them unless ``start`` is
    false or a ``root`` is given (files staged for another system). The written paths."""
    written = install_files(cfg, root, native)
    texts = units(cfg, python)
    written += write_units(texts, root)
    if start and not root:
        start_units(list(texts), run)
    return written


def setup_etcd(name: str, ip: str, initial_cluster: str | None = None, *, root: str = "",
               start: bool = True, data_dir: str = ETCD_DATA_DIR, run: Run = _systemctl) -> str:
    """Write podnet-etcd.service (and start it unless ``start`` is false or ``root`` given)."""
    unit = UNIT_NAMES["etcd"][0]
    [path] = write_units({unit: etcd_unit(name, ip, initial_cluster, data_dir)}, root)
    if start and not root:
        start_units([unit], run)
    return path


def init_network(endpoints: list[str] | tuple[str, ...] | str, backend: str = "vxlan",
                 network: str = POD_NETWORK, timeout: float = 120.0,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic, store: Any = None) -> dict[str, Any]:
    """Store flannel's network config once etcd answers (retrying until ``timeout``).
    ``store``: a :class:`podnet.etcd.Store` (default: one on ``endpoints``)."""
    from podnet.etcd import Store, StoreError
    config = network_config(backend, network)
    if store is None:
        store = Store(list(split_endpoints(endpoints)), timeout=2.0)
    deadline = clock() + timeout
    while True:
        try:
            store.put(f"{FLANNEL_PREFIX}/config", json.dumps(config))
            return config
        except StoreError as exc:
            if clock() > deadline:
                raise NodeError(f"etcd at {','.join(split_endpoints(endpoints))} did not answer "
                                f"in {timeout:.0f} s: {exc}") from None
            log.info("waiting for etcd: %s", exc)
            sleep(1.0)
