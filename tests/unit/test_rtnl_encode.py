"""podnet.rtnl encoders/decoders and request logic, without a kernel."""
from __future__ import annotations

import errno
import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from podnet import netns, rtnl
from podnet.rtnl import (
    AF_BRIDGE, AF_INET, AF_INET6, IFF_PROMISC, IFF_UP, NLA_F_NESTED, NLM_F_ACK_TLVS,
    NLM_F_CAPPED, NLM_F_DUMP_INTR, NLM_F_MULTI, NLMSG_DONE, NLMSG_ERROR,
)


def attrs_of(body: bytes, header: int) -> dict[int, bytes]:
    return rtnl.parse_attrs(body, header)


# --- attributes and messages ------------------------------------------------------------

def test_nla_pads_to_four_bytes_and_records_unpadded_length():
    raw = rtnl.nla(3, b"abcde")
    assert len(raw) == 12
    assert struct.unpack_from("=HH", raw) == (9, 3)
    assert raw[9:] == b"\0\0\0"


def test_nested_attribute_sets_flag_and_parser_masks_it():
    raw = rtnl.nla_nested(18, rtnl.nla_str(1, "vxlan"), rtnl.nla_u32(2, 7))
    assert struct.unpack_from("=HH", raw)[1] == 18 | NLA_F_NESTED
    [(atype, payload)] = rtnl.iter_attrs(raw)
    assert atype == 18
    inner = rtnl.parse_attrs(payload)
    assert inner == {1: b"vxlan\0", 2: struct.pack("=I", 7)}


def test_iter_attrs_keeps_repeats_parse_attrs_keeps_last():
    raw = rtnl.nla_u16(2, 1) + rtnl.nla_u16(2, 2)
    assert [struct.unpack("=H", p)[0] for _, p in rtnl.iter_attrs(raw)] == [1, 2]
    assert rtnl.parse_attrs(raw) == {2: struct.pack("=H", 2)}


@given(st.lists(st.tuples(st.integers(0, 0x3FFF), st.binary(max_size=40)), max_size=8))
def test_attribute_roundtrip(items):
    raw = b"".join(rtnl.nla(t, p) for t, p in items)
    assert rtnl.iter_attrs(raw) == items


def test_nlmsg_header_and_parse_messages_roundtrip():
    a = rtnl.nlmsg(16, 0x5, 7, b"\1\2\3")
    b = rtnl.nlmsg(3, 0x2, 7, struct.pack("=i", 0))
    assert struct.unpack_from("=IHHII", a) == (19, 16, 5, 7, 0)
    buf = a + b"\0" + b  # first message padded to 4 bytes
    assert rtnl.parse_messages(buf) == [(16, 5, 7, 0, b"\1\2\3"), (3, 2, 7, 0, struct.pack("=i", 0))]


def test_parse_messages_rejects_truncated_buffer():
    msg = rtnl.nlmsg(16, 0, 1, b"x" * 20)
    with pytest.raises(ValueError):
        rtnl.parse_messages(msg[:-4])


# --- addresses, MACs, names ---------------------------------------------------------------

@pytest.mark.parametrize("cidr,expected", [
    ("10.1.2.3/24", (AF_INET, bytes([10, 1, 2, 3]), 24)),
    ("10.1.2.3", (AF_INET, bytes([10, 1, 2, 3]), 32)),
    ("fd00::1/64", (AF_INET6, b"\xfd" + b"\0" * 14 + b"\1", 64)),
    ("default", (AF_INET, b"\0" * 4, 0)),
])
def test_parse_cidr(cidr, expected):
    assert rtnl.parse_cidr(cidr) == expected


@pytest.mark.parametrize("bad", ["10.0.0.1/33", "fd00::/129", "10.0.0.1/-1", "300.1.1.1/8"])
def test_parse_cidr_rejects_bad_input(bad):
    with pytest.raises((ValueError, OSError)):
        rtnl.parse_cidr(bad)


def test_parse_cidr_default_v6():
    assert rtnl.parse_cidr("default", default_family=AF_INET6) == (AF_INET6, b"\0" * 16, 0)


