"""The network configuration at ``<prefix>/config``, parsed and checked as upstream flannel does.

Upstream decodes the JSON with Go's ``encoding/json`` (field names match case-insensitively,
``Network`` is masked to its network address, a missing ``Backend`` means ``udp``) and then
fills in defaults in ``CheckNetworkConfig``: ``SubnetLen`` 24 when the network is a /22 or
larger, else the network's length + 2; ``SubnetMin`` the second subnet, ``SubnetMax`` the
last one.  The error texts below are upstream's, so a user searching for them finds the
flannel documentation.  Only IPv4 networks are supported here.
"""
from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass, field
from ipaddress import IPv4Address, IPv4Network
from typing import Any

DEFAULT_BACKEND = "udp"
DEFAULT_UDP_PORT = 8285
DEFAULT_VXLAN_PORT = 8472        # the Linux kernel's VXLAN port, which flannel uses (Port 0)
DEFAULT_VNI = 1


class ConfigError(ValueError):
    """The flannel network config is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class Config:
    network: IPv4Network
    subnet_len: int
    subnet_min: IPv4Address
    subnet_max: IPv4Address
    backend_type: str
    backend: dict[str, Any] = field(default_factory=dict)   # the raw Backend object
    enable_ipv4: bool = True
    enable_ipv6: bool = False
    enable_nftables: bool = False

    def subnet_size(self) -> int:
        return 1 << (32 - self.subnet_len)

    def contains_subnet(self, subnet: IPv4Network) -> bool:
        """Upstream's ``isSubnetConfigCompat``: within [SubnetMin, SubnetMax], right length."""
        return (subnet.prefixlen == self.subnet_len
                and self.subnet_min <= subnet.network_address <= self.subnet_max)


@dataclass(frozen=True)
class BackendOptions:
    """The Backend fields the udp, vxlan and host-gw backends read, with their defaults."""
    type: str
    port: int
    vni: int = DEFAULT_VNI
    mtu: int = 0                   # 0: derive from the external interface
    gbp: bool = False
    learning: bool = False
    direct_routing: bool = False


# -- Go encoding/json look-alikes ---------------------------------------------------------

def _lookup(obj: dict[str, Any], name: str) -> tuple[bool, Any]:
    """Field lookup the way encoding/json does it: exact name first, else case-insensitive."""
    if name in obj:
        return True, obj[name]
    lowered = name.lower()
    for k, v in obj.items():
        if k.lower() == lowered:
            return True, v
    return False, None


def _go_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _mismatch(value: Any, struct: str, fld: str, gotype: str) -> ConfigError:
    shown = f"number {value}" if _go_type(value) == "number" else _go_type(value)
    return ConfigError(f"json: cannot unmarshal {shown} into Go struct field "
                       f"{struct}.{fld} of type {gotype}")


def _uint(obj: dict[str, Any], name: str, struct: str, default: int = 0) -> int:
    found, value = _lookup(obj, name)
    if not found or value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or value != int(value) or value < 0:
        raise _mismatch(value, struct, name, "uint")
    return int(value)


def _int(obj: dict[str, Any], name: str, struct: str, default: int) -> int:
    found, value = _lookup(obj, name)
    if not found or value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise _mismatch(value, struct, name, "int")
    return int(value)


def _bool(obj: dict[str, Any], name: str, struct: str, default: bool) -> bool:
    found, value = _lookup(obj, name)
    if not found or value is None:
        return default
    if not isinstance(value, bool):
        raise _mismatch(value, struct, name, "bool")
    return value


def _raw_text(value: Any) -> str:
    """What Go's ``bytes.Trim(j, "\\"")`` leaves of a JSON value."""
    return value if isinstance(value, str) else json.dumps(value)


def parse_ip4(value: Any) -> IPv4Address:
    text = _raw_text(value)
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ConfigError("invalid IP address format") from None
    if isinstance(addr, ipaddress.IPv6Address):
        if addr.ipv4_mapped is not None:
            return addr.ipv4_mapped
        raise ConfigError("invalid IPv4 address format")
    return addr


def parse_ip4_net(value: Any) -> IPv4Network:
    """Go's ``net.ParseCIDR`` + IPv4 check; the result is masked to its network."""
    text = _raw_text(value)
    if "/" not in text:
        raise ConfigError(f"invalid CIDR address: {text}")
    try:
        net = ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ConfigError(f"invalid CIDR address: {text}") from None
    if not isinstance(net, IPv4Network):
        raise ConfigError("invalid IPv4 CIDR format")
    return net


# -- parse and check ------------------------------------------------------------------------

def _backend_type(backend: Any, present: bool) -> str:
    if not present:
        return DEFAULT_BACKEND
    if backend is None:
        return ""
    if not isinstance(backend, dict):
        raise ConfigError(f"error decoding Backend property of config: json: cannot unmarshal "
                          f"{_go_type(backend)} into Go value of type struct {{ Type string }}")
    found, bt = _lookup(backend, "Type")
    if not found or bt is None:
        return ""
    if not isinstance(bt, str):
        raise ConfigError(f"error decoding Backend property of config: json: cannot unmarshal "
                          f"{_go_type(bt)} into Go struct field .Type of type string")
    return bt


