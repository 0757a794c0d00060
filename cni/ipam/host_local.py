"""The ``host-local`` IPAM plugin: addresses from local ranges, reserved on disk.

The functions ``allocate``/``release``/``check``/``gc`` are the plugin's work without the
protocol around it, so ``bridge`` calls them in-process instead of exec'ing a second
program when its ``ipam.type`` is ``host-local``.
"""
from __future__ import annotations

import ipaddress
import sys

from cni import spec
from cni.ipam import ranges as rng
from cni.ipam.store import Store
from cni.log import getLogger
from cni.skel import Plugin, Request, main
from cni.spec import CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

log = getLogger(__name__)


class IPAMConfig:
    """The parts of a network config host-local reads, validated."""

    def __init__(self, config: Mapping[str, Any], cni_args: Mapping[str, str] | None = None) -> None:
        ipam = config.get("ipam")
        if not isinstance(ipam, dict):
            raise CNIError(spec.INVALID_CONFIG, "IPAM config missing 'ipam' key")
        self.network = config["name"]
        runtime = config.get("runtimeConfig") or {}
        if not isinstance(runtime, dict):
            raise CNIError(spec.INVALID_CONFIG, "runtimeConfig must be an object")
        self.range_sets = rng.parse_range_sets(ipam, runtime.get("ipRanges"))
        self.data_dir = ipam.get("dataDir") or None
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise CNIError(spec.INVALID_CONFIG, "ipam.dataDir must be a string")
        self.routes = _parse_routes(ipam.get("routes"))
        self.resolv_conf = ipam.get("resolvConf") or ""
        self.requested = _requested_ips(config, runtime, cni_args or {})


def _parse_routes(raw: Any) -> list[dict[str, str]]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise CNIError(spec.INVALID_CONFIG, "ipam.routes must be a list")
    routes = []
    for i, r in enumerate(raw):
        if not isinstance(r, dict) or not isinstance(r.get("dst"), str):
            raise CNIError(spec.INVALID_CONFIG, f"ipam.routes[{i}]: needs a dst")
        try:
            dst = ipaddress.ip_network(r["dst"], strict=False)
        except ValueError:
            raise CNIError(spec.INVALID_CONFIG, f"ipam.routes[{i}].dst: invalid CIDR {r['dst']!r}") from None
        route = {"dst": str(dst)}
        if r.get("gw"):
            route["gw"] = str(rng.parse_ip(r["gw"], f"ipam.routes[{i}].gw"))
        routes.append(route)
    return routes


def _requested_ips(config: Mapping[str, Any], runtime: Mapping[str, Any],
                   cni_args: Mapping[str, str]) -> list[ipaddress._BaseAddress]:
    raw: list[Any] = []
    if cni_args.get("IP"):
        raw += cni_args["IP"].split(",")
    args = config.get("args")
    if isinstance(args, dict) and isinstance(args.get("cni"), dict):
        raw += args["cni"].get("ips") or []
    raw += runtime.get("ips") or []
    out = []
    for value in raw:
        if not isinstance(value, str):
            raise CNIError(spec.INVALID_CONFIG, f"cannot understand ip: {value!r}")
        try:
            out.append(ipaddress.ip_interface(value.strip()).ip)
        except ValueError:
            raise CNIError(spec.INVALID_CONFIG, f"cannot understand ip: {value!r}") from None
    return out


def parse_resolv_conf(path: str) -> dict[str, Any]:
    dns: dict[str, Any] = {}
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise CNIError(spec.IO_FAILURE, f"cannot read resolvConf {path}: {e.strerror}") from None
    for line in lines:
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        fields = line.split()
        if len(fields) < 2:
            continue
        key = fields[0]
        if key == "nameserver":
            dns.setdefault("nameservers", []).append(fields[1])
        elif key == "domain":
            dns["domain"] = fields[1]
        elif key == "search":
            dns.setdefault("search", []).extend(fields[1:])
        elif key == "options":
            dns.setdefault("options", []).extend(fields[1:])
    return dns


