"""``/run/flannel/subnet.env``: written once the node has its lease, read by the CNI plugin.

The format and order are upstream's ``WriteSubnetFile`` (IPv4 only)::

    FLANNEL_NETWORK=10.244.0.0/16
    FLANNEL_SUBNET=10.244.1.1/24
    FLANNEL_MTU=1450
    FLANNEL_IPMASQ=false

``FLANNEL_SUBNET`` is the subnet's first address (network + 1) with the subnet's length.
The file is replaced atomically (temporary file in the same directory, fsync, rename) with
mode 0644 regardless of the umask, as upstream's renameio call does, so a reader never sees
half a file.  The reader accepts what godotenv accepts in practice (comments, ``export``,
quotes) because upstream reads the file back with godotenv.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import tempfile
from dataclasses import dataclass
from ipaddress import IPv4Interface, IPv4Network

log = logging.getLogger(__name__)

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"


class SubnetEnvError(ValueError):
    """subnet.env is missing a key or holds a malformed value."""


@dataclass(frozen=True)
class SubnetEnv:
    network: IPv4Network
    subnet: IPv4Interface            # e.g. 10.244.1.1/24: the gateway address and length
    mtu: int
    ipmasq: bool


def render_subnet_env(network: IPv4Network, subnet: IPv4Network, mtu: int, ipmasq: bool) -> str:
    first = IPv4Interface((int(subnet.network_address) + 1, subnet.prefixlen))
    return (f"FLANNEL_NETWORK={network}\n"
            f"FLANNEL_SUBNET={first}\n"
            f"FLANNEL_MTU={int(mtu)}\n"
            f"FLANNEL_IPMASQ={'true' if ipmasq else 'false'}\n")


def write_subnet_env(path: str, network: IPv4Network, subnet: IPv4Network, mtu: int,
                     ipmasq: bool) -> None:
    """Atomically replace ``path`` with the rendered file (creating its directory)."""
    write_atomic(path, render_subnet_env(network, subnet, mtu, ipmasq).encode())


def write_atomic(path: str, data: bytes, mode: int = 0o644) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def parse_env(text: str) -> dict[str, str]:
    """KEY=VALUE lines; ``#`` comments, ``export`` prefixes and quotes as godotenv allows."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export "):].lstrip()
        key, sep, value = line.partition("=")
        if not sep:
            continue
        key, value = key.strip(), value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def read_env(path: str) -> dict[str, str]:
    with open(path, encoding="utf-8") as f:
        return parse_env(f.read())


def parse_subnet_env(text: str) -> SubnetEnv:
    """The four values the flannel CNI plugin needs; :class:`SubnetEnvError` if any is bad."""
    values = parse_env(text)
    try:
        network_text = values["FLANNEL_NETWORK"]
        subnet_text = values["FLANNEL_SUBNET"]
        mtu_text = values["FLANNEL_MTU"]
        masq_text = values["FLANNEL_IPMASQ"]
    except KeyError as exc:
        raise SubnetEnvError(f"{exc.args[0]} not found in subnet file") from None
    try:
        network = ipaddress.IPv4Network(network_text.split(",")[0], strict=False)
        subnet = ipaddress.IPv4Interface(subnet_text.split(",")[0])
        mtu = int(mtu_text)
    except ValueError as exc:
        raise SubnetEnvError(f"malformed subnet file: {exc}") from None
    if masq_text.lower() not in ("true", "false", "1", "0", "t", "f"):
        raise SubnetEnvError(f"malformed subnet file: FLANNEL_IPMASQ={masq_text!r}")
    return SubnetEnv(network, subnet, mtu, masq_text.lower() in ("true", "1", "t"))


def read_subnet_env(path: str = DEFAULT_SUBNET_FILE) -> SubnetEnv:
    with open(path, encoding="utf-8") as f:
        return parse_subnet_env(f.read())


def read_cidr(path: str, key: str) -> IPv4Network | None:
    """Upstream ``ReadCIDRFromSubnetFile``: the network of ``key`` (e.g. the previous
    FLANNEL_SUBNET 10.244.1.1/24 → 10.244.1.0/24); None if absent, unreadable or ambiguous."""
    try:
        values = read_env(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        log.error("Couldn't fetch previous %s from subnet file at %s: %s", key, path, exc)
        return None
    text = values.get(key)
    if not text:
        log.warning("no subnet found for key: %s in file: %s", key, path)
        return None
    cidrs = []
    for part in text.split(","):
        try:
            if "/" not in part:
                raise ValueError(f"invalid CIDR address: {part}")
            cidrs.append(ipaddress.IPv4Network(part.strip(), strict=False))
        except ValueError as exc:
            log.error("Couldn't parse previous %s from subnet file at %s: %s", key, path, exc)
    if len(cidrs) != 1:
        if len(cidrs) > 1:
            log.error("error reading subnet: more than 1 entry found for key: %s in file %s", key, path)
        return None
    return cidrs[0]


def previous_subnet(path: str = DEFAULT_SUBNET_FILE) -> IPv4Network | None:
    return read_cidr(path, "FLANNEL_SUBNET")
