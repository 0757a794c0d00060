"""The udp backend's packet loop: flannel0 (a TUN device) <-> UDP port 8285.

Wire format (upstream flannel's ``proxy_amd64.c``): every UDP datagram carries exactly one
raw IPv4 packet, nothing else.  Like upstream, the proxy decrements the inner TTL in both
directions (drops the packet when it would reach 0; no ICMP time-exceeded, upstream has it as
a TODO), and answers a packet for a destination that no lease covers with an ICMP
net-unreachable written back into the TUN (from the TUN's address, TTL 8, never about an
ICMP packet or a non-first fragment).

Three data paths (``mode``), measured against each other by benchmarks/flannel_throughput.py:

* **batch** (default, the fastest here): the TUN fd has a ``virtio_net_hdr``
  (``IFF_VNET_HDR``) but no offloads, so the kernel segments and checksums TCP itself (in C)
  and hands over one MTU-sized packet per read.  Consecutive packets of equal size for the
  same peer are collected in one buffer and leave with one ``sendmsg`` using UDP GSO
  (``UDP_SEGMENT``): one kernel send for up to 44 packets, still one IP packet per datagram
  on the wire.  Incoming, ``UDP_GRO`` delivers such a batch at once, and runs of consecutive
  segments of one TCP flow are merged back into one super-packet (:func:`merge_batch`) and
  written into the TUN with a GSO ``virtio_net_hdr``, so the kernel forwards one skb
  instead of 44 and the pod's TCP receives it as if GRO had made it.
* **tso**: the same, but the TUN also has ``TUNSETOFFLOAD`` (``TUN_F_CSUM | TUN_F_TSO4``):
  the kernel hands over whole TCP super-packets of up to 64 KiB which are cut here
  (:func:`segment_tcp4`, the kernel's TSO rules, every checksum complete).  Fewer syscalls,
  but computing the TCP checksums in Python (~3 µs a packet) costs more than the kernel's
  segmentation plus one read per packet.
* **simple**: plain ``IFF_TUN | IFF_NO_PI``, one packet per read/send/write — upstream's
  loop.  The fallback when the kernel refuses vnet headers or offloads.

Everything that computes bytes is a pure function here (checksums, TTL, ICMP, segmentation,
merging, the route table) and unit-tested; :class:`Proxy` only moves buffers between fds.
"""
from __future__ import annotations

import errno
import fcntl
import logging
import os
import select
import socket
import struct
import threading
from collections.abc import Iterable, Mapping
from ipaddress import IPv4Address, IPv4Network

log = logging.getLogger(__name__)

# --- kernel interface constants ---------------------------------------------------------------

TUN_DEVICE = "/dev/net/tun"
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOFFLOAD = 0x400454D0
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02

VNET_HDR = struct.Struct("=BBHHHH")   # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
VNET_HDR_LEN = VNET_HDR.size          # 10: the legacy header, tun's default vnet_hdr_sz
VNET_F_NEEDS_CSUM = 1
VNET_GSO_NONE = 0
VNET_GSO_TCPV4 = 1
ZERO_VNET_HDR = bytes(VNET_HDR_LEN)

SOL_UDP = 17
UDP_SEGMENT = 103
UDP_GRO = 104
UDP_MAX_PAYLOAD = 65507               # 65535 - 20 (IP) - 8 (UDP)
UDP_MAX_SEGMENTS = 64                 # the kernel's limit up to 6.x is 64 (128 later)

IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
ICMP_DEST_UNREACH = 3
ICMP_NET_UNREACH = 0
ICMP_TTL = 8
MAX_IP_HDR = 60

TCP_FIN, TCP_PSH, TCP_ACK, TCP_CWR = 0x01, 0x08, 0x10, 0x80

BUF_SIZE = 65536 + 256                # one TUN super-packet or one UDP GRO batch, with room
SEG_BUF_SIZE = 2 * BUF_SIZE           # a super-packet cut up: room for the copied headers

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_TOTLEN_ID = struct.Struct("!HH")
_LEN_SEQ = struct.Struct("!2xH20xI")  # from the IP header start: tot_len, TCP seq (ihl = 5)
_TTL_PROTO_CSUM_DST = struct.Struct("!8xBBH4xI")
_TTL_PROTO_CSUM = struct.Struct("!BBH")     # packed at IP header + 8


# --- checksums --------------------------------------------------------------------------------
#
# The one's-complement sum of 16-bit big-endian words is congruent to the buffer read as one
# big-endian integer modulo 0xFFFF (because 2**16 == 1 mod 0xFFFF), so int.from_bytes does the
# whole sum in C.  Values are kept "unfolded" (any non-negative int) until the end.

