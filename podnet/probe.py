"""Probes: can a pod reach an address? TCP connect + read the answer, or UDP send + read.

The socket is always created inside the source pod's network namespace: the calling thread
enters the namespace just long enough to create it (a socket stays in the namespace it was
made in), so probes from many pods run in parallel threads of one process and the root
namespace is never used.
"""
from __future__ import annotations

import socket
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

from podnet import netns

PAYLOAD = b"podnet-probe\n"


@dataclass
class ProbeResult:
    ok: bool
    answer: str = ""
    error: str = ""        # "timeout", "refused", "unreachable", or the OS error text
    ms: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _error_name(e: BaseException) -> str:
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timeout"
    if isinstance(e, ConnectionRefusedError):
        return "refused"
    if isinstance(e, OSError) and e.errno in (101, 113):  # ENETUNREACH, EHOSTUNREACH
        return "unreachable"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e) or type(e).__name__


def _family(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def make_socket(ns: str | None, family: int, kind: int) -> socket.socket:
    """A socket created inside ``ns`` (a netns name or path); ``None`` means the caller's
    current namespace (used by unit tests that run their own servers)."""
    if ns is None:
        return socket.socket(family, kind)
    with netns.entered(ns):
        return socket.socket(family, kind)


def _first_line(data: bytes) -> str:
    text = data.decode(errors="replace")
    if text.startswith("HTTP/"):
        text = text.split("\r\n\r\n", 1)[-1]
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def probe_tcp(ns: str | None, ip: str, port: int, timeout: float = 2.0,
              clock: Callable[[], float] = time.monotonic) -> ProbeResult:
    start = clock()
    try:
        sock = make_socket(ns, _family(ip), socket.SOCK_STREAM)
    except OSError as e:
        return ProbeResult(False, error=_error_name(e))
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
        except OSError as e:
            return ProbeResult(False, error=_error_name(e), ms=(clock() - start) * 1000)
        ms = (clock() - start) * 1000
        data = b""
        try:
            while len(data) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                data += chunk
                if b"\n" in data and not data.startswith(b"HTTP/"):
                    break
        except OSError:
            pass  # connected is what counts; the answer is a bonus
        return ProbeResult(True, answer=_first_line(data), ms=ms)


def probe_udp(ns: str | None, ip: str, port: int, timeout: float = 2.0,
              clock: Callable[[], float] = time.monotonic) -> ProbeResult:
    """UDP has no handshake: reachable means an answer came back within ``timeout``."""
    start = clock()
    try:
        sock = make_socket(ns, _family(ip), socket.SOCK_DGRAM)
    except OSError as e:
        return ProbeResult(False, error=_error_name(e))
    with sock:
        sock.settimeout(timeout)
        try:
            sock.connect((ip, port))
            sock.send(PAYLOAD)
            data = sock.recv(65535)
        except OSError as e:
            return ProbeResult(False, error=_error_name(e), ms=(clock() - start) * 1000)
        return ProbeResult(True, answer=_first_line(data), ms=(clock() - start) * 1000)


def probe(ns: str | None, ip: str, port: int, protocol: str = "TCP",
          timeout: float = 2.0) -> ProbeResult:
    if protocol.upper() == "UDP":
        return probe_udp(ns, ip, port, timeout)
    if protocol.upper() == "TCP":
        return probe_tcp(ns, ip, port, timeout)
    raise ValueError(f"unsupported protocol {protocol!r} (TCP or UDP)")


def describe(src: str, dst: str, port: int, protocol: str, r: ProbeResult) -> str:
    """``FROM -> TO:P/TCP ok (answer: NAME, 1.2 ms)`` or ``... FAILED (timeout)``."""
    head = f"{src} -> {dst}:{port}/{protocol.upper()}"
    if r.ok:
        what = f"answer: {r.answer}" if r.answer else "no answer"
        return f"{head} ok ({what}, {r.ms:.1f} ms)"
    return f"{head} FAILED ({r.error})"


def matrix_table(names: list[str], results: dict[tuple[str, str], ProbeResult]) -> str:
    """Rows = from, columns = to, ✓ reachable / ✗ not / - not probed."""
    width = max([len(n) for n in names] + [4])
    cols = [str(i + 1) for i in range(len(names))]
    lines = [" " * (width + 4) + " ".join(c.rjust(2) for c in cols)]
    for i, src in enumerate(names):
        cells = []
        for dst in names:
            r = results.get((src, dst))
            cells.append(" -" if r is None else (" ✓" if r.ok else " ✗"))
        lines.append(f"{cols[i].rjust(2)} {src.ljust(width)} " + " ".join(cells))
    return "\n".join(lines)
