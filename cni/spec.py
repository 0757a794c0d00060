"""The CNI specification's data: versions, operations, error codes and result formats.

Kept free of heavy imports: every plugin executable loads this module on its start-up path.
Results are held internally in the 1.x shape (``ips`` without ``version``) and converted to
the version the runtime asked for only when written out, as libcni's ``types`` package does.
"""
from __future__ import annotations

import ipaddress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Versions in the order of the spec's history; the ones podnet's plugins speak.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
CURRENT_VERSION = "1.1.0"

# Which operations each version knows (VERSION is always allowed).
_OPERATIONS = {
    "0.3.0": {"ADD", "DEL", "VERSION"},
    "0.3.1": {"ADD", "DEL", "VERSION"},
    "0.4.0": {"ADD", "DEL", "CHECK", "VERSION"},
    "1.0.0": {"ADD", "DEL", "CHECK", "VERSION"},
    "1.1.0": {"ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS"},
}
ALL_COMMANDS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")

# Well-known error codes (spec section "Error").
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
CONTAINER_UNKNOWN = 3
INVALID_ENV = 4
IO_FAILURE = 5
DECODE_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
PLUGIN_NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# Plugin-specific codes start at 100, as in the Go plugins' convention.
INTERNAL = 999


class CNIError(Exception):
    """An error the plugin reports to the runtime as the spec's error JSON."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self, cni_version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"cniVersion": cni_version, "code": self.code, "msg": self.msg}
        if self.details:
            out["details"] = self.details
        return out

    def __repr__(self) -> str:
        return f"CNIError({self.code}, {self.msg!r})"


def version_tuple(version: str) -> tuple[int, int, int]:
    try:
        parts = tuple(int(p) for p in version.split("."))
    except ValueError:
        raise CNIError(INCOMPATIBLE_VERSION, f"invalid cniVersion {version!r}") from None
    if len(parts) != 3:
        raise CNIError(INCOMPATIBLE_VERSION, f"invalid cniVersion {version!r}")
    return parts  # type: ignore[return-value]


def check_version(version: Any) -> str:
    if not isinstance(version, str) or not version:
        raise CNIError(INCOMPATIBLE_VERSION, "config is missing cniVersion")
    if version not in SUPPORTED_VERSIONS:
        version_tuple(version)
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI versions; config is {version!r}, "
            f"plugin supports {list(SUPPORTED_VERSIONS)}",
        )
    return version


def command_allowed(version: str, command: str) -> bool:
    return command in _OPERATIONS.get(version, set())


def version_result() -> dict[str, Any]:
    return {"cniVersion": CURRENT_VERSION, "supportedVersions": list(SUPPORTED_VERSIONS)}


# --- results ---------------------------------------------------------------------------


def parse_result(raw: Any) -> dict[str, Any]:
    """Read a result of any supported version (a prevResult) into the internal 1.x shape."""
    if not isinstance(raw, dict):
        raise CNIError(DECODE_FAILURE, "prevResult must be a JSON object")
    version = raw.get("cniVersion") or CURRENT_VERSION
    if version not in SUPPORTED_VERSIONS:
        raise CNIError(INCOMPATIBLE_VERSION, f"prevResult has unsupported cniVersion {version!r}")
    result: dict[str, Any] = {}
    interfaces = raw.get("interfaces") or []
    if not isinstance(interfaces, list):
        raise CNIError(DECODE_FAILURE, "prevResult.interfaces must be a list")
    result["interfaces"] = [dict(i) for i in interfaces if isinstance(i, dict)]
    ips = []
    for ip in raw.get("ips") or []:
        if not isinstance(ip, dict) or "address" not in ip:
            raise CNIError(DECODE_FAILURE, "prevResult.ips entries need an address")
        entry = {k: v for k, v in ip.items() if k != "version"}
        _check_cidr(entry["address"], "prevResult.ips.address")
        ips.append(entry)
    result["ips"] = ips
    routes = raw.get("routes") or []
    result["routes"] = [dict(r) for r in routes if isinstance(r, dict)]
    if raw.get("dns"):
        result["dns"] = dict(raw["dns"])
    return result


def _check_cidr(value: Any, field: str) -> None:
    try:
        ipaddress.ip_interface(value)
    except (TypeError, ValueError):
        raise CNIError(DECODE_FAILURE, f"{field}: invalid CIDR {value!r}") from None


def format_result(result: dict[str, Any], version: str) -> dict[str, Any]:
    """Convert an internal result to the wire form of ``version`` (0.3.0 ... 1.1.0)."""
    major = version_tuple(version)[0]
    out: dict[str, Any] = {"cniVersion": version}
    interfaces = [_format_interface(i, version) for i in result.get("interfaces", [])]
    if interfaces:
        out["interfaces"] = interfaces
    ips = []
    for ip in result.get("ips", []):
        entry: dict[str, Any] = {}
        if major == 0:
            family = ipaddress.ip_interface(ip["address"]).version
            entry["version"] = str(family)
        if "interface" in ip:
            entry["interface"] = ip["interface"]
        entry["address"] = ip["address"]
        if ip.get("gateway"):
            entry["gateway"] = ip["gateway"]
        ips.append(entry)
    if ips:
        out["ips"] = ips
    routes = [_format_route(r, version) for r in result.get("routes", [])]
    if routes:
        out["routes"] = routes
    out["dns"] = dict(result.get("dns") or {})
    return out


_INTERFACE_FIELDS = {
    "0": ("name", "mac", "sandbox"),
    "1.0": ("name", "mac", "sandbox"),
    "1.1": ("name", "mac", "mtu", "sandbox", "socketPath", "pciID"),
}
_ROUTE_FIELDS = {
    "0": ("dst", "gw"),
    "1.0": ("dst", "gw"),
    "1.1": ("dst", "gw", "mtu", "advmss", "priority", "table", "scope"),
}


def _field_key(version: str) -> str:
    major, minor, _ = version_tuple(version)
    return "0" if major == 0 else f"{major}.{minor}"


def _format_interface(iface: dict[str, Any], version: str) -> dict[str, Any]:
    fields = _INTERFACE_FIELDS[_field_key(version)]
    out = {k: iface[k] for k in fields if iface.get(k) not in (None, "", 0)}
    out.setdefault("name", iface.get("name", ""))
    return out


def _format_route(route: dict[str, Any], version: str) -> dict[str, Any]:
    fields = _ROUTE_FIELDS[_field_key(version)]
    return {k: route[k] for k in fields if route.get(k) not in (None, "")}
