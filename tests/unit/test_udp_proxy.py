"""The udp backend's packet code: checksums, TTL, ICMP, TSO segmentation, merging, routes.

Packets are built and decoded with scapy (an independent implementation of the formats).
"""
from __future__ import annotations

import struct
from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

scapy_all = pytest.importorskip("scapy.all")
IP, TCP, UDP, ICMP, Raw = (scapy_all.IP, scapy_all.TCP, scapy_all.UDP, scapy_all.ICMP,
                           scapy_all.Raw)

from flannel_py.backend import udp_proxy as up  # noqa: E402


def _valid(pkt_bytes: bytes) -> bool:
    """True when scapy recomputes the same IP and L4 checksums as found in the packet."""
    p = IP(pkt_bytes)
    fresh = p.copy()
    del fresh.chksum
    l4 = fresh.payload
    if hasattr(l4, "chksum"):
        del l4.chksum
    rebuilt = IP(bytes(fresh))
    ok = rebuilt.chksum == p.chksum
    if hasattr(p.payload, "chksum"):
        ok = ok and rebuilt.payload.chksum == p.payload.chksum
    return ok


# --- checksums and TTL ----------------------------------------------------------------------

@given(st.binary(min_size=0, max_size=300))
def test_checksum_matches_scapy(data):
    assert up.checksum(data) == scapy_all.checksum(data)


@settings(max_examples=100, deadline=None)
@given(ttl=st.integers(2, 255), ident=st.integers(0, 0xFFFF), tos=st.integers(0, 255),
       src=st.integers(1, 2**32 - 2), dst=st.integers(1, 2**32 - 2),
       proto=st.integers(0, 255), flags=st.sampled_from([0, 2]))
def test_decrement_ttl_keeps_the_header_checksum_valid(ttl, ident, tos, src, dst, proto, flags):
    pkt = bytearray(bytes(IP(ttl=ttl, id=ident, tos=tos, src=str(IPv4Address(src)),
                             dst=str(IPv4Address(dst)), proto=proto, flags=flags)
                          / Raw(b"abcdefgh")))
    assert up.decrement_ttl(pkt)
    decoded = IP(bytes(pkt))
    assert decoded.ttl == ttl - 1
    zeroed = bytes(pkt[:10]) + b"\0\0" + bytes(pkt[12:20])
    assert scapy_all.checksum(zeroed) == decoded.chksum   # as if computed from scratch


@pytest.mark.parametrize("ttl", [0, 1])
def test_decrement_ttl_drops_expiring_packets(ttl):
    pkt = bytearray(bytes(IP(ttl=ttl, src="10.1.0.1", dst="10.2.0.1") / Raw(b"x")))
    before = bytes(pkt)
    assert not up.decrement_ttl(pkt)
    assert bytes(pkt) == before


def test_ipv4_header_ok():
    pkt = bytes(IP(src="10.1.0.1", dst="10.2.0.1") / Raw(b"x" * 10))
    assert up.ipv4_header_ok(pkt, len(pkt)) == 30
    assert up.ipv4_header_ok(pkt + b"pad", len(pkt) + 3) == 30
    assert up.ipv4_header_ok(pkt, 29) == 0                 # truncated
    assert up.ipv4_header_ok(b"\x60" + pkt[1:], len(pkt)) == 0  # IPv6 version nibble
    assert up.ipv4_header_ok(b"\x44" + pkt[1:], len(pkt)) == 0  # IHL 4
    assert up.ipv4_header_ok(pkt[:12], 12) == 0


# --- ICMP net unreachable -------------------------------------------------------------------

def test_icmp_net_unreachable_bytes():
    offender = bytes(IP(src="10.244.1.5", dst="10.244.9.9", ttl=63, id=77)
                     / TCP(sport=40000, dport=80, seq=1234) / Raw(b"payload"))
    answer = up.icmp_net_unreachable(offender, IPv4Address("10.244.1.0").packed)
    assert answer is not None
    p = IP(answer)
    assert (p.src, p.dst, p.ttl, p.proto) == ("10.244.1.0", "10.244.1.5", 8, 1)
    assert p.len == 20 + 8 + 20 + 8 == len(answer)
    assert (p[ICMP].type, p[ICMP].code) == (3, 0)
    assert bytes(p[ICMP].payload)[:28] == offender[:28]   # IP header + 8 bytes of TCP
    assert _valid(answer)
    assert up.checksum(answer[20:]) == 0