def allocate(config: Mapping[str, Any], container_id: str, ifname: str,
             cni_args: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Reserve one address per range set; all or nothing. Returns an internal result."""
    conf = IPAMConfig(config, cni_args)
    result: dict[str, Any] = {"ips": [], "routes": list(conf.routes)}
    if conf.resolv_conf:
        result["dns"] = parse_resolv_conf(conf.resolv_conf)
    requested = list(conf.requested)
    with Store(conf.network, conf.data_dir) as store:
        taken: list[ipaddress._BaseAddress] = []
        try:
            for idx, rset in enumerate(conf.range_sets):
                want = next((ip for ip in requested if rset.range_for(ip)), None)
                if want is not None:
                    requested.remove(want)
                r, ip = _allocate_one(store, rset, idx, container_id, ifname, want)
                taken.append(ip)
                entry = {"address": r.cidr(ip)}
                if r.gateway:
                    entry["gateway"] = str(r.gateway)
                result["ips"].append(entry)
            if requested:
                raise CNIError(spec.INVALID_CONFIG, "failed to allocate all requested IPs: "
                               + " ".join(str(ip) for ip in requested))
        except BaseException:
            for ip in taken:
                store.release(ip)
            raise
    return result


def _allocate_one(store: Store, rset: rng.RangeSet, idx: int, container_id: str, ifname: str,
                  want: ipaddress._BaseAddress | None) -> tuple[rng.Range, ipaddress._BaseAddress]:
    if want is not None:
        r = rset.range_for(want)
        assert r is not None
        if want == r.gateway:
            raise CNIError(spec.INVALID_CONFIG, f"requested ip {want} is subnet's gateway")
        if not store.reserve(container_id, ifname, want, idx):
            raise CNIError(spec.TRY_AGAIN_LATER,
                           f"requested IP address {want} is not available in range set {rset}")
        return r, want
    for ip in store.get_by_id(container_id, ifname):
        if rset.range_for(ip):
            raise CNIError(spec.INTERNAL, f"{ip} has been allocated to {container_id}, "
                           "duplicate allocation is not allowed")
    for r, ip in rng.candidates(rset, store.last_reserved(idx)):
        if store.reserve(container_id, ifname, ip, idx):
            return r, ip
    raise CNIError(spec.TRY_AGAIN_LATER, f"no IP addresses available in range set: {rset}")


def release(config: Mapping[str, Any], container_id: str, ifname: str) -> None:
    """Release everything held by (containerID, ifname). Idempotent."""
    conf = IPAMConfig(config)
    with Store(conf.network, conf.data_dir) as store:
        released = store.release_by_id(container_id, ifname)
    log.debug("host-local: released %s for %s/%s", released, container_id, ifname)


def check(config: Mapping[str, Any], container_id: str, ifname: str) -> None:
    conf = IPAMConfig(config)
    with Store(conf.network, conf.data_dir) as store:
        if not store.get_by_id(container_id, ifname):
            raise CNIError(spec.INTERNAL,
                           f"host-local: Failed to find address added by container {container_id}")


def gc(config: Mapping[str, Any]) -> list[str]:
    """Release every reservation whose attachment is not in ``cni.dev/valid-attachments``."""
    conf = IPAMConfig(config)
    valid_raw = config.get("cni.dev/valid-attachments") or []
    if not isinstance(valid_raw, list):
        raise CNIError(spec.INVALID_CONFIG, "cni.dev/valid-attachments must be a list")
    valid = {(str(a.get("containerID", "")).strip(), str(a.get("ifname", "")))
             for a in valid_raw if isinstance(a, dict)}
    valid_ids = {cid for cid, _ in valid}
    released = []
    with Store(conf.network, conf.data_dir) as store:
        for ip, cid, ifname in list(store.reservations()):
            keep = (cid, ifname) in valid if ifname else cid in valid_ids
            if not keep:
                store.release(ip)
                released.append(str(ip))
    return released


class HostLocal(Plugin):
    name = "host-local"

    def add(self, req: Request) -> dict[str, Any]:
        return allocate(req.config, req.container_id, req.ifname, req.args)

    def delete(self, req: Request) -> None:
        release(req.config, req.container_id, req.ifname)

    def check(self, req: Request) -> None:
        check(req.config, req.container_id, req.ifname)

    def gc(self, req: Request) -> None:
        gc(req.config)

    def status(self, req: Request) -> None:
        conf = IPAMConfig(req.config)
        with Store(conf.network, conf.data_dir):
            pass  # the store is reachable and lockable: ready


PLUGIN = HostLocal()

if __name__ == "__main__":
    sys.exit(main(PLUGIN))