@given(st.ip_addresses())
def test_ip_pack_format_roundtrip(ip):
    family, raw = rtnl.pack_ip(str(ip))
    assert family == (AF_INET if ip.version == 4 else AF_INET6)
    assert raw == ip.packed
    assert ipaddress.ip_address(rtnl.format_ip(raw)) == ip  # inet_ntop may spell v4-mapped differently


def test_mac_roundtrip_is_lower_case():
    raw = rtnl.pack_mac("AA:bb:0C:dd:EE:01")
    assert raw == bytes([0xAA, 0xBB, 0x0C, 0xDD, 0xEE, 0x01])
    assert rtnl.format_mac(raw) == "aa:bb:0c:dd:ee:01"


def test_broadcast_of():
    assert rtnl.broadcast_of(bytes([10, 1, 2, 3]), 24) == bytes([10, 1, 2, 255])
    assert rtnl.broadcast_of(bytes([10, 1, 2, 3]), 31) is None
    assert rtnl.broadcast_of(b"\0" * 16, 64) is None


@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", " eth0"])
def test_bad_interface_names_are_refused(name):
    with pytest.raises(ValueError):
        rtnl.build_link_add(name, "bridge")


# --- link requests -------------------------------------------------------------------------

def test_build_link_add_bridge_with_data_and_up():
    body = rtnl.build_link_add("cni0", "bridge", mtu=1450, up=True, data={"vlan_filtering": 1,
                                                                         "stp_state": 0})
    family, _t, index, flags, change = struct.unpack_from("=BxHiII", body)
    assert (family, index, flags, change) == (0, 0, IFF_UP, IFF_UP)
    a = attrs_of(body, 16)
    assert a[rtnl.IFLA_IFNAME] == b"cni0\0"
    assert struct.unpack("=I", a[rtnl.IFLA_MTU]) == (1450,)
    info = rtnl.parse_attrs(a[rtnl.IFLA_LINKINFO])
    assert info[rtnl.IFLA_INFO_KIND] == b"bridge\0"
    data = rtnl.parse_attrs(info[rtnl.IFLA_INFO_DATA])
    assert data == {7: b"\1", 5: struct.pack("=I", 0)}


def test_build_link_add_veth_peer_nested_with_its_own_ifinfomsg():
    body = rtnl.build_link_add("veth1234", "veth", peer_name="eth0", peer_netns_fd=9,
                               peer_mac="02:00:00:00:00:01", peer_mtu=1400, master=5)
    a = attrs_of(body, 16)
    assert struct.unpack("=I", a[rtnl.IFLA_MASTER]) == (5,)
    info = rtnl.parse_attrs(a[rtnl.IFLA_LINKINFO])
    peer = rtnl.parse_attrs(info[rtnl.IFLA_INFO_DATA])[rtnl.VETH_INFO_PEER]
    assert peer[:16] == rtnl.ifinfomsg()
    pa = rtnl.parse_attrs(peer, 16)
    assert pa[rtnl.IFLA_IFNAME] == b"eth0\0"
    assert struct.unpack("=I", pa[rtnl.IFLA_NET_NS_FD]) == (9,)
    assert struct.unpack("=I", pa[rtnl.IFLA_MTU]) == (1400,)
    assert pa[rtnl.IFLA_ADDRESS] == bytes([2, 0, 0, 0, 0, 1])


def test_build_link_add_veth_needs_peer_name():
    with pytest.raises(ValueError):
        rtnl.build_link_add("veth0", "veth")


def test_vxlan_data_encoding():
    data = rtnl.parse_attrs(rtnl.encode_info_data("vxlan", {
        "id": 1, "local": "192.168.1.10", "dev": 3, "port": 8472, "learning": False,
        "gbp": True, "ttl": 64}))
    assert data[1] == struct.pack("=I", 1)
    assert data[4] == bytes([192, 168, 1, 10])
    assert data[3] == struct.pack("=I", 3)
    assert data[15] == b"\x21\x18"  # 8472, network byte order
    assert data[7] == b"\0"
    assert data[23] == b""          # NLA_FLAG
    assert data[5] == b"\x40"


def test_vxlan_local6_and_false_flag_omitted():
    data = rtnl.parse_attrs(rtnl.encode_info_data("vxlan", {"local": "fd00::1", "gbp": False}))
    assert 17 in data and 4 not in data
    assert 23 not in data


