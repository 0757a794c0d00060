"""bridge + host-local + portmap driven through libcni, as containerd/CRI-O/podman drive them.

Every test runs for the Go reference plugins (/usr/lib/cni) and for podnet's (installed by
`podnet cni install` into a tmp dir). All kernel work happens in namespaces from
``netns_factory``; host-local's dataDir and libcni's cache live under ``tmp_path``.
"""
from __future__ import annotations

import ipaddress
import subprocess

import pytest

from tests.cnitool import (
    PodNet, addrs, cni_leftovers, host_with_pods, iptables_save, link_names, links,
    normalize_result, ping, plugin_config, routes, start_tcp_server, stop_process, tcp_request,
)

pytestmark = pytest.mark.root

SUBNET = ipaddress.ip_network("10.88.7.0/24")
GATEWAY = "10.88.7.1"
BRIDGE = "cni-pn0"
HOST_PORT, CONTAINER_PORT = 18080, 8080
PORT_MAPPINGS = {"portMappings": [{"hostPort": HOST_PORT, "containerPort": CONTAINER_PORT,
                                   "protocol": "tcp"}]}
VERSIONS = ["0.3.1", "0.4.0", "1.0.0"]
# Go portmap 1.1.1 CHECK looks for ip6tables rules it never created for IPv4-only pods.
_GO_PORTMAP_CHECK_BUG = "could not check ipv6 dnat"


def _all_iptables(ns: str) -> str:
    """Both variants, v4 and v6: no rule may be left in whichever one a plugin used."""
    return "".join(iptables_save(ns, variant, ipv6=v6)
                   for variant in ("nft", "legacy") for v6 in (False, True))


def _pod_ips(result: dict) -> list[str]:
    return [ip["address"] for ip in result["ips"]]


def _add_ok(net: PodNet, pod, **kw) -> dict:
    rc, out, err = net.drive("add", pod, **kw)
    assert rc == 0, f"ADD failed: {err}"
    return out


def _host_veths(ns: str) -> list[str]:
    return [link["ifname"] for link in links(ns)
            if link.get("linkinfo", {}).get("info_kind") == "veth"]


def test_two_pods_add_ping_hostport_check_del(impl, cnidriver, netns_factory, tmp_path):
    net = host_with_pods(netns_factory, tmp_path, 2, plugin_dir=impl.dir, driver=cnidriver,
                         subnet=str(SUBNET), bridge=BRIDGE)
    pod_a, pod_b = net.pods
    res_a = _add_ok(net, pod_a, capability_args=PORT_MAPPINGS)
    res_b = _add_ok(net, pod_b, capability_args={"portMappings": []})

    # Addresses from the range, distinct, on CNI_IFNAME in the pod; routes via the gateway.
    ip_a, ip_b = (_pod_ips(r)[0] for r in (res_a, res_b))
    assert ip_a != ip_b
    for pod, res, ip in ((pod_a, res_a, ip_a), (pod_b, res_b, ip_b)):
        iface = ipaddress.ip_interface(ip)
        assert iface.network == SUBNET and str(iface.ip) != GATEWAY
        assert res["ips"][0]["gateway"] == GATEWAY
        assert addrs(pod.ns, "eth0") == [ip]
        default = [r for r in routes(pod.ns) if r["dst"] == "default"]
        assert [r.get("gateway") for r in default] == [GATEWAY]
        sandboxed = [i for i in res["interfaces"] if "sandbox" in i]
        assert [(i["name"], i["sandbox"]) for i in sandboxed] == [("eth0", pod.netns)]
    assert addrs(net.host_ns, BRIDGE) == [f"{GATEWAY}/{SUBNET.prefixlen}"]
    assert len(_host_veths(net.host_ns)) == 2
    assert sorted(net.reservations()) == sorted(ip.split("/")[0] for ip in (ip_a, ip_b))
    assert cni_leftovers(_all_iptables(net.host_ns), container_ids=[pod_a.container_id]), \
        "ipMasq/portmap rules expected after ADD (else the DEL check below proves nothing)"

    # Pods reach each other and the gateway.
    pa, pb = ip_a.split("/")[0], ip_b.split("/")[0]
    assert ping(pod_a.ns, pb)
    assert ping(pod_b.ns, pa)
    assert ping(pod_a.ns, GATEWAY) and ping(pod_b.ns, GATEWAY)

    # hostPort answers from the host namespace (to the node's address and to localhost).
    server = start_tcp_server(pod_a.ns, CONTAINER_PORT, "hello-from-a")
    try:
        assert tcp_request(net.host_ns, GATEWAY, HOST_PORT) == "hello-from-a"
        assert tcp_request(net.host_ns, "127.0.0.1", HOST_PORT) == "hello-from-a"
        assert tcp_request(pod_b.ns, GATEWAY, HOST_PORT) == "hello-from-a"  # pod → hostPort
    finally:
        stop_process(server)

    # CHECK passes for both.
    for pod, caps in ((pod_a, PORT_MAPPINGS), (pod_b, {"portMappings": []})):
        rc, _, err = net.drive("check", pod, capability_args=caps)
        if impl.name == "go" and caps["portMappings"] and _GO_PORTMAP_CHECK_BUG in str(err):
            continue  # containernetworking/plugins#819, fixed after Debian's 1.1.1
        assert rc == 0, f"CHECK failed: {err}"

    # DEL leaves no veth, no rule, no reservation, no cached result; DEL is idempotent.
    for pod, caps in ((pod_a, PORT_MAPPINGS), (pod_b, {"portMappings": []})):
        for attempt in range(3):
            rc, _, err = net.drive("del", pod, capability_args=caps)
            assert rc == 0, f"DEL #{attempt + 1} failed: {err}"
    assert _host_veths(net.host_ns) == []
    assert link_names(net.host_ns) - {"lo", BRIDGE} == set()
    assert net.reservations() == []
    assert cni_leftovers(_all_iptables(net.host_ns),
                         container_ids=[p.container_id for p in net.pods],
                         ips=[ip_a, ip_b]) == []
    assert [p for p in net.cache_dir.rglob("*") if p.is_file()] == []  # libcni's cache
    assert not ping(pod_a.ns, GATEWAY)