def test_icmp_net_unreachable_not_for_icmp_or_fragments():
    src = IPv4Address("10.244.1.0").packed
    icmp = bytes(IP(src="10.244.1.5", dst="10.244.9.9") / ICMP())
    assert up.icmp_net_unreachable(icmp, src) is None
    frag = bytes(IP(src="10.244.1.5", dst="10.244.9.9", frag=10) / Raw(b"x" * 16))
    assert up.icmp_net_unreachable(frag, src) is None
    first = bytes(IP(src="10.244.1.5", dst="10.244.9.9", flags="MF") / UDP() / Raw(b"x" * 16))
    assert up.icmp_net_unreachable(first, src) is not None


def test_complete_checksum_for_partial_tcp_and_udp():
    for l4 in (TCP(sport=1, dport=2, flags="A"), UDP(sport=1, dport=2)):
        pkt = bytearray(bytes(IP(src="10.0.0.1", dst="10.0.0.2") / l4 / Raw(b"hello world!")))
        off = 16 if isinstance(l4, TCP) else 6
        total = len(pkt) - 20
        partial = up.csum_fold(up.pseudo_sum(pkt, 20, pkt[9], total))
        pkt[20 + off:22 + off] = struct.pack("!H", partial)   # what the kernel leaves there
        up.complete_checksum(pkt, 20, off)
        assert _valid(bytes(pkt))


# --- TSO segmentation -----------------------------------------------------------------------

def _super_packet(payload: bytes, flags: str = "PA", seq: int = 1000, opts=None) -> bytes:
    tcp = TCP(sport=5201, dport=40000, seq=seq, ack=99, flags=flags, window=501,
              options=opts if opts is not None else [("NOP", None), ("NOP", None),
                                                     ("Timestamp", (1, 2))])
    pkt = IP(src="10.244.1.2", dst="10.244.2.2", id=0xFFFE, ttl=63, flags="DF") / tcp / payload
    raw = bytearray(bytes(pkt))
    if len(raw) > 0xFFFF:
        raise AssertionError("test payload too large")
    return bytes(raw)


@pytest.mark.parametrize("plen,mss", [(5000, 1420), (1420 * 4, 1420), (1421, 1420),
                                      (999, 1420), (64000, 1448), (7, 3)])