def csum_add(data) -> int:
    """The unfolded sum of ``data`` (bytes-like) as 16-bit words; odd lengths are zero-padded."""
    v = int.from_bytes(data, "big")
    return v << 8 if len(data) & 1 else v


def csum_fold(total: int) -> int:
    """Fold an unfolded sum to its 16-bit one's-complement sum (0 only for an all-zero sum)."""
    r = total % 0xFFFF
    return r if r or not total else 0xFFFF


def csum_finish(total: int) -> int:
    """The checksum field value for an unfolded sum (the complement of the folded sum)."""
    return 0xFFFF - csum_fold(total) if total else 0xFFFF


def checksum(data) -> int:
    """Internet checksum (RFC 1071) of ``data``."""
    return csum_finish(csum_add(data))


def checksum_ok(total: int) -> bool:
    """True when a sum taken *including* the checksum field verifies (folds to 0xFFFF)."""
    return total != 0 and total % 0xFFFF == 0


def pseudo_sum(pkt, ihl: int, proto: int, length: int) -> int:
    """Unfolded IPv4 pseudo-header sum: addresses from ``pkt`` (IP header at 0)."""
    return int.from_bytes(pkt[12:20], "big") + proto + length


# --- single packets ---------------------------------------------------------------------------

def decrement_ttl(buf, off: int = 0) -> bool:
    """Decrement the TTL of the IPv4 header at ``buf[off:]`` in place and patch the header
    checksum incrementally (RFC 1624, eqn. 3).  False — packet to be dropped — when the TTL
    would reach 0 (upstream's ``decrement_ttl``; a TTL of 0 is dropped too instead of wrapping).
    """
    ttl = buf[off + 8]
    if ttl <= 1:
        return False
    buf[off + 8] = ttl - 1
    hc = (buf[off + 10] << 8) | buf[off + 11]
    # HC' = ~(~HC + ~m + m'); with m' = m - 0x100, ~m + m' == 0xFEFF in one's complement.
    s = (hc ^ 0xFFFF) + 0xFEFF
    s = (s & 0xFFFF) + (s >> 16)
    hc = s ^ 0xFFFF
    buf[off + 10] = hc >> 8
    buf[off + 11] = hc & 0xFF
    return True


def ipv4_header_ok(pkt, length: int) -> int:
    """The packet's IPv4 total length if ``pkt[:length]`` starts with a sane IPv4 header
    (version 4, 20 <= IHL*4 <= total length <= ``length``), else 0."""
    if length < 20 or pkt[0] >> 4 != 4:
        return 0
    ihl = (pkt[0] & 0x0F) * 4
    tot = (pkt[2] << 8) | pkt[3]
    if ihl < 20 or tot < ihl or tot > length:
        return 0
    return tot


def icmp_net_unreachable(pkt, src: bytes) -> bytes | None:
    """The ICMP destination-unreachable (net unreachable) answer to ``pkt``, sent from
    ``src`` (4 bytes, the TUN's address) as upstream builds it — or None where RFC 792 says
    not to answer (ICMP packets, non-first fragments) or the header is malformed.

    The answer quotes the offending IP header and the first 8 bytes of its payload."""
    if len(pkt) < 20:
        return None
    ihl = (pkt[0] & 0x0F) * 4
    if ihl < 20 or ihl >= MAX_IP_HDR + 20 or ihl > len(pkt):
        return None
    if pkt[9] == IPPROTO_ICMP:
        return None
    if ((pkt[6] << 8) | pkt[7]) & 0x1FFF:
        return None
    quoted = bytes(pkt[:ihl + 8])
    quoted += bytes(ihl + 8 - len(quoted))          # a short packet is zero-padded
    total = 20 + 8 + len(quoted)
    ip = bytearray(struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, ICMP_TTL, IPPROTO_ICMP,
                               0, bytes(src), bytes(pkt[12:16])))
    _U16.pack_into(ip, 10, checksum(ip))
    icmp = bytearray(struct.pack("!BBHI", ICMP_DEST_UNREACH, ICMP_NET_UNREACH, 0, 0)) + quoted
    _U16.pack_into(icmp, 2, checksum(icmp))
    return bytes(ip + icmp)


