"""The ``bridge`` plugin: a Linux bridge on the host, a veth pair per pod, addresses from IPAM.

ADD keeps an undo list and runs it when any step fails, so a failed ADD leaves no veth, no
reservation and no rule behind (the Go plugin's ``success`` flag, taken further). DEL succeeds
whatever is already gone, and removes the ip-masq chain even when the pod's netns is gone.
The host side is the network namespace of the calling thread; the pod side is CNI_NETNS.
"""
from __future__ import annotations

import ipaddress
import os
import sys
import time

from cni import ipmasq, macspoof, spec
from cni.ipam import delegate as ipam
from cni.log import getLogger
from cni.plugins.bridge_config import BridgeConfig, parse
from cni.skel import Plugin, Request, main
from cni.spec import CNIError
from podnet import netns, rtnl

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

log = getLogger(__name__)


def _fail(msg: str, code: int = spec.INTERNAL) -> CNIError:
    return CNIError(code, msg)


def write_sysctl(name: str, value: str, *, only_if_different: bool = True) -> bool:
    """Write /proc/sys/<name> in the calling thread's netns; False when it does not exist."""
    path = "/proc/sys/" + name.strip("/")
    try:
        if only_if_different:
            with open(path) as f:
                if f.read().strip() == value:
                    return True
        with open(path, "w") as f:
            f.write(value)
        return True
    except OSError:
        return False


# --- host side ---------------------------------------------------------------------------


def ensure_bridge(host: rtnl.RTNL, c: BridgeConfig) -> rtnl.Link:
    try:
        br = host.link(name=c.bridge)
    except rtnl.LinkNotFound:
        data = {"vlan_filtering": 1} if c.vlan else None
        try:
            host.add_link(c.bridge, "bridge", mtu=c.mtu or None, data=data)
        except rtnl.AlreadyExists:
            pass  # created concurrently by another ADD
        except rtnl.NetlinkError as e:
            raise _fail(f'failed to create bridge "{c.bridge}": could not add "{c.bridge}": {e}')
        br = host.link(name=c.bridge)
    if br.kind != "bridge":
        raise _fail(f'failed to create bridge "{c.bridge}": "{c.bridge}" already exists '
                    "but is not a bridge")
    if c.promisc and not br.flags & 0x100:  # IFF_PROMISC
        host.set_link(br.index, promisc=True)
    write_sysctl(f"net/ipv6/conf/{c.bridge}/accept_ra", "0")
    if not br.up:
        host.set_link(br.index, up=True)
    return br


def _random_veth_name() -> str:
    return "veth" + os.urandom(4).hex()


def setup_veth(host: rtnl.RTNL, cont: rtnl.RTNL, cont_fd: int, br: rtnl.Link, c: BridgeConfig,
               ifname: str, undo: list[Callable[[], None]]) -> tuple[rtnl.Link, rtnl.Link]:
    """Create the pair: host end ``vethXXXXXXXX`` on the bridge, pod end ``ifname``."""
    try:
        cont.link(name=ifname)
        raise _fail(f"container veth name provided ({ifname}) already exists")
    except rtnl.LinkNotFound:
        pass
    for _ in range(10):
        host_name = _random_veth_name()
        try:
            host.add_link(host_name, "veth", mtu=c.mtu or None, peer_name=ifname,
                          peer_netns=cont_fd, peer_mac=c.mac or None, peer_mtu=c.mtu or None)
            break
        except rtnl.AlreadyExists:
            continue
        except rtnl.NetlinkError as e:
            raise _fail(f"failed to make veth pair: {e}")
    else:
        raise _fail("failed to find a unique veth name")
    undo.append(lambda: _del_link_quiet(host, host_name))
    host_link = host.link(name=host_name)
    try:
        host.set_link(host_link.index, master=br.index, up=True)
    except rtnl.NetlinkError as e:
        raise _fail(f'failed to connect "{host_name}" to bridge {c.bridge}: {e}')
    if c.hairpin:
        host.set_bridge_port(host_link.index, hairpin=True)
    if c.vlan:
        host.bridge_vlan_add(host_link.index, c.vlan, pvid=True, untagged=True)
    cont_link = cont.link(name=ifname)
    cont.set_link(cont_link.index, up=True)
    return host.link(index=host_link.index), cont.link(index=cont_link.index)


def _del_link_quiet(handle: rtnl.RTNL, name: str) -> None:
    try:
        handle.del_link(name)
    except rtnl.LinkNotFound:
        pass


