"""Probe formatting and the serve-hostname answer logic (pure; sockets are tested in
tests/integration/test_serve_hostname.py inside a namespace)."""
from __future__ import annotations

import argparse

import pytest

from podnet import cli_pods
from podnet.probe import ProbeResult, _error_name, _first_line, describe, matrix_table
from podnet.serve_hostname import answer_tcp
from tests.fakes.objects import object_store, pod


def test_describe_ok_and_failed():
    ok = ProbeResult(True, answer="web-1", ms=1.234)
    assert describe("default/a", "default/b", 8080, "tcp", ok) == \
        "default/a -> default/b:8080/TCP ok (answer: web-1, 1.2 ms)"
    bad = ProbeResult(False, error="timeout", ms=2000)
    assert describe("default/a", "10.1.0.2", 53, "UDP", bad) == \
        "default/a -> 10.1.0.2:53/UDP FAILED (timeout)"
    assert "no answer" in describe("a", "b", 1, "TCP", ProbeResult(True, ms=0.5))


def test_error_names():
    assert _error_name(TimeoutError()) == "timeout"
    assert _error_name(ConnectionRefusedError(111, "Connection refused")) == "refused"
    assert _error_name(OSError(113, "No route to host")) == "unreachable"


def test_first_line_of_plain_and_http_answers():
    assert _first_line(b"web-1\n") == "web-1"
    assert _first_line(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nweb-1") == "web-1"
    assert _first_line(b"") == ""


def test_serve_hostname_answers_plain_and_http():
    assert answer_tcp("web-1", b"") == b"web-1\n"
    assert answer_tcp("web-1", b"hello\n") == b"web-1\n"
    http = answer_tcp("web-1", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert http.startswith(b"HTTP/1.1 200 OK\r\n") and http.endswith(b"\r\n\r\nweb-1")
    assert b"Content-Length: 5" in http
    assert not answer_tcp("web-1", b"HEAD / HTTP/1.1\r\n\r\n").endswith(b"web-1")


def test_matrix_table_marks_each_pair():
    names = ["default/a", "default/b"]
    results = {("default/a", "default/a"): ProbeResult(True), ("default/a", "default/b"): ProbeResult(False),
               ("default/b", "default/a"): ProbeResult(True)}
    lines = matrix_table(names, results).splitlines()
    assert len(lines) == 3
    assert lines[1].split()[-2:] == ["✓", "✗"]
    assert lines[2].split()[-2:] == ["✓", "-"]


def test_running_pods_use_the_deterministic_netns():
    p = pod("a", node_name="n1")
    p["status"] = {"phase": "Running", "podIP": "10.1.0.5"}
    pending = pod("b", node_name="n1")
    assert cli_pods.running_pods([pending, p]) == [("default/a", "pn-n1-default-a", "10.1.0.5")]


def test_resolve_target_ip_pod_and_service():
    store = object_store()
    p = store.create(pod("a", node_name="n1"))
    store.patch_status("pods", "default", "a", {"phase": "Running", "podIP": "10.1.0.5"})
    store.create({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "web"},
                  "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 80}]}})
    assert cli_pods.resolve_target(store, "10.2.0.1") == "10.2.0.1"
    assert cli_pods.resolve_target(store, "default/a") == "10.1.0.5"
    assert cli_pods.resolve_target(store, "default/web") == "10.96.0.10"
    with pytest.raises(cli_pods.CLIError, match="neither an IP nor a pod or service"):
        cli_pods.resolve_target(store, "default/nothing")
    assert p["metadata"]["uid"]


def test_pod_netns_refuses_pods_not_running():
    with pytest.raises(cli_pods.CLIError, match="not running"):
        cli_pods.pod_netns(pod("a"))
    p = pod("a", node_name="n1")
    p["status"] = {"phase": "Running"}
    assert cli_pods.pod_netns(p) == "pn-n1-default-a"


def test_register_adds_the_commands():
    parser = argparse.ArgumentParser()
    cli_pods.register(parser.add_subparsers(dest="cmd"))
    a = parser.parse_args(["exec", "-n", "kube", "web", "--", "ip", "addr"])
    assert a.pod == "web" and a.namespace == "kube" and a.argv[-2:] == ["ip", "addr"]
    a = parser.parse_args(["probe", "default/a", "default/b", "--port", "80", "--protocol", "udp"])
    assert a.protocol == "UDP" and a.port == 80 and a.func is cli_pods.cmd_probe
    a = parser.parse_args(["probe-matrix", "--port", "8080", "-o", "json"])
    assert a.output == "json"
    a = parser.parse_args(["runner", "--node", "n1", "--cni-bin", "/b", "--cni-conf", "/c",
                           "--state-dir", "/s"])
    assert a.node == "n1" and not hasattr(a, "etcd_endpoints")
