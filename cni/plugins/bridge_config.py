"""The ``bridge`` plugin's configuration, parsed and validated (pure)."""
from __future__ import annotations

from cni import spec
from cni.spec import CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

DEFAULT_BRIDGE = "cni0"
_HEX = frozenset("0123456789abcdefABCDEF")
_BOOL_FIELDS = ("isGateway", "isDefaultGateway", "forceAddress", "ipMasq", "hairpinMode",
                "promiscMode", "macspoofchk", "enabledad")


def _invalid(msg: str) -> CNIError:
    return CNIError(spec.INVALID_CONFIG, msg)


def _is_mac(value: str) -> bool:
    parts = value.split(":")
    return len(parts) == 6 and all(len(p) == 2 and _HEX.issuperset(p) for p in parts)


class BridgeConfig:
    """The fields the Go plugin's NetConf has (a plain class: dataclasses cost start-up time)."""

    def __init__(self, network: str, bridge: str = DEFAULT_BRIDGE, is_gateway: bool = False,
                 is_default_gateway: bool = False, force_address: bool = False,
                 ip_masq: bool = False, mtu: int = 0, hairpin: bool = False,
                 promisc: bool = False, vlan: int = 0, macspoofchk: bool = False,
                 enable_dad: bool = False, mac: str = "", ipam_type: str = "") -> None:
        self.network, self.bridge = network, bridge
        self.is_gateway, self.is_default_gateway = is_gateway, is_default_gateway
        self.force_address, self.ip_masq, self.mtu = force_address, ip_masq, mtu
        self.hairpin, self.promisc, self.vlan = hairpin, promisc, vlan
        self.macspoofchk, self.enable_dad = macspoofchk, enable_dad
        self.mac, self.ipam_type = mac, ipam_type

    @property
    def is_layer3(self) -> bool:
        return bool(self.ipam_type)


def parse(config: Mapping[str, Any], cni_args: Mapping[str, str]) -> BridgeConfig:
    for key in _BOOL_FIELDS:
        if key in config and not isinstance(config[key], bool):
            raise _invalid(f"failed to load netconf: {key} must be a boolean, got {config[key]!r}")
    bridge = config.get("bridge") or DEFAULT_BRIDGE
    if not isinstance(bridge, str) or not 0 < len(bridge) <= 15 or bridge in (".", "..") \
            or any(c in "/:" or c.isspace() for c in bridge):
        raise _invalid(f"failed to load netconf: invalid bridge name {bridge!r}")
    mtu = config.get("mtu", 0)
    if not isinstance(mtu, int) or isinstance(mtu, bool) or mtu < 0 or mtu > 65535:
        raise _invalid(f"failed to load netconf: invalid mtu {mtu!r}")
    if 0 < mtu < 68:
        raise _invalid(f"invalid mtu {mtu}: must be at least 68")
    vlan = config.get("vlan", 0)
    if not isinstance(vlan, int) or isinstance(vlan, bool) or vlan < 0 or vlan > 4094:
        raise _invalid(f"invalid VLAN ID {vlan!r} (must be between 0 and 4094)")
    ipam = config.get("ipam") or {}
    if not isinstance(ipam, dict):
        raise _invalid("failed to load netconf: ipam must be an object")
    ipam_type = ipam.get("type") or ""
    if not isinstance(ipam_type, str):
        raise _invalid("failed to load netconf: ipam.type must be a string")
    c = BridgeConfig(
        network=config["name"],
        bridge=bridge,
        is_gateway=config.get("isGateway", False),
        is_default_gateway=config.get("isDefaultGateway", False),
        force_address=config.get("forceAddress", False),
        ip_masq=config.get("ipMasq", False),
        mtu=mtu,
        hairpin=config.get("hairpinMode", False),
        promisc=config.get("promiscMode", False),
        vlan=vlan,
        macspoofchk=config.get("macspoofchk", False),
        enable_dad=config.get("enabledad", False),
        mac=_mac(config, cni_args),
        ipam_type=ipam_type,
    )
    if c.is_default_gateway:
        c.is_gateway = True
    if c.hairpin and c.promisc:
        raise _invalid("cannot set hairpin mode and promiscuous mode at the same time.")
    return c


def _mac(config: Mapping[str, Any], cni_args: Mapping[str, str]) -> str:
    """MAC from CNI_ARGS ``MAC=``, then ``args.cni.mac``, then ``runtimeConfig.mac`` (last wins)."""
    mac = cni_args.get("MAC", "")
    args = config.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict) and args["cni"].get("mac"):
        mac = args["cni"]["mac"]
    runtime = config.get("runtimeConfig")
    if isinstance(runtime, dict) and runtime.get("mac"):
        mac = runtime["mac"]
    if mac and (not isinstance(mac, str) or not _is_mac(mac)):
        raise _invalid(f"invalid MAC address {mac!r}")
    return mac.lower() if mac else ""