def ensure_addr(host: rtnl.RTNL, link: rtnl.Link, gw_cidr: str, force: bool) -> None:
    """Give the bridge its gateway address; refuse (or, forced, replace) a different one."""
    want = ipaddress.ip_interface(gw_cidr)
    family = rtnl.AF_INET if want.version == 4 else rtnl.AF_INET6
    for a in host.addrs(index=link.index, family=family):
        have = ipaddress.ip_interface(a.cidr)
        if have == want:
            return
        if have.version == 4 or want.ip in have.network or have.ip in want.network:
            if not force:
                raise _fail(f'failed to set bridge addr: "{link.name}" already has an IP '
                            f"address different from {want}")
            host.del_addr(link.index, a.cidr)
    try:
        host.add_addr(link.index, str(want))
    except rtnl.AlreadyExists:
        pass
    # Pin the bridge's MAC so it no longer follows its lowest-numbered port.
    host.set_link(link.index, mac=host.link(index=link.index).mac)


def ensure_vlan_gateway(host: rtnl.RTNL, br: rtnl.Link, c: BridgeConfig) -> rtnl.Link:
    """With ``vlan``, the gateway lives on ``<bridge>.<vlan>``, a veth into the bridge's VLAN."""
    name = f"{br.name}.{c.vlan}"
    try:
        return host.link(name=name)
    except rtnl.LinkNotFound:
        pass
    port = _random_veth_name()
    host.add_link(port, "veth", peer_name=name, mtu=br.mtu)
    host.set_link(port, master=br.index, up=True)
    host.bridge_vlan_add(port, c.vlan, pvid=True, untagged=True)
    host.set_link(name, up=True)
    return host.link(name=name)


def enable_forwarding(family: int) -> None:
    if family == 4:
        write_sysctl("net/ipv4/ip_forward", "1")
    else:
        write_sysctl("net/ipv6/conf/all/forwarding", "1")


def wait_oper_up(host: rtnl.RTNL, index: int) -> None:
    for delay in (0, 0.005, 0.05, 0.5, 1.0, 1.0):
        time.sleep(delay)
        link = host.link(index=index)
        if str(link.operstate).lower() in ("up", "6"):
            return
    raise _fail(f"bridge port in error state: {link.operstate}")


# --- pod side ----------------------------------------------------------------------------


def calc_gateways(result: dict[str, Any], c: BridgeConfig) -> dict[int, list[str]]:
    """Fill in gateways and the default route as the Go plugin does; return gateway CIDRs."""
    gws: dict[int, list[str]] = {4: [], 6: []}
    default_found = {4: False, 6: False}
    for ip in result["ips"]:
        iface = ipaddress.ip_interface(ip["address"])
        fam = iface.version
        ip["interface"] = 2
        if not ip.get("gateway") and c.is_gateway:
            ip["gateway"] = str(iface.network.network_address + 1)
        if c.is_default_gateway and not default_found[fam]:
            default = "0.0.0.0/0" if fam == 4 else "::/0"
            if not any(r.get("gw") and _same_net(r["dst"], default) for r in result["routes"]):
                result["routes"].append({"dst": default, "gw": ip.get("gateway")})
            default_found[fam] = True
        if c.is_gateway:
            gws[fam].append(f"{ip['gateway']}/{iface.network.prefixlen}")
    return gws


def _same_net(a: str, b: str) -> bool:
    try:
        return ipaddress.ip_network(a, strict=False) == ipaddress.ip_network(b, strict=False)
    except ValueError:
        return False


def configure_iface(cont: rtnl.RTNL, index: int, result: dict[str, Any]) -> None:
    """ipam.ConfigureIface: addresses, link up, routes via the family's gateway."""
    default_gw: dict[int, str] = {}
    for ip in result["ips"]:
        iface = ipaddress.ip_interface(ip["address"])
        if ip.get("gateway") and iface.version not in default_gw:
            default_gw[iface.version] = ip["gateway"]
        try:
            cont.add_addr(index, ip["address"])
        except rtnl.NetlinkError as e:
            raise _fail(f"failed to add IP addr {ip['address']} to container interface: {e}")
    cont.set_link(index, up=True)
    for r in result["routes"]:
        dst = ipaddress.ip_network(r["dst"], strict=False)
        gw = r.get("gw") or default_gw.get(dst.version)
        try:
            cont.add_route(str(dst), gateway=gw, oif=index)
        except rtnl.AlreadyExists:
            pass
        except rtnl.NetlinkError as e:
            raise _fail(f"failed to add route '{dst} via {gw} dev {index}': {e}")