def complete_checksum(pkt, csum_start: int, csum_offset: int) -> None:
    """Finish a ``CHECKSUM_PARTIAL`` packet in place (virtio ``NEEDS_CSUM``): the field at
    ``csum_start + csum_offset`` holds the pseudo-header sum; sum from ``csum_start`` to the
    end and store the complement (0 becomes 0xFFFF for UDP, as the kernel does)."""
    where = csum_start + csum_offset
    c = csum_finish(csum_add(pkt[csum_start:]))
    if c == 0 and pkt[9] == IPPROTO_UDP:
        c = 0xFFFF
    pkt[where] = c >> 8
    pkt[where + 1] = c & 0xFF


# --- TCP segmentation (TUN super-packet -> MTU-sized packets) ---------------------------------

def segment_tcp4(pkt, mss: int, out: bytearray) -> tuple[int, int]:
    """Cut the IPv4/TCP super-packet ``pkt`` (IP header at 0, TTL already as it should go out)
    into packets of ``mss`` payload bytes, written back to back into ``out``.

    Returns ``(segment length, total length)``: every packet but the last is exactly
    ``segment length`` bytes, which is what UDP GSO needs.  Headers follow the kernel's TSO
    (``tcp_gso_segment``/``inet_gso_segment``): IP id increments, seq advances by the payload,
    CWR stays on the first packet only, FIN and PSH on the last only; IP and TCP checksums are
    complete.  Raises ValueError for a packet that is not IPv4/TCP or has no payload."""
    ihl = (pkt[0] & 0x0F) * 4
    if pkt[0] >> 4 != 4 or ihl < 20 or pkt[9] != IPPROTO_TCP or mss <= 0:
        raise ValueError("not an IPv4/TCP packet")
    tot = (pkt[2] << 8) | pkt[3]
    thl = (pkt[ihl + 12] >> 4) * 4
    hl = ihl + thl
    plen = min(tot, len(pkt)) - hl
    if thl < 20 or plen <= 0:
        raise ValueError("TCP super-packet without payload")
    flags0 = pkt[ihl + 13]
    ip_id0 = (pkt[4] << 8) | pkt[5]
    seq0 = _U32.unpack_from(pkt, ihl + 4)[0]

    hdr = bytearray(pkt[:hl])
    hdr[2:6] = b"\0\0\0\0"              # tot_len, id
    hdr[10:12] = b"\0\0"                # IP checksum
    hdr[ihl + 4:ihl + 8] = b"\0\0\0\0"  # seq
    hdr[ihl + 13] = 0                   # flags (low byte of the data-offset word)
    hdr[ihl + 16:ihl + 18] = b"\0\0"    # TCP checksum
    ip_base = csum_add(hdr[:ihl])
    tcp_base = csum_add(hdr[ihl:]) + pseudo_sum(pkt, ihl, IPPROTO_TCP, 0)

    nseg = (plen + mss - 1) // mss
    seg_len = hl + mss
    total = seg_len * (nseg - 1) + hl + plen - mss * (nseg - 1)
    if len(out) < total:
        raise ValueError("output buffer too small")
    first_flags = flags0 & ~(TCP_FIN | TCP_PSH)
    mid_flags = first_flags & ~TCP_CWR
    last_flags = flags0 & ~TCP_CWR if nseg > 1 else flags0
    from_bytes = int.from_bytes
    u16_into, u32_into, two_into = _U16.pack_into, _U32.pack_into, _TOTLEN_ID.pack_into
    o = 0
    src = hl
    end = hl + plen
    for i in range(nseg):
        n = mss if i < nseg - 1 else end - src
        flags = first_flags if i == 0 else mid_flags
        if i == nseg - 1:
            flags = last_flags if i else flags0
        seq = (seq0 + i * mss) & 0xFFFFFFFF
        ip_id = (ip_id0 + i) & 0xFFFF
        seg_tot = hl + n
        out[o:o + hl] = hdr
        ph = o + hl
        out[ph:ph + n] = pkt[src:src + n]
        two_into(out, o + 2, seg_tot, ip_id)
        u16_into(out, o + 10, csum_finish(ip_base + seg_tot + ip_id))
        u32_into(out, o + ihl + 4, seq)
        out[o + ihl + 13] = flags
        payload = from_bytes(out[ph:ph + n], "big")
        if n & 1:
            payload <<= 8
        u16_into(out, o + ihl + 16,
                 csum_finish(tcp_base + thl + n + (seq >> 16) + (seq & 0xFFFF) + flags + payload))
        o += seg_tot
        src += n
    return seg_len, o


# --- merging (UDP GRO batch -> TUN super-packets) ---------------------------------------------

