"""host-local's address ranges: parsing, canonicalisation and the round-robin iterator.

Pure (no I/O). Semantics follow the Go plugin: a range defaults to network+1 .. the last
address (minus the broadcast address for IPv4), the gateway defaults to network+1 and is
never handed out, and iteration resumes after the last reserved address, wrapping over the
ranges of the set.
"""
from __future__ import annotations

import ipaddress

from cni import spec
from cni.spec import CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Iterator

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _config_error(msg: str) -> CNIError:
    return CNIError(spec.INVALID_CONFIG, msg)


def parse_ip(value: Any, field: str) -> IPAddress:
    if not isinstance(value, str):
        raise _config_error(f"{field}: expected an IP address string, got {value!r}")
    try:
        return ipaddress.ip_address(value)
    except ValueError:
        raise _config_error(f"{field}: invalid IP address {value!r}") from None


def parse_subnet(value: Any, field: str) -> IPNetwork:
    if not isinstance(value, str) or "/" not in value:
        raise _config_error(f"{field}: invalid CIDR {value!r}")
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise _config_error(f"{field}: invalid CIDR {value!r}") from None
    network = iface.network
    if iface.ip != network.network_address:
        raise _config_error(
            f"{field}: network {value} has host bits set; for a subnet mask of length "
            f"{network.prefixlen} the network address is {network.network_address}")
    if network.prefixlen > network.max_prefixlen - 2:
        raise _config_error(f"{field}: network {value} too small to allocate from")
    return network


class Range:
    """One ``{subnet, rangeStart, rangeEnd, gateway}``, canonicalised."""

    __slots__ = ("subnet", "start", "end", "gateway")

    def __init__(self, subnet: IPNetwork, start: IPAddress, end: IPAddress,
                 gateway: IPAddress) -> None:
        self.subnet, self.start, self.end, self.gateway = subnet, start, end, gateway

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Range) and (self.subnet, self.start, self.end, self.gateway) \
            == (other.subnet, other.start, other.end, other.gateway)

    def __repr__(self) -> str:
        return f"Range({self.subnet}, {self.start}-{self.end}, gw {self.gateway})"

    def contains(self, addr: IPAddress) -> bool:
        return (addr.version == self.subnet.version and addr in self.subnet
                and self.start <= addr <= self.end)

    def overlaps(self, other: "Range") -> bool:
        return (self.subnet.version == other.subnet.version
                and self.start <= other.end and other.start <= self.end)

    def __str__(self) -> str:
        return f"{self.start}-{self.end}"

    def cidr(self, addr: IPAddress) -> str:
        return f"{addr}/{self.subnet.prefixlen}"


def parse_range(raw: Any, field: str) -> Range:
    if not isinstance(raw, dict):
        raise _config_error(f"{field}: expected an object")
    subnet = parse_subnet(raw.get("subnet"), f"{field}.subnet")
    first = subnet.network_address + 1
    last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
    gateway = parse_ip(raw["gateway"], f"{field}.gateway") if raw.get("gateway") else first
    if gateway.version != subnet.version:
        raise _config_error(f"{field}.gateway: {gateway} is not in network {subnet}")
    start = first
    if raw.get("rangeStart"):
        start = parse_ip(raw["rangeStart"], f"{field}.rangeStart")
        if start.version != subnet.version or start not in subnet:
            raise _config_error(f"{field}.rangeStart: {start} not in network {subnet}")
    end = last
    if raw.get("rangeEnd"):
        end = parse_ip(raw["rangeEnd"], f"{field}.rangeEnd")
        if end.version != subnet.version or end not in subnet:
            raise _config_error(f"{field}.rangeEnd: {end} not in network {subnet}")
    if start > end:
        raise _config_error(f"{field}: rangeStart {start} is after rangeEnd {end}")
    return Range(subnet, start, end, gateway)


class RangeSet(tuple):
    """Ranges of one address family; one address is allocated per set."""

    def range_for(self, addr: IPAddress) -> Range | None:
        for r in self:
            if r.contains(addr):
                return r
        return None

    def __str__(self) -> str:
        return ",".join(str(r) for r in self)


def parse_range_set(raw: Any, field: str) -> RangeSet:
    if not isinstance(raw, list) or not raw:
        raise _config_error(f"{field}: empty range set")
    ranges = [parse_range(r, f"{field}[{i}]") for i, r in enumerate(raw)]
    if len({r.subnet.version for r in ranges}) > 1:
        raise _config_error(f"{field}: mixed address families")
    for i, a in enumerate(ranges):
        for b in ranges[i + 1:]:
            if a.overlaps(b):
                raise _config_error(f"{field}: subnets {a} and {b} overlap")
    return RangeSet(ranges)


def parse_range_sets(ipam: dict[str, Any], runtime_ranges: Any = None) -> list[RangeSet]:
    """The config's range sets in host-local's order: runtime ipRanges, legacy subnet, ranges."""
    sets: list[RangeSet] = []
    if runtime_ranges:
        if not isinstance(runtime_ranges, list):
            raise _config_error("runtimeConfig.ipRanges: expected a list of range sets")
        sets += [parse_range_set(s, f"runtimeConfig.ipRanges[{i}]")
                 for i, s in enumerate(runtime_ranges)]
    if ipam.get("subnet"):
        sets.append(RangeSet([parse_range(ipam, "ipam")]))
    ranges = ipam.get("ranges") or []
    if not isinstance(ranges, list):
        raise _config_error("ipam.ranges: expected a list of range sets")
    sets += [parse_range_set(s, f"ipam.ranges[{i}]") for i, s in enumerate(ranges)]
    if not sets:
        raise _config_error("no IP ranges specified")
    for i, a in enumerate(sets):
        for j in range(i + 1, len(sets)):
            if any(ra.overlaps(rb) for ra in a for rb in sets[j]):
                raise _config_error(f"range set {i} overlaps with {j}")
    return sets


def candidates(rset: RangeSet, last_reserved: IPAddress | None) -> Iterator[tuple[Range, IPAddress]]:
    """Every allocatable address once, starting after ``last_reserved`` (round robin)."""
    n = len(rset)
    start_idx = 0
    start_ip: IPAddress | None = None
    if last_reserved is not None:
        for i, r in enumerate(rset):
            if r.contains(last_reserved):
                start_idx, start_ip = i, last_reserved
                break
    # Walk the ranges from start_idx, then wrap to the beginning (including the part of the
    # starting range before last_reserved).
    order = [(start_idx + k) % n for k in range(n)]
    for k, idx in enumerate(order):
        r = rset[idx]
        first = start_ip + 1 if (k == 0 and start_ip is not None and start_ip < r.end) else None
        if k == 0 and start_ip is not None and start_ip >= r.end:
            continue  # last_reserved was the range's end: move to the next range
        yield from _walk(r, first or r.start, r.end)
    if start_ip is not None:
        r = rset[start_idx]
        yield from _walk(r, r.start, start_ip)


def _walk(r: Range, lo: IPAddress, hi: IPAddress) -> Iterator[tuple[Range, IPAddress]]:
    addr = lo
    while addr <= hi:
        if addr != r.gateway:
            yield r, addr
        if addr == hi:
            break
        addr = addr + 1
