"""A real etcd for flannel's tests, in its own network namespace.

etcd runs (``ip netns exec``) in an "etcd" namespace and listens only on that namespace's
veth address; a second "client" namespace holds the other end of the veth.  Tests talk to
etcd from inside the client namespace (``with etcd.client():`` moves the current thread
there; threads started inside inherit it).  Nothing listens or connects in the root
namespace.  etcd is stopped by its PID and its data dir lives in tmp_path.
"""
from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid

import pytest

from podnet import netns

ETCD = "/usr/bin/etcd"
ETCD_IP = "10.231.0.1"
CLIENT_IP = "10.231.0.2"


class EtcdServer:
    def __init__(self, etcd_ns: str, client_ns: str, data_dir: str, log_path: str) -> None:
        self.etcd_ns, self.client_ns = etcd_ns, client_ns
        self.data_dir, self.log_path = data_dir, log_path
        self.url = f"http://{ETCD_IP}:2379"
        self.dead_url = f"http://{ETCD_IP}:2399"        # same host, nothing listening: refused
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        argv = ["ip", "netns", "exec", self.etcd_ns, ETCD, "--name", "pn-test",
                "--data-dir", self.data_dir,
                "--listen-client-urls", self.url, "--advertise-client-urls", self.url,
                "--listen-peer-urls", "http://127.0.0.1:2380",
                "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                "--initial-cluster", "pn-test=http://127.0.0.1:2380",
                "--listen-metrics-urls", "http://127.0.0.1:2381"]
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited: {open(self.log_path).read()[-2000:]}")
            if self._healthy():
                return
            if time.monotonic() > deadline:
                raise RuntimeError("etcd did not become healthy")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        with self.client():
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=1) as resp:
                    return b"true" in resp.read()
            except OSError:
                return False

    def stop(self) -> None:
        """Stop etcd by its PID (``ip netns exec`` execs etcd, so the PID is etcd's)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @contextlib.contextmanager
    def client(self):
        """Run the block (this thread, and threads it starts) in the client namespace."""
        with netns.entered(self.client_ns):
            yield


@pytest.fixture
def etcd(netns_factory, tmp_path):
    """A fresh single-member etcd reachable from ``etcd.client()`` at ``etcd.url``."""
    etcd_ns, client_ns = netns_factory("etcd"), netns_factory("etcdcli")
    tag = uuid.uuid4().hex[:6]
    a, b = f"pne{tag}", f"pnc{tag}"
    subprocess.run(["ip", "-n", etcd_ns, "link", "add", a, "type", "veth", "peer", "name", b,
                    "netns", client_ns], check=True)
    subprocess.run(["ip", "-n", etcd_ns, "addr", "add", f"{ETCD_IP}/24", "dev", a], check=True)
    subprocess.run(["ip", "-n", etcd_ns, "link", "set", a, "up"], check=True)
    subprocess.run(["ip", "-n", client_ns, "addr", "add", f"{CLIENT_IP}/24", "dev", b], check=True)
    subprocess.run(["ip", "-n", client_ns, "link", "set", b, "up"], check=True)
    server = EtcdServer(etcd_ns, client_ns, str(tmp_path / "etcd-data"), str(tmp_path / "etcd.log"))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(tmp_path / "etcd-data", ignore_errors=True)