def _merge_mask(hl: int) -> int:
    """Mask over an IPv4(ihl=5)/TCP header of ``hl`` bytes that keeps the fields every
    segment of one TSO burst shares (all but length, id, IP checksum, seq, flags, TCP
    checksum) — TTL, TOS, DF, addresses, ports, ack, window and options must be equal."""
    m = bytearray(b"\xff" * hl)
    for a, b in ((2, 6), (10, 12), (24, 28), (33, 34), (36, 38)):
        m[a:b] = bytes(b - a)
    return int.from_bytes(m, "big")


_MASKS = {hl: _merge_mask(hl) for hl in range(40, 81, 4)}
_MERGE_FLAGS = (TCP_ACK, TCP_ACK | TCP_PSH)


def tcp_checksum_ok(buf, off: int, tot: int) -> bool:
    """Verify the TCP checksum of the IPv4 (ihl 5) packet at ``buf[off:off + tot]``."""
    return checksum_ok(csum_add(buf[off + 20:off + tot])
                       + int.from_bytes(buf[off + 12:off + 20], "big") + IPPROTO_TCP + tot - 20)


def merge_batch(buf, n: int, seg: int, emit, verify: bool = False) -> int:
    """Hand the packets of one UDP GRO batch (``buf[:n]``, a memoryview; one IPv4 packet per
    ``seg`` bytes, the last may be shorter) to ``emit(parts)`` — a list of buffers for one
    TUN ``writev``, starting with a ``virtio_net_hdr`` — with their TTL decremented.

    Runs of consecutive TCP segments of one flow (IPv4 without options, ACK or ACK|PSH only,
    equal headers but for length/id/seq/checksums, contiguous seq, equal payload sizes with
    at most the last shorter, PSH only on the last) become one GSO super-packet: TCPV4 with
    ``gso_size`` = the segments' payload size and ``NEEDS_CSUM`` (the TCP field holds the
    pseudo-header sum, as the kernel's own GRO leaves it CHECKSUM_PARTIAL); its payload is
    passed as slices of ``buf``, not copied.  Everything else is written one packet at a
    time, unchanged but for the TTL.  With ``verify`` the TCP checksum of every merged
    segment is checked first (a bad one is passed alone, for the kernel to drop); without
    it, the outer UDP checksum is what protects the data in transit.  Returns the number of
    packets dropped (bad header, TTL expired)."""
    masks, from_bytes, unpack = _MASKS, int.from_bytes, _LEN_SEQ.unpack_from
    dropped = 0
    run = r_off = r_len = r_key = r_hl = r_mss = r_next = r_end = r_flags = 0
    parts: list = []

    def flush_run() -> int:
        if run == 1:
            if not decrement_ttl(buf, r_off):
                return 1
            emit([ZERO_VNET_HDR, buf[r_off:r_off + r_len]])
            return 0
        hdr = bytearray(buf[r_off:r_off + r_hl])
        ttl = hdr[8]
        if ttl <= 1:
            return run
        hdr[8] = ttl - 1
        _TOTLEN_ID.pack_into(hdr, 2, r_end, (hdr[4] << 8) | hdr[5])
        hdr[10] = hdr[11] = 0
        _U16.pack_into(hdr, 10, checksum(hdr[:20]))
        hdr[33] = r_flags
        _U16.pack_into(hdr, 36, csum_fold(from_bytes(hdr[12:20], "big") + IPPROTO_TCP
                                          + r_end - 20))
        parts[0] = VNET_HDR.pack(VNET_F_NEEDS_CSUM, VNET_GSO_TCPV4, r_hl, r_mss, 20, 16)
        parts[1] = hdr
        emit(parts)
        return 0

    o = 0
    while o < n:
        length = n - o if n - o < seg else seg
        start = o
        o += length
        if buf[start] == 0x45 and length >= 40 and buf[start + 9] == IPPROTO_TCP:
            tot, seq = unpack(buf, start)
            hl = 20 + (buf[start + 32] >> 4) * 4
            fl = buf[start + 33]
            if (tot == length and hl < tot and fl in _MERGE_FLAGS and hl in masks
                    and not (buf[start + 6] & 0x3F or buf[start + 7])
                    and (not verify or tcp_checksum_ok(buf, start, tot))):
                key = from_bytes(buf[start:start + hl], "big") & masks[hl]
                plen = tot - hl
                if (run and key == r_key and seq == r_next and plen <= r_mss
                        and not r_flags & TCP_PSH and r_end + plen <= 65535):
                    if run == 1:
                        parts = [None, None, buf[r_off + r_hl:r_off + r_len]]
                    parts.append(buf[start + hl:start + tot])
                    r_end += plen
                    run += 1
                    r_flags |= fl
                    r_next = (seq + plen) & 0xFFFFFFFF
                    if plen < r_mss:                 # a short segment ends the run
                        dropped += flush_run()
                        run = 0
                    continue
                if run:
                    dropped += flush_run()
                run, r_off, r_len, r_key, r_hl, r_mss = 1, start, tot, key, hl, plen
                r_next, r_flags, r_end = (seq + plen) & 0xFFFFFFFF, fl, tot
                continue
        if run:
            dropped += flush_run()
            run = 0
        tot = ipv4_header_ok(buf[start:start + length], length)
        if not tot or not decrement_ttl(buf, start):
            dropped += 1
            continue
        emit([ZERO_VNET_HDR, buf[start:start + tot]])
    if run:
        dropped += flush_run()
    return dropped