def set_pod_sysctls(cont_path: str, ifname: str, enable_dad: bool) -> None:
    with netns.entered(cont_path):
        if enable_dad:
            write_sysctl(f"net/ipv6/conf/{ifname}/enhanced_dad", "1")
            write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "1")
        else:
            write_sysctl(f"net/ipv6/conf/{ifname}/accept_dad", "0")
        write_sysctl(f"net/ipv4/conf/{ifname}/arp_notify", "1")


# --- ip masquerade -------------------------------------------------------------------------


def setup_masq(c: BridgeConfig, container_id: str, addresses: list[str]) -> None:
    from podnet import iptables
    for family in (4, 6):
        if any(ipaddress.ip_interface(a).version == family for a in addresses):
            iptables.apply(ipmasq.render_setup(c.network, container_id, addresses, family),
                           family=family)


def teardown_masq(network: str, container_id: str) -> None:
    from podnet import iptables
    for family in (4, 6):
        try:
            saved = iptables.save("nat", family=family)
        except iptables.IptablesError as e:
            log.warning("bridge: cannot read nat table (IPv%d): %s", family, e)
            continue
        payload = ipmasq.render_teardown(network, container_id, saved)
        if payload:
            iptables.apply(payload, family=family)


# --- the plugin ----------------------------------------------------------------------------


def _rollback(undo: list[Callable[[], None]]) -> None:
    for step in reversed(undo):
        try:
            step()
        except Exception as e:  # keep undoing; the caller reports the original error
            log.warning("bridge: rollback step failed: %s", e)


def _open_netns(path: str) -> int:
    try:
        return netns.open_fd(path)
    except OSError as e:
        raise CNIError(spec.CONTAINER_UNKNOWN, f'failed to open netns "{path}": {e}') from None