def test_unknown_data_option_or_kind_raises():
    with pytest.raises(ValueError, match="unknown vxlan option"):
        rtnl.encode_info_data("vxlan", {"vlan_filtering": 1})
    with pytest.raises(ValueError):
        rtnl.encode_info_data("macvlan", {"mode": 1})


def test_build_link_set_flags_and_attrs():
    body = rtnl.build_link_set(4, up=False, promisc=True, master=0, mtu=9000, name="new0")
    _f, _t, index, flags, change = struct.unpack_from("=BxHiII", body)
    assert index == 4
    assert change == IFF_UP | IFF_PROMISC
    assert flags == IFF_PROMISC
    a = attrs_of(body, 16)
    assert a[rtnl.IFLA_MASTER] == struct.pack("=I", 0)
    assert a[rtnl.IFLA_IFNAME] == b"new0\0"
    assert struct.unpack("=I", a[rtnl.IFLA_MTU]) == (9000,)


def test_build_link_set_by_name_cannot_rename():
    body = rtnl.build_link_set(lookup_name="eth0", up=True)
    assert attrs_of(body, 16)[rtnl.IFLA_IFNAME] == b"eth0\0"
    with pytest.raises(ValueError):
        rtnl.build_link_set(lookup_name="eth0", name="eth1")


def test_build_bridge_port_uses_nested_protinfo_af_bridge():
    body = rtnl.build_bridge_port(7, hairpin=True, learning=False)
    assert body[0] == AF_BRIDGE
    assert struct.unpack_from("=i", body, 4) == (7,)
    assert struct.unpack_from("=HH", body, 16)[1] == rtnl.IFLA_PROTINFO | NLA_F_NESTED
    port = rtnl.parse_attrs(attrs_of(body, 16)[rtnl.IFLA_PROTINFO])
    assert port == {rtnl.IFLA_BRPORT_MODE: b"\1", rtnl.IFLA_BRPORT_LEARNING: b"\0"}
    with pytest.raises(ValueError):
        rtnl.build_bridge_port(7)


def test_build_bridge_vlan():
    body = rtnl.build_bridge_vlan(3, 100, pvid=True, untagged=True, self_=True)
    spec = rtnl.iter_attrs(attrs_of(body, 16)[rtnl.IFLA_AF_SPEC])
    assert spec == [(rtnl.IFLA_BRIDGE_FLAGS, struct.pack("=H", rtnl.BRIDGE_FLAGS_SELF)),
                    (rtnl.IFLA_BRIDGE_VLAN_INFO, struct.pack("=HH", 6, 100))]
    plain = rtnl.iter_attrs(attrs_of(rtnl.build_bridge_vlan(3, 5), 16)[rtnl.IFLA_AF_SPEC])
    assert plain == [(rtnl.IFLA_BRIDGE_VLAN_INFO, struct.pack("=HH", 0, 5))]
    with pytest.raises(ValueError):
        rtnl.build_bridge_vlan(3, 4095)


# --- addresses, routes, neighbours ------------------------------------------------------

def test_build_addr_v4_with_broadcast():
    body = rtnl.build_addr(2, "10.244.1.1/24")
    assert struct.unpack_from("=BBBBI", body) == (AF_INET, 24, 0, 0, 2)
    a = attrs_of(body, 8)
    assert a[rtnl.IFA_LOCAL] == a[rtnl.IFA_ADDRESS] == bytes([10, 244, 1, 1])
    assert a[rtnl.IFA_BROADCAST] == bytes([10, 244, 1, 255])


def test_build_addr_without_broadcast_and_for_delete():
    assert rtnl.IFA_BROADCAST not in attrs_of(rtnl.build_addr(2, "10.0.0.1/24", broadcast=False), 8)
    assert rtnl.IFA_BROADCAST not in attrs_of(rtnl.build_addr(2, "10.0.0.1/24", for_delete=True), 8)


def test_build_addr_v6_nodad_and_loopback_scope():
    body = rtnl.build_addr(2, "fd00::1/64", nodad=True)
    assert struct.unpack_from("=BBBBI", body)[:3] == (AF_INET6, 64, rtnl.IFA_F_NODAD)
    assert attrs_of(body, 8)[rtnl.IFA_FLAGS] == struct.pack("=I", rtnl.IFA_F_NODAD)
    assert struct.unpack_from("=BBBBI", rtnl.build_addr(1, "127.0.0.2/8"))[3] == rtnl.RT_SCOPE_HOST