# --- routes -----------------------------------------------------------------------------------

class RouteTable:
    """Remote subnet -> (PublicIP, port), longest prefix first.  Immutable: the proxy swaps
    the whole table in one assignment, so lookups never see a half-updated table."""

    __slots__ = ("_groups", "size")

    def __init__(self, routes: Mapping[IPv4Network, IPv4Address] | Iterable = (),
                 port: int = 8285) -> None:
        items = routes.items() if isinstance(routes, Mapping) else routes
        groups: dict[int, dict[int, tuple[str, int]]] = {}
        for net, hop in items:
            net = IPv4Network(net)
            groups.setdefault(net.prefixlen, {})[int(net.network_address)] = (str(hop), port)
        self._groups = tuple(((0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF, table)
                             for plen, table in sorted(groups.items(), reverse=True))
        self.size = sum(len(t) for _, t in self._groups)

    def lookup(self, dst: int) -> tuple[str, int] | None:
        """Next hop for a destination address given as an int, or None."""
        for mask, table in self._groups:
            hop = table.get(dst & mask)
            if hop is not None:
                return hop
        return None

    def lookup_packet(self, pkt, off: int = 0) -> tuple[str, int] | None:
        return self.lookup(int.from_bytes(pkt[off + 16:off + 20], "big"))

    def __len__(self) -> int:
        return self.size


# --- the TUN device ---------------------------------------------------------------------------

def open_tun(name: str, *, vnet_hdr: bool, persist: bool = True) -> int:
    """Open (or re-attach to) TUN device ``name`` in the calling thread's netns; returns the
    fd.  A persistent device outlives this process with its addresses and routes, so a
    restarted flanneld re-attaches without tearing the pod network down."""
    fd = os.open(TUN_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    try:
        flags = IFF_TUN | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0)
        ifr = struct.pack("16sH22x", name.encode(), flags)
        fcntl.ioctl(fd, TUNSETIFF, ifr)
        fcntl.ioctl(fd, TUNSETPERSIST, 1 if persist else 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def set_offload(fd: int, flags: int) -> bool:
    """TUNSETOFFLOAD on a vnet-header TUN fd (0 turns the offloads of a re-attached device
    off again); False when the kernel refuses."""
    try:
        fcntl.ioctl(fd, TUNSETOFFLOAD, flags)
    except OSError as exc:
        log.warning("TUNSETOFFLOAD %#x failed: %s", flags, exc)
        return False
    return True


def udp_socket(addr: str, port: int, *, gro: bool) -> tuple[socket.socket, bool]:
    """The encapsulation socket bound to ``addr:port``; returns it and whether UDP GRO is on."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        for opt in (33, 32):                  # SO_RCVBUFFORCE, SO_SNDBUFFORCE (root)
            try:
                sock.setsockopt(socket.SOL_SOCKET, opt, 8 << 20)
            except OSError:
                pass
        sock.bind((addr, port))
        on = False
        if gro:
            try:
                sock.setsockopt(SOL_UDP, UDP_GRO, 1)
                on = True
            except OSError as exc:
                log.info("UDP_GRO not available: %s", exc)
    except BaseException:
        sock.close()
        raise
    return sock, on


# --- the loop ---------------------------------------------------------------------------------

MODE_TSO = "tso"          # vnet header + TSO4: segment super-packets here, UDP GSO out, GRO in
MODE_BATCH = "batch"      # vnet header, no offloads: one packet per read, UDP GSO/GRO batches
MODE_SIMPLE = "simple"    # upstream's loop: one packet per read, per send, per write
MODES = (MODE_TSO, MODE_BATCH, MODE_SIMPLE)


def tun_offload_flags(mode: str) -> int | None:
    """TUNSETOFFLOAD argument for a mode (None: the fd has no vnet header)."""
    return {MODE_TSO: TUN_F_CSUM | TUN_F_TSO4, MODE_BATCH: 0}.get(mode)


class Proxy:
    """Moves packets between the TUN fd and the UDP socket on two threads (one per direction;
    the GIL is released in every read/write, so they overlap).  ``routes`` is swapped
    atomically by :meth:`set_routes`.  The TUN fd must have been opened for ``mode``
    (``IFF_VNET_HDR`` and :func:`tun_offload_flags` unless simple)."""

    def __init__(self, tun_fd: int, sock: socket.socket, tun_ip: IPv4Address, *,
                 mode: str = MODE_BATCH, gro: bool = False,
                 verify_checksums: bool = False) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown proxy mode {mode!r}")
        self.tun_fd = tun_fd
        self.sock = sock
        self.tun_ip = IPv4Address(tun_ip).packed
        self.mode = mode
        self.vnet = mode != MODE_SIMPLE
        self.gro = gro
        self.verify = verify_checksums
        self.routes = RouteTable()
        self.stats = {"tx_packets": 0, "rx_packets": 0, "tx_dropped": 0, "rx_dropped": 0,
                      "unreachable": 0, "tx_sends": 0, "rx_batches": 0, "rx_writes": 0}
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._threads: list[threading.Thread] = []
        self._gso_ok = mode != MODE_SIMPLE
        self._cmsg_cache: dict[int, list] = {}

    # lifecycle
    def set_routes(self, table: RouteTable) -> None:
        self.routes = table

    def start(self) -> None:
        os.set_blocking(self.tun_fd, False)
        self.sock.setblocking(False)
        tx = {MODE_TSO: self._tx_tso, MODE_BATCH: self._tx_batch,
              MODE_SIMPLE: self._tx_simple}[self.mode]
        rx = self._rx_simple if self.mode == MODE_SIMPLE else self._rx_vnet
        for name, fn in (("udp-tx", tx), ("udp-rx", rx)):
            t = threading.Thread(target=self._guard, args=(fn,), name=f"flannel-{name}",
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        for t in self._threads:
            t.join(5)
        self._threads.clear()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    def _guard(self, fn) -> None:
        try:
            fn()
        except Exception:                     # a dead loop must be visible in the log
            log.exception("udp proxy loop %s died", threading.current_thread().name)

    def _waiter(self, fd: int):
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        stop = self._stop

        def wait() -> bool:
            """Block until ``fd`` is readable; False when the proxy is stopping."""
            while not stop.is_set():
                try:
                    for rfd, _ev in poller.poll(1000):
                        if rfd == fd:
                            return True
                except InterruptedError:
                    continue
            return False
        return wait

    # shared pieces
    def _unreachable(self, pkt) -> None:
        self.stats["unreachable"] += 1
        answer = icmp_net_unreachable(pkt, self.tun_ip)
        if answer is None:
            return
        self._tun_write([ZERO_VNET_HDR, answer] if self.vnet else [answer])

    def _send(self, view, seg_len: int, total: int, hop: tuple[str, int]) -> None:
        """Send ``view[:total]`` — packets of ``seg_len`` bytes, the last may be shorter — to
        ``hop``: one datagram per packet, as few ``sendmsg`` calls as UDP GSO allows."""
        stats = self.stats
        if total <= seg_len or not self._gso_ok:
            for o in range(0, total, seg_len):
                self._sendto(view[o:min(o + seg_len, total)], hop)
            return
        cmsg = self._cmsg_cache.get(seg_len)
        if cmsg is None:
            cmsg = self._cmsg_cache[seg_len] = [(SOL_UDP, UDP_SEGMENT,
                                                 struct.pack("=H", seg_len))]
        per_call = max(1, min(UDP_MAX_SEGMENTS, UDP_MAX_PAYLOAD // seg_len)) * seg_len
        o = 0
        while o < total:
            end = min(o + per_call, total)
            try:
                if end - o > seg_len:
                    self.sock.sendmsg([view[o:end]], cmsg, 0, hop)
                else:
                    self.sock.sendto(view[o:end], hop)
                stats["tx_sends"] += 1
            except BlockingIOError:
                self._wait_writable()
                continue
            except OSError as exc:
                if exc.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                    log.warning("UDP GSO send failed (%s); sending datagrams one by one", exc)
                    self._gso_ok = False
                    for s in range(o, total, seg_len):
                        self._sendto(view[s:min(s + seg_len, total)], hop)
                    return
                stats["tx_dropped"] += (end - o + seg_len - 1) // seg_len
                log.debug("UDP send to %s failed: %s", hop, exc)
            o = end

    def _sendto(self, data, hop) -> None:
        while True:
            try:
                self.sock.sendto(data, hop)
                self.stats["tx_sends"] += 1
                return
            except BlockingIOError:
                self._wait_writable()
            except OSError as exc:
                self.stats["tx_dropped"] += 1
                log.debug("UDP send to %s failed: %s", hop, exc)
                return

    def _wait_writable(self) -> None:
        select.select([], [self.sock], [], 0.1)

    def _tun_write(self, parts) -> None:
        while True:
            try:
                os.writev(self.tun_fd, parts)
                self.stats["rx_writes"] += 1
                return
            except BlockingIOError:
                select.select([], [self.tun_fd], [], 0.1)
            except OSError as exc:
                self.stats["rx_dropped"] += 1
                log.debug("TUN write failed: %s", exc)
                return

    def _read_failed(self, exc: OSError, what: str) -> bool:
        """Log a read error; True when the loop should end (the proxy is stopping)."""
        if self._stop.is_set():
            return True
        log.warning("%s read failed: %s", what, exc)
        return False

    # TX, tso mode: super-packets from the TUN, cut here
    def _tx_tso(self) -> None:
        fd = self.tun_fd
        buf = bytearray(BUF_SIZE)
        view = memoryview(buf)
        out = bytearray(SEG_BUF_SIZE)
        oview = memoryview(out)
        wait = self._waiter(fd)
        readv = os.readv
        unpack_hdr = VNET_HDR.unpack_from
        stats = self.stats
        V = VNET_HDR_LEN
        while True:
            try:
                n = readv(fd, [buf])
            except BlockingIOError:
                if not wait():
                    return
                continue
            except OSError as exc:
                if self._read_failed(exc, "TUN"):
                    return
                continue
            if n < V + 20 or buf[V] >> 4 != 4:
                continue                        # IPv6 (e.g. the TUN's own RS/MLD): not ours
            vflags, gso_type, _hl, gso_size, csum_start, csum_offset = unpack_hdr(buf)
            pkt = view[V:n]
            hop = self.routes.lookup((buf[V + 16] << 24) | (buf[V + 17] << 16)
                                     | (buf[V + 18] << 8) | buf[V + 19])
            if hop is None:
                self._unreachable(pkt)
                continue
            if gso_type == VNET_GSO_TCPV4 and gso_size:
                ttl = buf[V + 8]
                if ttl <= 1:
                    stats["tx_dropped"] += 1
                    continue
                buf[V + 8] = ttl - 1            # the IP checksum is redone per segment
                try:
                    seg_len, total = segment_tcp4(pkt, gso_size, out)
                except ValueError as exc:
                    stats["tx_dropped"] += 1
                    log.debug("cannot segment: %s", exc)
                    continue
                stats["tx_packets"] += (total + seg_len - 1) // seg_len
                self._send(oview, seg_len, total, hop)
                continue
            if gso_type != VNET_GSO_NONE:
                stats["tx_dropped"] += 1
                continue
            if vflags & VNET_F_NEEDS_CSUM:
                complete_checksum(pkt, csum_start, csum_offset)
            if not decrement_ttl(pkt):
                stats["tx_dropped"] += 1
                continue
            stats["tx_packets"] += 1
            self._sendto(pkt, hop)

    # TX, batch mode: the kernel segments; equal-sized packets to one peer leave together
    def _tx_batch(self) -> None:
        fd = self.tun_fd
        hdr = bytearray(VNET_HDR_LEN)
        batch = bytearray(UDP_MAX_PAYLOAD + BUF_SIZE)
        bview = memoryview(batch)
        wait = self._waiter(fd)
        readv = os.readv
        stats = self.stats
        send = self._send
        unpack, pack = _TTL_PROTO_CSUM_DST.unpack_from, _TTL_PROTO_CSUM.pack_into
        limit = UDP_MAX_PAYLOAD
        iovs: dict[int, list] = {}             # read iovecs by batch offset (they repeat)
        o = seg = count = 0
        hop = None
        last_dst, last_hop, routes = -1, None, None
        while True:
            iov = iovs.get(o)
            if iov is None:
                iov = iovs[o] = [hdr, bview[o:o + BUF_SIZE]]
            try:
                n = readv(fd, iov) - VNET_HDR_LEN
            except BlockingIOError:
                if o:
                    stats["tx_packets"] += count
                    send(bview, seg, o, hop)
                    o = count = 0
                if not wait():
                    return
                continue
            except OSError as exc:
                if self._read_failed(exc, "TUN"):
                    return
                continue
            if n < 20 or batch[o] >> 4 != 4:
                continue                        # IPv6 (e.g. the TUN's own RS/MLD): not ours
            if hdr[0] & VNET_F_NEEDS_CSUM:
                _f, _g, _hl, _gs, cstart, coff = VNET_HDR.unpack_from(hdr)
                complete_checksum(bview[o:o + n], cstart, coff)
            ttl, proto, csum, dst = unpack(batch, o)
            if dst != last_dst or routes is not self.routes:
                routes = self.routes
                last_dst, last_hop = dst, routes.lookup(dst)
            h = last_hop
            if h is None:
                self._unreachable(bview[o:o + n])
                continue
            if ttl <= 1:
                stats["tx_dropped"] += 1
                continue
            # TTL - 1 with the RFC 1624 incremental checksum (decrement_ttl, inlined)
            c = (csum ^ 0xFFFF) + 0xFEFF
            pack(batch, o + 8, ttl - 1, proto, ((c & 0xFFFF) + (c >> 16)) ^ 0xFFFF)
            if o and (h != hop or n > seg):     # cannot join the pending batch
                stats["tx_packets"] += count
                send(bview, seg, o, hop)
                batch[0:n] = bview[o:o + n]
                o = count = 0
            if not o:
                seg, hop = n, h
            o += n
            count += 1
            if n < seg or o + seg > limit or count >= UDP_MAX_SEGMENTS:
                stats["tx_packets"] += count
                send(bview, seg, o, hop)
                o = count = 0

    # RX (tso and batch modes): GRO batches in, merged super-packets out
    def _rx_vnet(self) -> None:
        sock = self.sock
        buf = bytearray(BUF_SIZE)
        view = memoryview(buf)
        wait = self._waiter(sock.fileno())
        cmsg_space = socket.CMSG_SPACE(4)
        recvmsg_into = sock.recvmsg_into
        emit = self._tun_write
        stats = self.stats
        verify = self.verify
        gro_int = struct.Struct("=i").unpack_from
        while True:
            try:
                n, anc, _flags, _addr = recvmsg_into([buf], cmsg_space)
            except BlockingIOError:
                if not wait():
                    return
                continue
            except OSError as exc:
                if self._read_failed(exc, "UDP"):
                    return
                continue
            seg = n
            if anc:
                level, ctype, data = anc[0]
                if level == SOL_UDP and ctype == UDP_GRO:
                    seg = gro_int(data)[0] or n
            count = (n + seg - 1) // seg
            dropped = merge_batch(view, n, seg, emit, verify)
            stats["rx_batches"] += 1
            stats["rx_packets"] += count - dropped
            stats["rx_dropped"] += dropped

    # simple mode (upstream's loop, one packet at a time)
    def _tx_simple(self) -> None:
        fd = self.tun_fd
        buf = bytearray(BUF_SIZE)
        view = memoryview(buf)
        wait = self._waiter(fd)
        readv = os.readv
        stats = self.stats
        while True:
            try:
                n = readv(fd, [buf])
            except BlockingIOError:
                if not wait():
                    return
                continue
            except OSError as exc:
                if self._read_failed(exc, "TUN"):
                    return
                continue
            if n < 20 or buf[0] >> 4 != 4:
                continue
            pkt = view[:n]
            hop = self.routes.lookup((buf[16] << 24) | (buf[17] << 16) | (buf[18] << 8) | buf[19])
            if hop is None:
                self._unreachable(pkt)
                continue
            if not decrement_ttl(buf):
                stats["tx_dropped"] += 1
                continue
            stats["tx_packets"] += 1
            self._sendto(pkt, hop)

    def _rx_simple(self) -> None:
        sock = self.sock
        buf = bytearray(BUF_SIZE)
        view = memoryview(buf)
        wait = self._waiter(sock.fileno())
        recv_into = sock.recv_into
        stats = self.stats
        while True:
            try:
                n = recv_into(buf)
            except BlockingIOError:
                if not wait():
                    return
                continue
            except OSError as exc:
                if self._read_failed(exc, "UDP"):
                    return
                continue
            tot = ipv4_header_ok(buf, n)
            if not tot or not decrement_ttl(buf):
                stats["rx_dropped"] += 1
                continue
            stats["rx_packets"] += 1
            self._tun_write([view[:tot]])
