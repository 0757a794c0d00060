"""The built-in server and the probes, inside a throwaway namespace (sockets made there)."""
from __future__ import annotations

import os
import socket
import sys
import time

import pytest

from podnet import netns, pods
from podnet.probe import probe, probe_tcp, probe_udp


@pytest.fixture
def served(netns_factory, tmp_path):
    """(ns, server pid): serve-hostname as "web-1" on TCP 8080, UDP 8080 and UDP 5353."""
    ns = netns_factory("srv")
    ready = tmp_path / "ready"
    env = {"PATH": pods.CLEAN_PATH,
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))}
    pid, start = pods.start_process(
        [sys.executable, "-m", "podnet.serve_hostname", "--name", "web-1", "--tcp", "8080",
         "--udp", "8080", "--udp", "5353", "--ready-file", str(ready)],
        env, ns, str(tmp_path / "srv.log"))
    try:
        deadline = time.monotonic() + 20
        while not ready.exists():
            assert pods.is_alive(pid, start), (tmp_path / "srv.log").read_text()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        yield ns, pid
    finally:
        pods.stop_process(pid, start, grace=2)
        assert not pods.is_alive(pid, start)


def test_tcp_answers_the_name(served):
    ns, _ = served
    r = probe_tcp(ns, "127.0.0.1", 8080)
    assert r.ok and r.answer == "web-1"
    r6 = probe_tcp(ns, "::1", 8080)
    assert r6.ok and r6.answer == "web-1"


def test_http_get_gets_200_and_the_name(served):
    ns, _ = served
    with netns.entered(ns):
        s = socket.socket()
    with s:
        s.settimeout(5)
        s.connect(("127.0.0.1", 8080))
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and data.endswith(b"\r\n\r\nweb-1")


def test_udp_answers_on_every_declared_port(served):
    ns, _ = served
    for port in (8080, 5353):
        r = probe_udp(ns, "127.0.0.1", port)
        assert r.ok and r.answer == "web-1", port


def test_closed_ports_fail_with_the_reason(served):
    ns, _ = served
    assert probe(ns, "127.0.0.1", 9999, "TCP").error == "refused"
    assert probe(ns, "127.0.0.1", 9999, "UDP").error == "refused"   # ICMP port unreachable


def test_silent_udp_peer_times_out(served):
    ns, _ = served
    with netns.entered(ns):
        mute = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with mute:
        mute.bind(("127.0.0.1", 7777))
        r = probe(ns, "127.0.0.1", 7777, "UDP", timeout=0.3)
    assert not r.ok and r.error == "timeout"


def test_probe_socket_lives_in_the_pod_namespace(served):
    """The probe socket is made in the namespace given, not the caller's: the root namespace
    has no server on 8080, the pod's does."""
    ns, _ = served
    with netns.entered(ns):
        inside = os.stat("/proc/thread-self/ns/net").st_ino
    from podnet.probe import make_socket
    s = make_socket(ns, socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.listen(1)
        # connect from inside the same namespace: only works if the listener is there
        assert probe_tcp(ns, "127.0.0.1", port, timeout=1).ok
    assert inside != os.stat("/proc/thread-self/ns/net").st_ino