def rtmsg_of(body: bytes):
    return struct.unpack_from("=BBBBBBBBI", body)


def test_build_route_default_via_gateway():
    body = rtnl.build_route("default", gateway="10.0.0.1")
    family, dst_len, _s, _tos, table, proto, scope, rtype, flags = rtmsg_of(body)
    assert (family, dst_len, table, proto, scope, rtype, flags) == (
        AF_INET, 0, 254, rtnl.RTPROT_BOOT, rtnl.RT_SCOPE_UNIVERSE, 1, 0)
    a = attrs_of(body, 12)
    assert rtnl.RTA_DST not in a
    assert a[rtnl.RTA_GATEWAY] == bytes([10, 0, 0, 1])
    assert a[rtnl.RTA_TABLE] == struct.pack("=I", 254)


def test_build_route_v6_default_family_follows_gateway():
    body = rtnl.build_route("default", gateway="fd00::1")
    assert rtmsg_of(body)[0] == AF_INET6


def test_build_route_link_scope_onlink_mtu_and_big_table():
    body = rtnl.build_route("10.2.0.0/16", oif=4, table=1000, mtu=1400, priority=10,
                            prefsrc="10.1.0.1", protocol="static")
    family, dst_len, _s, _t, table, proto, scope, rtype, flags = rtmsg_of(body)
    assert (dst_len, table, proto, scope) == (16, rtnl.RT_TABLE_COMPAT, 4, rtnl.RT_SCOPE_LINK)
    a = attrs_of(body, 12)
    assert a[rtnl.RTA_DST] == bytes([10, 2, 0, 0])
    assert a[rtnl.RTA_TABLE] == struct.pack("=I", 1000)
    assert a[rtnl.RTA_OIF] == struct.pack("=I", 4)
    assert a[rtnl.RTA_PRIORITY] == struct.pack("=I", 10)
    assert rtnl.parse_attrs(a[rtnl.RTA_METRICS]) == {rtnl.RTAX_MTU: struct.pack("=I", 1400)}
    onlink = rtmsg_of(rtnl.build_route("10.3.0.0/16", gateway="192.168.0.1", oif=2, onlink=True))
    assert onlink[8] == rtnl.RTNH_F_ONLINK and onlink[6] == rtnl.RT_SCOPE_UNIVERSE


def test_build_route_delete_uses_wildcards():
    family, dst_len, _s, _t, table, proto, scope, rtype, _f = rtmsg_of(
        rtnl.build_route("10.2.0.0/16", for_delete=True))
    assert (proto, scope, rtype) == (0, rtnl.RT_SCOPE_NOWHERE, 0)


def test_build_route_types_and_errors():
    assert rtmsg_of(rtnl.build_route("10.9.0.0/16", rtype="blackhole"))[7] == 6
    with pytest.raises(ValueError):
        rtnl.build_route("10.9.0.0/16", rtype="bogus")
    with pytest.raises(ValueError, match="family"):
        rtnl.build_route("10.9.0.0/16", gateway="fd00::1")


def test_build_neigh_and_fdb():
    body = rtnl.build_neigh(3, "10.0.0.9", "aa:bb:cc:dd:ee:ff")
    assert struct.unpack_from("=BxxxiHBB", body) == (AF_INET, 3, rtnl.NUD_PERMANENT, 0, 0)
    assert attrs_of(body, 12) == {rtnl.NDA_DST: bytes([10, 0, 0, 9]),
                                  rtnl.NDA_LLADDR: bytes.fromhex("aabbccddeeff")}
    fdb = rtnl.build_fdb(5, "02:00:00:00:00:01", "fd00::2", permanent=False)
    assert struct.unpack_from("=BxxxiHBB", fdb) == (AF_BRIDGE, 5, rtnl.NUD_REACHABLE,
                                                     rtnl.NTF_SELF, 0)
    assert len(attrs_of(fdb, 12)[rtnl.NDA_DST]) == 16


# --- decoders -------------------------------------------------------------------------------