def test_del_after_netns_deleted(impl, cnidriver, netns_factory, tmp_path):
    net = host_with_pods(netns_factory, tmp_path, 1, plugin_dir=impl.dir, driver=cnidriver,
                         subnet=str(SUBNET), bridge=BRIDGE)
    (pod,) = net.pods
    result = _add_ok(net, pod, capability_args=PORT_MAPPINGS)
    assert _host_veths(net.host_ns)

    subprocess.run(["ip", "netns", "del", pod.ns], check=True)
    for attempt in range(3):
        rc, _, err = net.drive("del", pod, capability_args=PORT_MAPPINGS)
        assert rc == 0, f"DEL #{attempt + 1} after netns removal failed: {err}"
    assert _host_veths(net.host_ns) == []
    assert net.reservations() == []
    leftovers = cni_leftovers(_all_iptables(net.host_ns), container_ids=[pod.container_id],
                              ips=_pod_ips(result))
    if impl.name == "go" and leftovers:
        # Known upstream bug (bridge 1.1.1 returns before tearing down ip-masq when the
        # netns is gone); podnet must not copy it.
        pytest.xfail(f"Go bridge leaks its ip-masq chain: {leftovers}")
    assert leftovers == []


# --------------------------------------------------------------------------- results vs Go

def _normalized_add(plugin_dir, mode: str, version: str, driver, netns_factory, tmp_path):
    """ADD one pod on a fresh host; returns the normalized result (and DELs it again)."""
    net = host_with_pods(netns_factory, tmp_path, 1, plugin_dir=plugin_dir, driver=driver,
                         subnet=str(SUBNET), bridge=BRIDGE, cni_version=version,
                         portmap=(mode == "libcni"))
    (pod,) = net.pods
    if mode == "libcni":
        result = _add_ok(net, pod, capability_args=PORT_MAPPINGS)
        assert net.drive("del", pod, capability_args=PORT_MAPPINGS)[0] == 0
    else:
        conf = plugin_config(net.conflist, 0)
        rc, result, err = net.exec("bridge", "ADD", pod, conf)
        assert rc == 0, f"bridge ADD failed: {result} {err}"
        assert net.exec("bridge", "DEL", pod, conf)[0] == 0
    assert isinstance(result, dict) and result.get("cniVersion") == version
    return result, normalize_result(result)


@pytest.mark.parametrize("mode", ["libcni", "exec"])
@pytest.mark.parametrize("version", VERSIONS)
def test_normalized_results_are_run_independent(version, mode, go_plugins, cnidriver,
                                                netns_factory, tmp_path):
    """Two Go runs differ raw (MACs, sandbox) but not once normalized: the comparison below
    can only fail on real differences."""
    raw1, norm1 = _normalized_add(go_plugins, mode, version, cnidriver, netns_factory,
                                  tmp_path / "a")
    raw2, norm2 = _normalized_add(go_plugins, mode, version, cnidriver, netns_factory,
                                  tmp_path / "b")
    assert raw1 != raw2
    assert norm1 == norm2


@pytest.mark.parametrize("mode", ["libcni", "exec"])
@pytest.mark.parametrize("version", VERSIONS)
def test_results_match_go_reference(version, mode, go_plugins, podnet_plugins, cnidriver,
                                    netns_factory, tmp_path):
    _, go = _normalized_add(go_plugins, mode, version, cnidriver, netns_factory,
                            tmp_path / "go")
    _, ours = _normalized_add(podnet_plugins, mode, version, cnidriver, netns_factory,
                              tmp_path / "podnet")
    assert ours.keys() == go.keys()
    assert ours["interfaces"] == go["interfaces"]
    assert ours["ips"] == go["ips"]
    assert ours.get("routes") == go.get("routes")
    assert ours == go