def parse_config(text: str | bytes) -> Config:
    """Parse ``<prefix>/config`` and apply upstream's defaults and checks.

    Raises :class:`ConfigError` with upstream's message on any problem.
    """
    try:
        obj = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"invalid JSON in network config: {exc}") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"json: cannot unmarshal {_go_type(obj)} into Go value of type subnet.Config")

    enable_ipv4 = _bool(obj, "EnableIPv4", "Config", True)
    enable_ipv6 = _bool(obj, "EnableIPv6", "Config", False)
    enable_nft = _bool(obj, "EnableNFTables", "Config", False)
    found, network_raw = _lookup(obj, "Network")
    network = parse_ip4_net(network_raw) if found and network_raw is not None else None
    subnet_len = _uint(obj, "SubnetLen", "Config")
    found, v = _lookup(obj, "SubnetMin")
    subnet_min = parse_ip4(v) if found and v is not None else None
    found, v = _lookup(obj, "SubnetMax")
    subnet_max = parse_ip4(v) if found and v is not None else None
    found, backend = _lookup(obj, "Backend")
    backend_type = _backend_type(backend, found)

    if enable_ipv6:
        raise ConfigError("IPv6 networks are not supported by this flanneld (EnableIPv6 is true)")
    if not enable_ipv4:
        raise ConfigError("EnableIPv4 is false: this flanneld needs an IPv4 Network")
    return check_network_config(network, subnet_len, subnet_min, subnet_max, backend_type,
                                backend if isinstance(backend, dict) else {}, enable_nft)


def check_network_config(network: IPv4Network | None, subnet_len: int,
                         subnet_min: IPv4Address | None, subnet_max: IPv4Address | None,
                         backend_type: str, backend: dict[str, Any],
                         enable_nftables: bool = False) -> Config:
    """Upstream's ``CheckNetworkConfig`` for IPv4: defaults and coherence checks."""
    if network is None or (int(network.network_address) == 0 and network.prefixlen == 0):
        raise ConfigError("please define a correct Network parameter in the flannel config")
    plen = network.prefixlen
    if subnet_len > 0:
        if subnet_len > 30:
            raise ConfigError("SubnetLen must be less than /31")
        if subnet_len < plen + 2:
            raise ConfigError("network must be able to accommodate at least four subnets")
    elif plen > 28:
        raise ConfigError("network is too small. Minimum useful network prefix is /28")
    elif plen <= 22:
        subnet_len = 24
    else:
        subnet_len = plen + 2

    size = 1 << (32 - subnet_len)
    base = int(network.network_address)
    if subnet_min is None or int(subnet_min) == 0:
        subnet_min = IPv4Address(base + size)
    elif subnet_min not in network:
        raise ConfigError("SubnetMin is not in the range of the Network")
    if subnet_max is None or int(subnet_max) == 0:
        subnet_max = IPv4Address((base + network.num_addresses - size) & 0xFFFFFFFF)
    elif subnet_max not in network:
        raise ConfigError("SubnetMax is not in the range of the Network")

    mask = (0xFFFFFFFF << (32 - subnet_len)) & 0xFFFFFFFF
    if int(subnet_min) & mask != int(subnet_min):
        raise ConfigError(f"SubnetMin is not on a SubnetLen boundary: {subnet_min}")
    if int(subnet_max) & mask != int(subnet_max):
        raise ConfigError(f"SubnetMax is not on a SubnetLen boundary: {subnet_max}")
    return Config(network=network, subnet_len=subnet_len, subnet_min=subnet_min,
                  subnet_max=subnet_max, backend_type=backend_type, backend=dict(backend),
                  enable_nftables=enable_nftables)


def backend_options(config: Config) -> BackendOptions:
    """The Backend object read the way the udp/vxlan/host-gw backends read it upstream."""
    b, btype = config.backend, config.backend_type
    if btype == "udp":
        return BackendOptions(type=btype, port=_int(b, "Port", "struct { Port int }", DEFAULT_UDP_PORT))
    if btype == "vxlan":
        port = _int(b, "Port", "vxlan.VXLANConfig", 0)
        return BackendOptions(
            type=btype, port=port or DEFAULT_VXLAN_PORT,
            vni=_int(b, "VNI", "vxlan.VXLANConfig", DEFAULT_VNI),
            mtu=_int(b, "MTU", "vxlan.VXLANConfig", 0),
            gbp=_bool(b, "GBP", "vxlan.VXLANConfig", False),
            learning=_bool(b, "Learning", "vxlan.VXLANConfig", False),
            direct_routing=_bool(b, "DirectRouting", "vxlan.VXLANConfig", False))
    return BackendOptions(type=btype, port=0)