def link_payload(family=0, index=7, flags=IFF_UP, attrs=()):
    return rtnl.ifinfomsg(family, index, flags) + b"".join(attrs)


def test_decode_link_vxlan():
    data = rtnl.encode_info_data("vxlan", {"id": 1, "local": "10.0.0.1", "port": 8472,
                                           "learning": False, "dev": 2})
    payload = link_payload(attrs=[
        rtnl.nla_str(rtnl.IFLA_IFNAME, "flannel.1"),
        rtnl.nla_u32(rtnl.IFLA_MTU, 1450),
        rtnl.nla(rtnl.IFLA_ADDRESS, bytes.fromhex("0A0B0C0D0E0F")),
        rtnl.nla_u8(rtnl.IFLA_OPERSTATE, 6),
        rtnl.nla_nested(rtnl.IFLA_LINKINFO, rtnl.nla_str(rtnl.IFLA_INFO_KIND, "vxlan"),
                        rtnl.nla_nested(rtnl.IFLA_INFO_DATA, data)),
    ])
    link = rtnl.decode_link(payload)
    assert (link.index, link.name, link.kind, link.mtu, link.mac, link.operstate) == (
        7, "flannel.1", "vxlan", 1450, "0a:0b:0c:0d:0e:0f", "UP")
    assert link.up
    assert link.info == {"id": 1, "link": 2, "local": "10.0.0.1", "learning": False,
                         "port": 8472}
    assert link.master is None and link.bridge_port == {}


def test_decode_link_bridge_port_from_slave_data_and_protinfo():
    slave = rtnl.nla_u8(4, 1) + rtnl.nla_u8(8, 0)
    payload = link_payload(flags=0, attrs=[
        rtnl.nla_str(rtnl.IFLA_IFNAME, "veth0"),
        rtnl.nla_u32(rtnl.IFLA_MASTER, 3),
        rtnl.nla(rtnl.IFLA_LINK_NETNSID, struct.pack("=i", 0)),
        rtnl.nla_nested(rtnl.IFLA_LINKINFO, rtnl.nla_str(rtnl.IFLA_INFO_KIND, "veth"),
                        rtnl.nla_str(rtnl.IFLA_INFO_SLAVE_KIND, "bridge"),
                        rtnl.nla_nested(rtnl.IFLA_INFO_SLAVE_DATA, slave)),
    ])
    link = rtnl.decode_link(payload)
    assert (link.kind, link.master, link.link_netnsid, link.up) == ("veth", 3, 0, False)
    assert link.bridge_port == {"hairpin": True, "learning": False}
    br = rtnl.decode_link(link_payload(AF_BRIDGE, attrs=[
        rtnl.nla_str(rtnl.IFLA_IFNAME, "veth0"), rtnl.nla_nested(rtnl.IFLA_PROTINFO, slave)]))
    assert br.bridge_port == {"hairpin": True, "learning": False}


def test_decode_bridge_vlans_expands_ranges():
    spec = b"".join([
        rtnl.nla(2, struct.pack("=HH", 6, 1)),
        rtnl.nla(2, struct.pack("=HH", rtnl.BRIDGE_VLAN_INFO_RANGE_BEGIN, 10)),
        rtnl.nla(2, struct.pack("=HH", rtnl.BRIDGE_VLAN_INFO_RANGE_END, 12)),
    ])
    payload = link_payload(AF_BRIDGE, 4, attrs=[rtnl.nla_nested(rtnl.IFLA_AF_SPEC, spec)])
    assert rtnl.decode_bridge_vlans(payload) == (4, [(1, 6), (10, 0), (11, 0), (12, 0)])


def test_decode_addr():
    payload = (rtnl.ifaddrmsg(AF_INET, 24, 0, 0, 2) + rtnl.nla(rtnl.IFA_ADDRESS, bytes([10, 0, 0, 1]))
               + rtnl.nla(rtnl.IFA_LOCAL, bytes([10, 0, 0, 1]))
               + rtnl.nla_str(rtnl.IFA_LABEL, "cni0") + rtnl.nla_u32(rtnl.IFA_FLAGS, 0x80))
    addr = rtnl.decode_addr(payload)
    assert (addr.index, addr.address, addr.cidr, addr.label, addr.flags) == (
        2, "10.0.0.1", "10.0.0.1/24", "cni0", 0x80)