@pytest.mark.parametrize("flags", ["PA", "FPA", "A", "CA"])
def test_segment_tcp4_gives_valid_packets(plen, mss, flags):
    payload = bytes(range(256)) * (plen // 256) + bytes(plen % 256)
    sp = _super_packet(payload, flags=flags, seq=0xFFFFF000)
    out = bytearray(up.SEG_BUF_SIZE)
    seg_len, total = up.segment_tcp4(memoryview(sp), mss, out)
    hl = 20 + 32
    assert seg_len == hl + mss
    pieces = [bytes(out[o:min(o + seg_len, total)]) for o in range(0, total, seg_len)]
    assert len(pieces) == -(-plen // mss)
    got = b""
    orig = IP(sp)
    for i, raw in enumerate(pieces):
        p = IP(raw)
        assert _valid(raw), f"segment {i} has a bad checksum"
        assert p.len == len(raw)
        assert p.id == (0xFFFE + i) & 0xFFFF
        assert p.ttl == 63 and p.flags == "DF"
        assert p[TCP].seq == (0xFFFFF000 + i * mss) & 0xFFFFFFFF
        assert p[TCP].ack == 99 and p[TCP].window == 501
        assert p[TCP].options == orig[TCP].options
        last, first = i == len(pieces) - 1, i == 0
        want = set(str(orig[TCP].flags))
        if not last:
            want -= {"F", "P"}
        if not first:
            want -= {"C"}
        assert set(str(p[TCP].flags)) == want
        got += bytes(p[TCP].payload)
    assert got == payload


def test_segment_tcp4_refuses_non_tcp():
    with pytest.raises(ValueError):
        up.segment_tcp4(bytes(IP() / UDP() / Raw(b"x" * 100)), 10, bytearray(1000))
    with pytest.raises(ValueError):
        up.segment_tcp4(bytes(IP() / TCP()), 10, bytearray(1000))


# --- merging --------------------------------------------------------------------------------

def _segments(plen=1420 * 5 + 100, mss=1420, flags="PA", ttl=62):
    sp = _super_packet(bytes((i * 7) & 0xFF for i in range(plen)), flags=flags)
    sp = bytearray(sp)
    sp[8] = ttl
    out = bytearray(up.SEG_BUF_SIZE)
    seg_len, total = up.segment_tcp4(memoryview(bytes(sp)), mss, out)
    return [bytes(out[o:min(o + seg_len, total)]) for o in range(0, total, seg_len)]


def _run_merger(packets, verify=True, seg=None):
    """Feed ``packets`` as one GRO batch (all but the last must then be ``seg`` long) or,
    without ``seg``, each as its own batch of one; returns the emitted TUN writes."""
    emitted = []
    emit = lambda parts: emitted.append(b"".join(bytes(p) for p in parts))  # noqa: E731
    out = bytearray(up.BUF_SIZE)
    if seg is None:
        for pkt in packets:
            up.merge_batch(memoryview(bytearray(pkt)), len(pkt), len(pkt), emit, verify)
    else:
        data = bytearray(b"".join(packets))
        up.merge_batch(memoryview(data), len(data), seg, emit, verify)
    return emitted


def _resegment(written: bytes) -> list[bytes]:
    """What the kernel does with a GSO packet written into the TUN, done with our segmenter
    after completing the partial checksum the way the kernel would."""
    flags, gso_type, hdr_len, gso_size, cstart, coff = up.VNET_HDR.unpack_from(written)
    pkt = bytearray(written[up.VNET_HDR_LEN:])
    if gso_type == up.VNET_GSO_NONE:
        return [bytes(pkt)]
    assert (flags, gso_type, cstart, coff) == (1, 1, 20, 16)
    assert hdr_len == 52
    out = bytearray(up.SEG_BUF_SIZE)
    seg_len, total = up.segment_tcp4(memoryview(pkt), gso_size, out)
    return [bytes(out[o:min(o + seg_len, total)]) for o in range(0, total, seg_len)]


def _ttl_minus_one(pkts):
    out = []
    for p in pkts:
        b = bytearray(p)
        assert up.decrement_ttl(b)
        out.append(bytes(b))
    return out


def test_merge_batch_rebuilds_the_super_packet():
    segs = _segments()
    emitted = _run_merger(segs, seg=len(segs[0]))
    assert len(emitted) == 1
    written = emitted[0]
    hdr = up.VNET_HDR.unpack_from(written)
    assert hdr[1] == up.VNET_GSO_TCPV4 and hdr[3] == 1420
    p = IP(written[up.VNET_HDR_LEN:])
    assert p.len == len(written) - up.VNET_HDR_LEN
    assert p.ttl == 61                                 # decremented once, as upstream
    assert up.checksum(written[up.VNET_HDR_LEN:up.VNET_HDR_LEN + 20]) == 0
    # the TCP field holds the folded pseudo-header sum (CHECKSUM_PARTIAL)
    want = up.csum_fold(up.pseudo_sum(written[10:], 20, 6, p.len - 20))
    assert p[TCP].chksum == want
    assert str(p[TCP].flags) == "PA"
    assert _resegment(written) == _ttl_minus_one(segs)


@pytest.mark.parametrize("verify", [True, False])
def test_merge_batch_splits_runs_at_gaps(verify):
    segs = _segments()
    bad = bytearray(segs[2])
    bad[-1] ^= 0xFF                                  # corrupt payload: checksum fails
    emitted = _run_merger([segs[0], segs[1], bytes(bad), segs[3], segs[5]], verify=verify,
                          seg=len(segs[0]))
    kinds = [up.VNET_HDR.unpack_from(e)[1] for e in emitted]
    want = _ttl_minus_one([segs[0], segs[1], bytes(bad), segs[3], segs[5]])
    if verify:
        # run [0,1] merged; the bad packet passed alone (the kernel drops it); [3] alone
        # (5 is not contiguous with it); [5] alone
        assert kinds == [1, 0, 0, 0]
        assert _resegment(emitted[0]) == want[:2]
        assert [e[10:] for e in emitted[1:]] == want[2:]
    else:
        # unverified, the corrupt packet joins the run; the gap before 5 still splits
        assert kinds == [1, 0]
        assert _resegment(emitted[0])[:2] == want[:2]
        assert emitted[1][10:] == want[4]


def test_merge_batch_passes_other_packets_through():
    udp = bytes(IP(src="10.244.1.2", dst="10.244.2.2") / UDP(sport=1, dport=2) / Raw(b"x" * 50))
    syn = bytes(IP(src="10.244.1.2", dst="10.244.2.2") / TCP(flags="S"))
    ack = bytes(IP(src="10.244.1.2", dst="10.244.2.2") / TCP(flags="A"))
    emitted = _run_merger([udp, syn, ack])
    assert [e[10:] for e in emitted] == _ttl_minus_one([udp, syn, ack])
    assert all(e[:10] == up.ZERO_VNET_HDR for e in emitted)


def test_merge_batch_drops_bad_headers_and_expired_ttl():
    good = bytes(IP(src="10.244.1.2", dst="10.244.2.2", ttl=5) / UDP() / Raw(b"x" * 20))
    expiring = bytes(IP(src="10.244.1.2", dst="10.244.2.2", ttl=1) / UDP() / Raw(b"x" * 20))
    truncated = good[:30] + bytes(len(good) - 30)
    truncated = truncated[:2] + (200).to_bytes(2, "big") + truncated[4:]   # tot_len > datagram
    emitted = []
    out = bytearray(up.BUF_SIZE)
    for pkt, want_drop in ((good, 0), (expiring, 1), (truncated, 1), (b"\x60" + good[1:], 1)):
        dropped = up.merge_batch(memoryview(bytearray(pkt)), len(pkt), len(pkt),
                                 lambda parts: emitted.append(parts), False)
        assert dropped == want_drop
    assert len(emitted) == 1 and IP(bytes(emitted[0][1])).ttl == 4


def test_merge_batch_ends_a_run_after_psh():
    a = _segments(plen=1420 * 2, flags="PA")
    b = _segments(plen=1420 * 2, flags="PA")
    # b continues a's sequence space
    b = [bytearray(x) for x in b]
    for x in b:
        seq = struct.unpack_from("!I", x, 24)[0] + 1420 * 2
        struct.pack_into("!I", x, 24, seq & 0xFFFFFFFF)
        x[36:38] = b"\0\0"
        total = up.csum_add(bytes(x[20:])) + up.pseudo_sum(x, 20, 6, len(x) - 20)
        struct.pack_into("!H", x, 36, up.csum_finish(total))
    emitted = _run_merger(a + [bytes(x) for x in b], seg=len(a[0]))
    assert len(emitted) == 2
    assert _resegment(emitted[0]) == _ttl_minus_one(a)
    assert _resegment(emitted[1]) == _ttl_minus_one([bytes(x) for x in b])


# --- route table ----------------------------------------------------------------------------

def test_route_table_lookup():
    table = up.RouteTable({IPv4Network("10.244.2.0/24"): IPv4Address("192.168.0.2"),
                           IPv4Network("10.244.3.0/24"): IPv4Address("192.168.0.3"),
                           IPv4Network("10.244.0.0/16"): IPv4Address("192.168.0.9"),
                           IPv4Network("10.244.3.128/25"): IPv4Address("192.168.0.4")},
                          port=8285)
    look = lambda ip: table.lookup(int(IPv4Address(ip)))  # noqa: E731
    assert look("10.244.2.77") == ("192.168.0.2", 8285)
    assert look("10.244.3.1") == ("192.168.0.3", 8285)
    assert look("10.244.3.200") == ("192.168.0.4", 8285)   # longest prefix wins
    assert look("10.244.7.1") == ("192.168.0.9", 8285)
    assert look("10.245.0.1") is None
    assert len(table) == 4
    pkt = bytes(IP(src="10.244.1.1", dst="10.244.2.9"))
    assert table.lookup_packet(pkt) == ("192.168.0.2", 8285)
    assert up.RouteTable().lookup(int(IPv4Address("10.244.2.1"))) is None


# --- the backend's pure parts ---------------------------------------------------------------

def test_render_tun_and_routes():
    from flannel_py.backend import udp
    from flannel_py.config import parse_config
    from flannel_py.subnet.registry import Lease, LeaseAttrs

    config = parse_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}')
    own = Lease(IPv4Network("10.244.1.0/24"), LeaseAttrs(IPv4Address("192.168.0.1"), "udp"))
    assert udp.render_tun(own, config, 1500) == udp.TunConfig(
        "flannel0", "10.244.1.0/32", 1472, "10.244.0.0/16")

    def lease(net, ip, bt):
        return Lease(IPv4Network(net), LeaseAttrs(IPv4Address(ip), bt))
    remote = [lease("10.244.2.0/24", "192.168.0.2", "udp"),
              lease("10.244.3.0/24", "192.168.0.3", ""),        # upstream udp: no type
              lease("10.244.4.0/24", "192.168.0.4", "vxlan"),
              lease("10.244.1.0/24", "192.168.0.9", "udp")]     # our own subnet
    assert udp.render_routes(remote, own.subnet) == {
        IPv4Network("10.244.2.0/24"): IPv4Address("192.168.0.2"),
        IPv4Network("10.244.3.0/24"): IPv4Address("192.168.0.3")}


def test_backend_mtu_and_mode_validation():
    from flannel_py.backend import ExternalInterface, udp
    from flannel_py.config import parse_config

    config = parse_config('{"Network": "10.244.0.0/16", "Backend": {"Type": "udp", "Port": 9000}}')
    ext = ExternalInterface("eth0", 2, IPv4Address("192.168.0.1"), IPv4Address("192.168.0.1"), 9000)
    be = udp.UdpBackend(ext, config)
    assert (be.mtu(), be.port, be.backend_data(), be.type) == (9000 - 28, 9000, None, "udp")
    with pytest.raises(ValueError):
        udp.UdpBackend(ext, config, mode="turbo")
