"""Fixtures for CNI integration tests: podnet's plugins installed in a temp dir, the CNI daemon."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from tests.conftest import ns_run


@pytest.fixture(scope="session")
def cni_dirs(tmp_path_factory):
    """(bin dir, daemon socket path): podnet's plugins installed as a runtime would see them."""
    base = tmp_path_factory.mktemp("cni")
    bindir, sock = base / "bin", base / "cni.sock"
    subprocess.run([sys.executable, "-m", "podnet", "cni", "install", "--dir", str(bindir),
                    "--socket", str(sock)], check=True, capture_output=True)
    return str(bindir), str(sock)


@pytest.fixture(scope="session")
def cni_daemon(cni_dirs):
    """A running ``podnet cni daemon`` on the plugins' socket, stopped by PID afterwards."""
    _, sock = cni_dirs
    proc = subprocess.Popen([sys.executable, "-m", "podnet", "cni", "daemon", "--socket", sock],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("cni daemon did not start: "
                                   + (proc.stderr.read().decode() if proc.poll() is not None else "timeout"))
            time.sleep(0.02)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(params=["standalone", "daemon"])
def cni(request, cni_dirs):
    """A runner for podnet's plugins, once standalone and once through the daemon."""
    bindir, _ = cni_dirs
    extra = {}
    if request.param == "daemon":
        request.getfixturevalue("cni_daemon")
    else:
        extra["PODNET_CNI_STANDALONE"] = "1"
    return CNIRunner(bindir, extra, request.param)


class CNIRunner:
    def __init__(self, bindir: str, extra_env: dict[str, str], mode: str) -> None:
        self.bindir, self.extra_env, self.mode = bindir, extra_env, mode

    def __call__(self, host_ns: str, plugin: str, command: str, config: dict | bytes, *,
                 container_id: str = "ctr1", netns: str = "", ifname: str = "eth0",
                 args: str = "") -> tuple[int, dict | None, str]:
        env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
               "CNI_COMMAND": command, "CNI_CONTAINERID": container_id, "CNI_NETNS": netns,
               "CNI_IFNAME": ifname, "CNI_PATH": self.bindir, "CNI_ARGS": args, **self.extra_env}
        stdin = config if isinstance(config, bytes) else json.dumps(config).encode()
        proc = subprocess.run(["ip", "netns", "exec", host_ns, os.path.join(self.bindir, plugin)],
                              input=stdin, env=env, capture_output=True, timeout=60)
        out = proc.stdout.decode()
        return proc.returncode, (json.loads(out) if out.strip() else None), proc.stderr.decode()


def ip_json(ns: str, *args: str):
    return json.loads(ns_run(ns, ["ip", "-j", *args]).stdout or "[]")