def test_decode_route_default_and_v6():
    payload = rtnl.build_route("default", gateway="10.0.0.1", oif=3, mtu=1400)
    route = rtnl.decode_route(payload)
    assert (route.family, route.dst, route.gateway, route.oif, route.table, route.type,
            route.mtu, route.protocol) == (AF_INET, "0.0.0.0/0", "10.0.0.1", 3, 254, "unicast",
                                           1400, rtnl.RTPROT_BOOT)
    v6 = rtnl.decode_route(rtnl.build_route("fd01::/64", gateway="fd00::1", onlink=True,
                                            table=100))
    assert (v6.dst, v6.gateway, v6.onlink, v6.table) == ("fd01::/64", "fd00::1", True, 100)
    assert rtnl.decode_route(rtnl.build_route("::/0", gateway="fd00::1")).dst == "::/0"


def test_decode_neigh_ip_and_fdb():
    n = rtnl.decode_neigh(rtnl.build_neigh(3, "fd00::9", "aa:bb:cc:dd:ee:ff"))
    assert (n.family, n.index, n.address, n.dst, n.mac, n.state) == (
        AF_INET6, 3, "fd00::9", "fd00::9", "aa:bb:cc:dd:ee:ff", rtnl.NUD_PERMANENT)
    f = rtnl.decode_neigh(rtnl.build_fdb(5, "02:00:00:00:00:01", "10.0.0.2")
                          + rtnl.nla_u16(rtnl.NDA_VLAN, 10))
    assert (f.family, f.address, f.dst, f.flags, f.vlan) == (AF_BRIDGE, None, "10.0.0.2",
                                                             rtnl.NTF_SELF, 10)


def test_decode_error_ack_and_ext_ack_message():
    assert rtnl.decode_error(struct.pack("=i", 0) + rtnl.nlmsg(16, 5, 1, b"")) == (0, "")
    capped = (struct.pack("=i", -errno.EEXIST) + rtnl.nlmsg(16, 5, 1, b"")
              + rtnl.nla_str(rtnl.NLMSGERR_ATTR_MSG, "Link already exists"))
    assert rtnl.decode_error(capped, NLM_F_CAPPED | NLM_F_ACK_TLVS) == (errno.EEXIST,
                                                                        "Link already exists")
    full = (struct.pack("=i", -errno.EINVAL) + rtnl.nlmsg(16, 5, 1, b"abcdefgh")
            + rtnl.nla_str(rtnl.NLMSGERR_ATTR_MSG, "bad"))
    assert rtnl.decode_error(full, NLM_F_ACK_TLVS) == (errno.EINVAL, "bad")


@pytest.mark.parametrize("code,cls", [
    (errno.ENODEV, rtnl.LinkNotFound), (errno.EEXIST, rtnl.AlreadyExists),
    (errno.EADDRNOTAVAIL, rtnl.AddressNotAvailable), (errno.ENOENT, rtnl.NotFound),
    (errno.ESRCH, rtnl.NotFound), (errno.EINVAL, rtnl.NetlinkError),
])
def test_error_for_maps_errno(code, cls):
    err = rtnl.error_for(code, "add link 'x'", "detail")
    assert type(err) is cls
    assert isinstance(err, OSError)
    assert err.code == err.errno == code
    assert "detail" in str(err) and "add link 'x'" in str(err)


# --- records ---------------------------------------------------------------------------------

def test_records_behave_like_dataclasses():
    a = rtnl.Link(1, "lo")
    b = rtnl.Link(index=1, name="lo")
    assert a == b and a is not b
    a.info["x"] = 1
    assert b.info == {}  # mutable defaults are per instance
    assert a != b
    assert repr(b).startswith("Link(index=1, name='lo', kind=None")
    assert b.asdict()["name"] == "lo"
    assert b.replace(name="eth0").name == "eth0" and b.name == "lo"
    assert not b.up and rtnl.Link(1, "lo", flags=IFF_UP).up
    assert rtnl.Addr(1, AF_INET6, "fd00::1", 64).cidr == "fd00::1/64"
    with pytest.raises(TypeError):
        rtnl.Link(1)  # name is required
    with pytest.raises(TypeError):
        hash(a)


