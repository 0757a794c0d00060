"""A small flannel cluster in network namespaces, for the backend and fault tests.

Topology (every namespace made by ``netns_factory``, so removed in its ``finally``)::

    underlay ns: bridge br0 ── veth ── node<i> ns: eth0 192.168.77.(11+i)/24
                            └─ veth ── etcd<j> ns: eth0 192.168.77.(101+j)/24

etcd members and flanneld processes are stopped by PID (``Cluster.close``).  etcd is
driven with ``etcdctl`` run inside an etcd namespace, so nothing in the root namespace
ever talks to the underlay addresses.  Pods are namespaces connected by podnet's
``flannel`` CNI plugin run inside their node's namespace.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[3]
ETCD = "/usr/bin/etcd"
ETCDCTL = "/usr/bin/etcdctl"
PREFIX = "/coreos.com/network"
UNDERLAY = "192.168.77"


def sh(argv: list[str], **kw) -> subprocess.CompletedProcess:
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(argv, **kw)


def nsx(ns: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    return sh(["ip", "netns", "exec", ns, *argv], **kw)


def ip_j(ns: str, *args: str) -> list[dict]:
    out = sh(["ip", "-j", "-n", ns, *args]).stdout
    return json.loads(out) if out.strip() else []


def wait_for(pred, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    """Poll ``pred`` until truthy; returns (value, seconds waited); raises AssertionError."""
    start = time.monotonic()
    while True:
        value = pred()
        if value:
            return value, time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def stop_proc(proc: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 10) -> int | None:
    if proc is None:
        return None
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


@dataclass
class EtcdMember:
    name: str
    ns: str
    ip: str
    data_dir: str
    log_path: str
    cluster: str = ""
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.ip}:2379"

    def start(self, state: str = "new") -> None:
        argv = ["ip", "netns", "exec", self.ns, ETCD, "--name", self.name,
                "--data-dir", self.data_dir,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", f"http://{self.ip}:2380",
                "--initial-advertise-peer-urls", f"http://{self.ip}:2380",
                "--initial-cluster", self.cluster, "--initial-cluster-state", state,
                "--initial-cluster-token", "pn-flannel-test",
                "--listen-metrics-urls", "http://127.0.0.1:2381",
                "--heartbeat-interval", "50", "--election-timeout", "500"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        stop_proc(self.proc, sig)


@dataclass
class Node:
    name: str
    ns: str
    ip: str
    dir: Path
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    starts: int = 0

    @property
    def subnet_file(self) -> Path:
        return self.dir / "subnet.env"


@dataclass
class Pod:
    name: str
    ns: str
    node: Node
    ip: str
    container_id: str


@dataclass
class Cluster:
    factory: Any
    tmp: Path
    cni_bin: str
    nodes: list[Node] = field(default_factory=list)
    etcd: list[EtcdMember] = field(default_factory=list)
    pods: list[Pod] = field(default_factory=list)
    underlay: str = ""

    # -- topology -------------------------------------------------------------------------

    def _attach(self, ns: str, ip: str) -> None:
        tag = uuid.uuid4().hex[:8]
        host_end = f"u{tag}"
        sh(["ip", "-n", self.underlay, "link", "add", host_end, "type", "veth", "peer", "name",
            "eth0", "netns", ns])
        sh(["ip", "-n", self.underlay, "link", "set", host_end, "master", "br0", "up"])
        sh(["ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0"])
        sh(["ip", "-n", ns, "link", "set", "eth0", "up"])

    def build(self, n_nodes: int, etcd_members: int = 1) -> Cluster:
        self.underlay = self.factory("ul")
        sh(["ip", "-n", self.underlay, "link", "add", "br0", "type", "bridge"])
        sh(["ip", "-n", self.underlay, "link", "set", "br0", "up"])
        for j in range(etcd_members):
            ns = self.factory(f"etcd{j}")
            ip = f"{UNDERLAY}.{101 + j}"
            self._attach(ns, ip)
            d = self.tmp / f"etcd{j}"
            d.mkdir(parents=True, exist_ok=True)
            self.etcd.append(EtcdMember(f"m{j}", ns, ip, str(d / "data"), str(d / "etcd.log")))
        initial = ",".join(f"{m.name}=http://{m.ip}:2380" for m in self.etcd)
        for m in self.etcd:
            m.cluster = initial
            m.start()
        for i in range(n_nodes):
            self.add_node()
        self.wait_etcd()
        return self

    def add_node(self) -> Node:
        i = len(self.nodes)
        ns = self.factory(f"node{i}")
        ip = f"{UNDERLAY}.{11 + i}"
        self._attach(ns, ip)
        nsx(ns, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
        d = self.tmp / f"node{i}"
        d.mkdir(parents=True, exist_ok=True)
        node = Node(f"node{i}", ns, ip, d)
        self.nodes.append(node)
        return node

    @property
    def endpoints(self) -> str:
        return ",".join(m.url for m in self.etcd)

    # -- etcd ----------------------------------------------------------------------------

    def etcdctl(self, *args: str, check: bool = True, member: EtcdMember | None = None,
                timeout: float = 10) -> subprocess.CompletedProcess:
        m = member or next(m for m in self.etcd if m.alive())
        endpoints = (",".join(x.url for x in self.etcd if x.alive()) if member is None
                     else m.url)
        return nsx(m.ns, [ETCDCTL, "--endpoints", endpoints, "--command-timeout=5s", *args],
                   check=check, timeout=timeout, env={**os.environ, "ETCDCTL_API": "3"})

    def wait_etcd(self, timeout: float = 40) -> None:
        def healthy() -> bool:
            alive = [m for m in self.etcd if m.alive()]
            if not alive:
                raise AssertionError("no etcd member is running: "
                                     + Path(self.etcd[0].log_path).read_text()[-2000:])
            return self.etcdctl("endpoint", "health", check=False).returncode == 0
        wait_for(healthy, timeout, 0.2, "etcd to be healthy")

    def put(self, key: str, value: str) -> None:
        self.etcdctl("put", key, value)

    def get(self, key: str) -> str | None:
        out = self.etcdctl("get", key, "--print-value-only").stdout
        return out[:-1] if out.endswith("\n") else (out or None)

    def leases(self) -> dict[str, str]:
        """subnet key (e.g. ``10.44.3.0-24``) → raw value, as stored."""
        out = self.etcdctl("get", f"{PREFIX}/subnets/", "--prefix", "-w", "json").stdout
        import base64
        kvs = json.loads(out).get("kvs", [])
        return {base64.b64decode(kv["key"]).decode().rsplit("/", 1)[1]:
                base64.b64decode(kv["value"]).decode() for kv in kvs}

    def leader(self) -> EtcdMember:
        out = self.etcdctl("endpoint", "status", "-w", "json").stdout
        for st in json.loads(out):
            if st["Status"]["header"]["member_id"] == st["Status"]["leader"]:
                return next(m for m in self.etcd if m.url == st["Endpoint"])
        raise AssertionError(f"no leader in {out}")

    def set_config(self, config: dict) -> None:
        self.put(f"{PREFIX}/config", json.dumps(config))

    # -- flanneld ------------------------------------------------------------------------

    def start_flanneld(self, node: Node, *extra: str, endpoints: str | None = None) -> subprocess.Popen:
        node.starts += 1
        node.log_path = node.dir / f"flanneld.{node.starts}.log"
        argv = ["ip", "netns", "exec", node.ns, sys.executable, "-m", "flannel_py",
                f"--etcd-endpoints={endpoints or self.endpoints}", "--iface=eth0",
                f"--subnet-file={node.subnet_file}", "-v=1", *extra]
        with open(node.log_path, "ab") as log:
            node.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO),
                                         env={**os.environ, "PYTHONPATH": str(REPO)})
        return node.proc

    def log(self, node: Node) -> str:
        return node.log_path.read_text() if node.log_path and node.log_path.exists() else ""

    def wait_ready(self, node: Node, timeout: float = 40) -> str:
        def ready():
            if node.proc is not None and node.proc.poll() is not None:
                raise AssertionError(f"flanneld on {node.name} exited {node.proc.returncode}:\n"
                                     + self.log(node)[-3000:])
            return node.subnet_file.exists() and node.subnet_file.read_text()
        return wait_for(ready, timeout, 0.1, f"subnet.env on {node.name}")[0]

    def subnet_of(self, node: Node) -> str:
        text = node.subnet_file.read_text()
        m = re.search(r"FLANNEL_SUBNET=(\S+)", text)
        assert m, text
        import ipaddress
        return str(ipaddress.ip_interface(m.group(1)).network)

    def stop_flanneld(self, node: Node) -> int | None:
        rc = stop_proc(node.proc)
        return rc

    # -- pods ----------------------------------------------------------------------------

    def add_pod(self, node: Node, name: str) -> Pod:
        ns = self.factory(f"pod-{name}")
        cid = f"{name}-{uuid.uuid4().hex[:6]}"
        conf = {"cniVersion": "1.0.0", "name": "cbr0", "type": "flannel",
                "subnetFile": str(node.subnet_file), "dataDir": str(node.dir / "cni-flannel"),
                "ipam": {"dataDir": str(node.dir / "ipam")}}
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": "ADD", "CNI_CONTAINERID": cid, "CNI_NETNS": f"/run/netns/{ns}",
               "CNI_IFNAME": "eth0", "CNI_PATH": self.cni_bin, "PODNET_CNI_STANDALONE": "1"}
        proc = subprocess.run(["ip", "netns", "exec", node.ns, os.path.join(self.cni_bin, "flannel")],
                              input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        result = json.loads(proc.stdout)
        ip = result["ips"][0]["address"].split("/")[0]
        pod = Pod(name, ns, node, ip, cid)
        self.pods.append(pod)
        return pod

    def ping(self, src: Pod, dst_ip: str, count: int = 3, interval: float = 0.2,
             deadline: int = 10) -> tuple[int, int]:
        """(transmitted, received)."""
        out = nsx(src.ns, ["ping", "-n", "-c", str(count), "-i", str(interval), "-W", "1",
                           "-w", str(deadline), dst_ip], check=False).stdout
        return parse_ping(out)

    def start_ping(self, src: Pod, dst_ip: str, count: int, interval: float = 0.2) -> subprocess.Popen:
        return subprocess.Popen(["ip", "netns", "exec", src.ns, "ping", "-n", "-c", str(count),
                                 "-i", str(interval), "-W", "1", dst_ip],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def tcp_session(self, client: Pod, server: Pod, rounds: int = 5, pause: float = 0.2) -> list[str]:
        """A TCP server in ``server``'s netns echoing upper-cased lines; the client sends
        ``rounds`` lines over one connection, ``pause`` seconds apart; returns the replies."""
        port = 7777
        srv = subprocess.Popen(["ip", "netns", "exec", server.ns, sys.executable, "-c", TCP_SERVER,
                                server.ip, str(port)], stdout=subprocess.PIPE, text=True)
        try:
            assert srv.stdout.readline().strip() == "listening"
            out = nsx(client.ns, [sys.executable, "-c", TCP_CLIENT, server.ip, str(port),
                                  str(rounds), str(pause)], timeout=60).stdout
            return out.split()
        finally:
            stop_proc(srv, signal.SIGKILL)

    # -- teardown ------------------------------------------------------------------------

    def close(self) -> None:
        for node in self.nodes:
            stop_proc(node.proc)
        for m in self.etcd:
            m.stop()


def parse_ping(out: str) -> tuple[int, int]:
    m = re.search(r"(\d+) packets transmitted, (\d+) received", out)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


TCP_SERVER = r"""
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(1)
print("listening", flush=True)
c, _ = s.accept(); f = c.makefile("rwb")
for line in f:
    f.write(line.upper()); f.flush()
"""

TCP_CLIENT = r"""
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
f = c.makefile("rwb")
for i in range(int(sys.argv[3])):
    f.write(b"msg%d\n" % i); f.flush()
    print(f.readline().decode().strip(), flush=True)
    time.sleep(float(sys.argv[4]))
"""