class Bridge(Plugin):
    name = "bridge"

    def add(self, req: Request) -> dict[str, Any]:
        c = parse(req.config, req.args)
        cont_fd = _open_netns(req.netns)
        undo: list[Callable[[], None]] = []
        try:
            with rtnl.RTNL() as host, rtnl.RTNL(netns=cont_fd) as cont:
                try:
                    return self._add(req, c, host, cont, cont_fd, undo)
                except BaseException:
                    _rollback(undo)
                    raise
        finally:
            os.close(cont_fd)

    def _add(self, req: Request, c: BridgeConfig, host: rtnl.RTNL, cont: rtnl.RTNL, cont_fd: int,
             undo: list[Callable[[], None]]) -> dict[str, Any]:
        br = ensure_bridge(host, c)
        host_if, cont_if = setup_veth(host, cont, cont_fd, br, c, req.ifname, undo)
        interfaces = [
            {"name": br.name, "mac": br.mac},
            {"name": host_if.name, "mac": host_if.mac},
            {"name": cont_if.name, "mac": cont_if.mac, "sandbox": req.netns},
        ]
        result: dict[str, Any] = {"interfaces": interfaces, "ips": [], "routes": []}
        if c.macspoofchk:
            ref = f"{req.container_id}-{req.ifname}"
            macspoof.setup(host_if.name, cont_if.mac, ref)
            undo.append(lambda: macspoof.teardown(ref))
        if c.is_layer3:
            ipam_result = ipam.add(req)
            undo.append(lambda: ipam.delete(req))
            result["ips"] = [dict(ip) for ip in ipam_result.get("ips", [])]
            result["routes"] = [dict(r) for r in ipam_result.get("routes", [])]
            if ipam_result.get("dns"):
                result["dns"] = ipam_result["dns"]
            if not result["ips"]:
                raise _fail("IPAM plugin returned missing IP config")
            gws = calc_gateways(result, c)
            set_pod_sysctls(req.netns, req.ifname, c.enable_dad)
            configure_iface(cont, cont_if.index, result)
            wait_oper_up(host, host_if.index)
            if c.is_gateway:
                self._gateways(host, br, c, gws, interfaces)
            if c.ip_masq:
                undo.append(lambda: teardown_masq(c.network, req.container_id))
                setup_masq(c, req.container_id, [ip["address"] for ip in result["ips"]])
        else:
            cont.set_link(cont_if.index, up=True)
        interfaces[0]["mac"] = host.link(index=br.index).mac
        dns = req.config.get("dns")
        if isinstance(dns, dict) and dns:
            result["dns"] = dns
        return result

    def _gateways(self, host: rtnl.RTNL, br: rtnl.Link, c: BridgeConfig,
                  gws: dict[int, list[str]], interfaces: list[dict[str, Any]]) -> None:
        target = br
        if c.vlan and (gws[4] or gws[6]):
            target = ensure_vlan_gateway(host, br, c)
            interfaces.append({"name": target.name, "mac": target.mac})
        for family in (4, 6):
            for gw in gws[family]:
                ensure_addr(host, target, gw, c.force_address)
            if gws[family]:
                enable_forwarding(family)

    def delete(self, req: Request) -> None:
        c = parse(req.config, req.args)
        if c.is_layer3:
            ipam.delete(req)
        if req.netns:
            self._delete_pod_link(req)
        if c.macspoofchk:
            macspoof.teardown(f"{req.container_id}-{req.ifname}")
        if c.is_layer3 and c.ip_masq:
            teardown_masq(c.network, req.container_id)

    @staticmethod
    def _delete_pod_link(req: Request) -> None:
        try:
            fd = netns.open_fd(req.netns)
        except OSError:
            return  # the netns is gone, and its veth with it
        try:
            with rtnl.RTNL(netns=fd) as cont:
                _del_link_quiet(cont, req.ifname)
        finally:
            os.close(fd)

    def check(self, req: Request) -> None:
        c = parse(req.config, req.args)
        if c.is_layer3:
            ipam.check(req)
        prev = req.prev_result
        if prev is None:
            raise _fail("Required prevResult missing")
        cont_fd = _open_netns(req.netns)
        try:
            with rtnl.RTNL() as host, rtnl.RTNL(netns=cont_fd) as cont:
                self._check(req, c, prev, host, cont)
        finally:
            os.close(cont_fd)
        if c.is_layer3 and c.ip_masq:
            from podnet import iptables
            from cni.names import chain_name
            chain = chain_name(c.network, req.container_id)
            if not iptables.chain_exists("nat", chain):
                raise _fail(f"ip-masq chain {chain} not found")

    def _check(self, req: Request, c: BridgeConfig, prev: dict[str, Any],
               host: rtnl.RTNL, cont: rtnl.RTNL) -> None:
        ifaces = prev.get("interfaces", [])
        cont_map = next((i for i in ifaces if i.get("name") == req.ifname
                         and i.get("sandbox") == req.netns), None)
        if cont_map is None:
            raise _fail(f"Sandbox in prevResult doesn't match configured netns: {req.netns}")
        try:
            br = host.link(name=c.bridge)
        except rtnl.LinkNotFound:
            raise _fail(f"CNI created bridge {c.bridge} in host namespace was not found") from None
        if br.kind != "bridge":
            raise _fail(f"Error: Container interface {c.bridge} not of type bridge")
        try:
            link = cont.link(name=req.ifname)
        except rtnl.LinkNotFound:
            raise _fail(f"CNI created interface in container {req.ifname} not found") from None
        if link.kind != "veth":
            raise _fail(f"Error: Container interface {req.ifname} not of type veth")
        if cont_map.get("mac") and cont_map["mac"].lower() != link.mac:
            raise _fail(f"Interface MAC {cont_map['mac']} doesn't match container MAC: {link.mac}")
        ports = [i for i in ifaces if i is not cont_map and i.get("name") != c.bridge
                 and not i.get("sandbox")]
        found = False
        for p in ports:
            try:
                hl = host.link(name=p["name"])
            except rtnl.LinkNotFound:
                continue
            if hl.kind == "veth" and hl.master == br.index:
                found = True
                break
        if not found:
            raise _fail(f"CNI veth created for bridge {c.bridge} was not found")
        have = {a.cidr for a in cont.addrs(index=link.index)}
        for ip in prev.get("ips", []):
            if ip["address"] not in have:
                raise _fail(f"Failed to match addr {ip['address']} on interface {req.ifname}")
        routes = cont.routes()
        for r in prev.get("routes", []):
            dst = ipaddress.ip_network(r["dst"], strict=False)
            if not any(ipaddress.ip_network(x.dst, strict=False) == dst
                       and (not r.get("gw") or x.gateway == r["gw"]) for x in routes):
                raise _fail(f"Failed to match route {r['dst']} via {r.get('gw')}")


PLUGIN = Bridge()

if __name__ == "__main__":
    sys.exit(main(PLUGIN))
