"""flannel's <prefix>/config: upstream's defaults and its exact error messages."""
from __future__ import annotations

import json
from ipaddress import IPv4Address, IPv4Network

import pytest

from flannel_py.config import ConfigError, backend_options, parse_config


def cfg(**fields):
    return parse_config(json.dumps(fields))


@pytest.mark.parametrize("network, subnet_len, smin, smax", [
    ("10.244.0.0/16", 24, "10.244.1.0", "10.244.255.0"),
    ("10.0.0.0/8", 24, "10.0.1.0", "10.255.255.0"),
    ("10.5.0.0/22", 24, "10.5.1.0", "10.5.3.0"),
    ("10.5.0.0/23", 25, "10.5.0.128", "10.5.1.128"),      # too small for /24s: len + 2
    ("10.5.0.0/28", 30, "10.5.0.4", "10.5.0.12"),
    ("10.244.7.9/16", 24, "10.244.1.0", "10.244.255.0"),  # masked like net.ParseCIDR
])
def test_defaults(network, subnet_len, smin, smax):
    c = cfg(Network=network)
    assert (c.subnet_len, c.subnet_min, c.subnet_max) == (subnet_len, IPv4Address(smin), IPv4Address(smax))
    assert c.network == IPv4Network(network, strict=False)
    assert c.backend_type == "udp"


def test_explicit_fields_and_case_insensitive_names():
    c = parse_config('{"network": "10.1.0.0/16", "subnetlen": 26, "SubnetMin": "10.1.4.0", '
                     '"SUBNETMAX": "10.1.9.192", "Backend": {"Type": "vxlan", "vni": 7, '
                     '"DirectRouting": true}}')
    assert (c.subnet_len, str(c.subnet_min), str(c.subnet_max)) == (26, "10.1.4.0", "10.1.9.192")
    b = backend_options(c)
    assert (b.type, b.vni, b.port, b.direct_routing) == ("vxlan", 7, 8472, True)


@pytest.mark.parametrize("backend, expected", [
    ({"Type": "udp"}, ("udp", 8285)),
    ({"Type": "udp", "Port": 9000}, ("udp", 9000)),
    ({"Type": "vxlan"}, ("vxlan", 8472)),
    ({"Type": "vxlan", "Port": 4789}, ("vxlan", 4789)),
    ({"Type": "host-gw"}, ("host-gw", 0)),
])
def test_backend_defaults(backend, expected):
    b = backend_options(cfg(Network="10.244.0.0/16", Backend=backend))
    assert (b.type, b.port) == expected
    if b.type == "vxlan":
        assert b.vni == 1 and b.learning is False and b.direct_routing is False


def test_backend_without_type_is_empty_like_upstream():
    assert cfg(Network="10.244.0.0/16", Backend={"VNI": 2}).backend_type == ""


@pytest.mark.parametrize("fields, message", [
    ({}, "please define a correct Network parameter in the flannel config"),
    ({"Network": "0.0.0.0/0"}, "please define a correct Network parameter in the flannel config"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 31}, "SubnetLen must be less than /31"),
    ({"Network": "10.0.0.0/16", "SubnetLen": 17},
     "network must be able to accommodate at least four subnets"),
    ({"Network": "10.0.0.0/29"}, "network is too small. Minimum useful network prefix is /28"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "10.1.0.0"}, "SubnetMin is not in the range of the Network"),
    ({"Network": "10.0.0.0/16", "SubnetMax": "10.1.0.0"}, "SubnetMax is not in the range of the Network"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "10.0.1.5"},
     "SubnetMin is not on a SubnetLen boundary: 10.0.1.5"),
    ({"Network": "10.0.0.0/16", "SubnetMax": "10.0.9.128"},
     "SubnetMax is not on a SubnetLen boundary: 10.0.9.128"),
    ({"Network": "10.0.0.0"}, "invalid CIDR address: 10.0.0.0"),
    ({"Network": "fd00::/64"}, "invalid IPv4 CIDR format"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "nope"}, "invalid IP address format"),
    ({"Network": "10.0.0.0/16", "SubnetMin": "fd00::1"}, "invalid IPv4 address format"),
    ({"Network": "10.0.0.0/16", "SubnetLen": "24"},
     "json: cannot unmarshal string into Go struct field Config.SubnetLen of type uint"),
    ({"Network": "10.0.0.0/16", "Backend": "vxlan"},
     "error decoding Backend property of config: json: cannot unmarshal string into Go value "
     "of type struct { Type string }"),
])
def test_validation_messages(fields, message):
    with pytest.raises(ConfigError) as err:
        cfg(**fields)
    assert str(err.value) == message


def test_invalid_json_is_a_config_error():
    with pytest.raises(ConfigError, match="invalid JSON"):
        parse_config("{Network: 10.0.0.0/8")


def test_ipv6_is_refused_clearly():
    with pytest.raises(ConfigError, match="IPv6"):
        cfg(Network="10.0.0.0/16", EnableIPv6=True, IPv6Network="fd00::/56")


def test_contains_subnet_is_upstreams_compat_check():
    c = cfg(Network="10.244.0.0/16")
    assert c.contains_subnet(IPv4Network("10.244.3.0/24"))
    assert not c.contains_subnet(IPv4Network("10.244.0.0/24"))        # below SubnetMin
    assert not c.contains_subnet(IPv4Network("10.244.3.0/25"))        # wrong length
    assert not c.contains_subnet(IPv4Network("10.245.3.0/24"))
