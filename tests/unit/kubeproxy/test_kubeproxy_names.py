"""Chain names must equal upstream kube-proxy's byte for byte (vectors from its tests)."""
from __future__ import annotations

import pytest

from kubeproxy_py.iptables import names
from kubeproxy_py.model import Endpoint, ServicePort


@pytest.mark.parametrize("port_name,proto,expected", [
    ("ns1/svc1:p80", "tcp", "XPGD46QRK7WJZT7O"),
    ("ns2/svc2:p80", "tcp", "GNZBNJ2PO5MGZ6GT"),
    ("ns2/svc2:p8080", "tcp", "2VJB64SDSIJUP5T6"),
    ("ns3/svc3:p80", "tcp", "X27LE4BHSL4DOUIK"),
    ("ns4/svc4:p80", "tcp", "4SW47YFZTEDKD3PK"),
    ("ns5/svc5:p80", "tcp", "NUKIZ6OKUXPJNT4C"),
])
def test_port_proto_hash_matches_upstream(port_name, proto, expected):
    assert names.port_proto_hash(port_name, proto) == expected
    assert names.service_chain(port_name, proto) == "KUBE-SVC-" + expected
    assert names.local_chain(port_name, proto) == "KUBE-SVL-" + expected
    assert names.external_chain(port_name, proto) == "KUBE-EXT-" + expected
    assert names.firewall_chain(port_name, proto) == "KUBE-FW-" + expected


@pytest.mark.parametrize("port_name,endpoint,expected", [
    ("ns1/svc1:p80", "10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ"),
    ("ns2/svc2:p80", "10.180.0.2:80", "KUBE-SEP-RS4RBKLTHTF2IUXJ"),
    ("ns3/svc3:p80", "10.180.0.3:80", "KUBE-SEP-OYPFS5VJICHGATKP"),
    ("ns4/svc4:p80", "10.180.0.4:80", "KUBE-SEP-UKSFD7AGPMPPLUHC"),
    ("ns4/svc4:p80", "10.180.0.5:80", "KUBE-SEP-C6EBXVWJJZMIWKLZ"),
])
def test_endpoint_chain_matches_upstream(port_name, endpoint, expected):
    assert names.endpoint_chain(port_name, "tcp", endpoint) == expected


def test_protocol_is_part_of_the_hash():
    assert names.service_chain("ns1/svc1:p80", "udp") != names.service_chain("ns1/svc1:p80", "tcp")


def test_chain_names_fit_iptables_limit():
    assert len(names.endpoint_chain("a" * 300, "sctp", "[fd00::1]:65535")) <= 28
    assert len(names.firewall_chain("x/y", "tcp")) <= 28


def test_model_objects_carry_upstream_names():
    sp = ServicePort("ns1", "svc1", "p80", "TCP", "172.30.0.41", 80)
    assert sp.name_string == "ns1/svc1:p80"
    assert (sp.svc_chain, sp.svl_chain, sp.ext_chain, sp.fw_chain) == (
        "KUBE-SVC-XPGD46QRK7WJZT7O", "KUBE-SVL-XPGD46QRK7WJZT7O",
        "KUBE-EXT-XPGD46QRK7WJZT7O", "KUBE-FW-XPGD46QRK7WJZT7O")
    ep = Endpoint.for_port(sp.key, "10.180.0.1", 80)
    assert (ep.text, ep.chain) == ("10.180.0.1:80", "KUBE-SEP-SXIVWICOYRO3J4NJ")


def test_unnamed_port_uses_bare_service_name():
    sp = ServicePort("ns1", "svc1", "", "TCP", "172.30.0.41", 80)
    assert sp.name_string == "ns1/svc1"
    assert sp.svc_chain == names.service_chain("ns1/svc1", "tcp")


def test_ipv6_endpoint_is_bracketed_before_hashing():
    ep = Endpoint.for_port(("ns", "s", "", "TCP"), "fd00::1", 80)
    assert ep.text == "[fd00::1]:80"
    assert ep.chain == names.endpoint_chain("ns/s", "tcp", "[fd00::1]:80")


def test_is_service_chain():
    assert names.is_service_chain("KUBE-SEP-SXIVWICOYRO3J4NJ")
    assert names.is_service_chain("KUBE-FW-XPGD46QRK7WJZT7O")
    assert not names.is_service_chain("KUBE-SERVICES")
    assert not names.is_service_chain("KUBE-MARK-MASQ")