# --- the request loop, against a scripted socket -------------------------------------------

class ScriptedSocket:
    """Returns prepared recv() buffers; builds answers using the seq of the last send()."""

    def __init__(self, script):
        self.script = list(script)
        self.sent: list[bytes] = []
        self.pending: list[bytes] = []

    def send(self, data: bytes) -> int:
        self.sent.append(data)
        seq = struct.unpack_from("=IHHII", data)[3]
        self.pending = [make(seq) for make in self.script.pop(0)]
        return len(data)

    def recv(self, _n: int) -> bytes:
        return self.pending.pop(0)

    def close(self) -> None:
        pass


def scripted_rtnl(*script) -> tuple[rtnl.RTNL, ScriptedSocket]:
    sock = ScriptedSocket(script)
    r = rtnl.RTNL.__new__(rtnl.RTNL)
    r._sock, r._seq = sock, 0
    import _thread
    r._lock = _thread.allocate_lock()
    return r, sock


def newlink(index, name, flags=NLM_F_MULTI, seq_delta=0):
    payload = rtnl.ifinfomsg(0, index) + rtnl.nla_str(rtnl.IFLA_IFNAME, name)
    return lambda seq: rtnl.nlmsg(rtnl.RTM_NEWLINK, flags, seq + seq_delta, payload)


def done(flags=NLM_F_MULTI):
    return lambda seq: rtnl.nlmsg(NLMSG_DONE, flags, seq, struct.pack("=i", 0))


def err(code, msg=""):
    def make(seq):
        body = struct.pack("=i", -code) + rtnl.nlmsg(16, 5, seq, b"")
        flags = NLM_F_CAPPED
        if msg:
            body += rtnl.nla_str(rtnl.NLMSGERR_ATTR_MSG, msg)
            flags |= NLM_F_ACK_TLVS
        return rtnl.nlmsg(NLMSG_ERROR, flags, seq, body)
    return make


def test_dump_spans_several_recvs_and_skips_stale_answers():
    both = lambda seq: newlink(2, "b")(seq) + newlink(3, "c")(seq)  # noqa: E731
    r, sock = scripted_rtnl([newlink(9, "stale", seq_delta=-1), newlink(1, "a"), both, done()])
    assert [link.name for link in r.links()] == ["a", "b", "c"]
    hdr = struct.unpack_from("=IHHII", sock.sent[0])
    assert hdr[1] == rtnl.RTM_GETLINK and hdr[2] & rtnl.NLM_F_DUMP == rtnl.NLM_F_DUMP


def test_interrupted_dump_is_retried():
    r, sock = scripted_rtnl([newlink(1, "old", flags=NLM_F_MULTI | NLM_F_DUMP_INTR), done()],
                            [newlink(1, "new"), done()])
    assert [link.name for link in r.links()] == ["new"]
    assert len(sock.sent) == 2


def test_error_reply_raises_named_exception_with_kernel_message():
    r, _ = scripted_rtnl([err(errno.EEXIST, "Link already exists")])
    with pytest.raises(rtnl.AlreadyExists, match="Link already exists"):
        r.add_link("br0", "bridge")


def test_ack_returns_and_get_returns_single_reply():
    r, sock = scripted_rtnl([err(0)], [newlink(5, "eth0", flags=0)])
    r.set_link("eth0", up=True)
    body = sock.sent[0][16:]
    assert rtnl.parse_attrs(body, 16)[rtnl.IFLA_IFNAME] == b"eth0\0"  # looked up by the kernel
    assert r.link_index("eth0") == 5


def test_lookup_of_missing_link_raises_link_not_found():
    r, _ = scripted_rtnl([err(errno.ENODEV)])
    with pytest.raises(rtnl.LinkNotFound):
        r.link("nope0")
    with pytest.raises(rtnl.LinkNotFound):
        r.link("x" * 20)  # cannot exist: no request needed


def test_netns_path():
    assert netns.path("blue") == "/run/netns/blue"
    assert netns.path("/proc/1/ns/net") == "/proc/1/ns/net"
    for bad in ("", "a/b", ".."):
        with pytest.raises(ValueError):
            netns.path(bad)
