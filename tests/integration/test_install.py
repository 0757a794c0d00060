"""`podnet cni install`: both executable forms answer the same, through the daemon or alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from cni import registry

CONF = {"cniVersion": "1.0.0", "name": "inst", "type": "bridge", "bridge": "br-inst",
        "isGateway": True, "ipam": {"type": "host-local", "subnet": "10.26.0.0/24"}}


def run_plugin(bindir, host, command, conf, netns, extra=None):
    env = {"PATH": os.environ["PATH"], "CNI_COMMAND": command, "CNI_CONTAINERID": "i1",
           "CNI_NETNS": netns, "CNI_IFNAME": "eth0", "CNI_PATH": bindir, **(extra or {})}
    proc = subprocess.run(["ip", "netns", "exec", host, os.path.join(bindir, "bridge")],
                          input=json.dumps(conf).encode(), env=env, capture_output=True)
    return proc.returncode, proc.stdout.decode()


@pytest.mark.parametrize("native", [True, False])
def test_install_forms_with_and_without_daemon(netns_factory, tmp_path, native):
    bindir, sock = str(tmp_path / "bin"), str(tmp_path / "cni.sock")
    flag = "--native" if native else "--no-native"
    subprocess.run([sys.executable, "-m", "podnet", "cni", "install", "--dir", bindir,
                    "--socket", sock, flag], check=True, capture_output=True)
    assert sorted(os.listdir(bindir)) == sorted(registry.available())
    head = open(os.path.join(bindir, "bridge"), "rb").read(4)
    assert (head == b"\x7fELF") == native
    host, pod = netns_factory("host"), netns_factory("pod")
    conf = {**CONF, "ipam": {**CONF["ipam"], "dataDir": str(tmp_path / "ipam")}}
    # no daemon: the executable works standalone
    code, out = run_plugin(bindir, host, "ADD", conf, f"/run/netns/{pod}")
    assert code == 0, out
    assert json.loads(out)["ips"][0]["address"] == "10.26.0.2/24"
    daemon = subprocess.Popen([sys.executable, "-m", "podnet", "cni", "daemon", "--socket", sock],
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.02)
        # through the daemon: same answers, same kernel state
        code, out = run_plugin(bindir, host, "DEL", conf, f"/run/netns/{pod}")
        assert (code, out) == (0, "")
        code, out = run_plugin(bindir, host, "ADD", conf, f"/run/netns/{pod}")
        assert code == 0 and json.loads(out)["ips"][0]["address"] == "10.26.0.3/24", out
        code, out = run_plugin(bindir, host, "ADD", {**conf, "cniVersion": "9.0.0"}, f"/run/netns/{pod}")
        assert code == 1 and json.loads(out)["code"] == 1
    finally:
        daemon.terminate()
        daemon.wait(10)
    code, out = run_plugin(bindir, host, "DEL", conf, f"/run/netns/{pod}")
    assert (code, out) == (0, "")
    assert not [p for p in os.listdir(tmp_path / "ipam" / "inst") if p[0].isdigit()]
