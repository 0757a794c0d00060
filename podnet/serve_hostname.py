"""The built-in pod server, like the Kubernetes e2e suite's serve-hostname.

``python -m podnet.serve_hostname --name NAME [--tcp PORT]... [--udp PORT]...``

TCP: on connect, answer ``NAME\\n`` and close — unless the client speaks first with an HTTP
request line, which gets ``200 OK`` and body ``NAME`` (so ``curl`` works too).
UDP: any datagram gets ``NAME\\n`` back.
One selector loop, standard library only; binds every port before it reports readiness
(``--ready-file``) so whoever started it knows when it answers.
"""
from __future__ import annotations

import argparse
import os
import selectors
import signal
import socket
import sys
import time

HTTP_METHODS = (b"GET ", b"HEAD ", b"POST ", b"PUT ", b"DELETE ", b"OPTIONS ", b"PATCH ")
SNIFF_SECONDS = 0.05  # how long a TCP client may take to start an HTTP request


def _listen(kind: int, port: int, family: int) -> socket.socket:
    s = socket.socket(family, kind)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # one socket, both families
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        s.listen(128)
    s.setblocking(False)
    return s


def bind(kind: int, port: int) -> socket.socket:
    """Dual-stack where IPv6 exists, IPv4 otherwise."""
    try:
        return _listen(kind, port, socket.AF_INET6)
    except OSError:
        return _listen(kind, port, socket.AF_INET)


def http_response(name: str, head: bool = False) -> bytes:
    body = name.encode()
    hdr = (f"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
           "Connection: close\r\n\r\n").encode()
    return hdr if head else hdr + body


def answer_tcp(name: str, first: bytes) -> bytes:
    """What a TCP client gets, given the bytes it sent first (b"" when it sent nothing)."""
    if first.startswith(HTTP_METHODS):
        return http_response(name, head=first.startswith(b"HEAD "))
    return f"{name}\n".encode()


class Server:
    def __init__(self, name: str, tcp: list[int], udp: list[int]) -> None:
        self.name = name
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.pending: dict[socket.socket, float] = {}
        for port in tcp:
            s = bind(socket.SOCK_STREAM, port)
            self.sel.register(s, selectors.EVENT_READ, "accept")
            self.socks.append(s)
        for port in udp:
            s = bind(socket.SOCK_DGRAM, port)
            self.sel.register(s, selectors.EVENT_READ, "udp")
            self.socks.append(s)

    def _finish(self, conn: socket.socket, first: bytes) -> None:
        self.pending.pop(conn, None)
        try:
            self.sel.unregister(conn)
        except (KeyError, ValueError):
            pass
        try:
            conn.setblocking(True)
            conn.settimeout(1.0)
            conn.sendall(answer_tcp(self.name, first))
            conn.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            conn.close()

    def step(self, timeout: float | None = None) -> None:
        for key, _ in self.sel.select(timeout):
            s, what = key.fileobj, key.data
            if what == "accept":
                try:
                    conn, _ = s.accept()
                except OSError:
                    continue
                conn.setblocking(False)
                self.pending[conn] = time.monotonic() + SNIFF_SECONDS
                self.sel.register(conn, selectors.EVENT_READ, "conn")
            elif what == "conn":
                try:
                    first = s.recv(4096)
                except OSError:
                    first = b""
                self._finish(s, first)
            else:
                try:
                    _, peer = s.recvfrom(65535)
                    s.sendto(f"{self.name}\n".encode(), peer)
                except OSError:
                    pass
        now = time.monotonic()
        for conn, deadline in list(self.pending.items()):
            if now >= deadline:
                self._finish(conn, b"")

    def serve_forever(self) -> None:
        while True:
            self.step(SNIFF_SECONDS if self.pending else None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="serve_hostname", description=__doc__.splitlines()[0])
    p.add_argument("--name", default=socket.gethostname())
    p.add_argument("--tcp", type=int, action="append", default=[])
    p.add_argument("--udp", type=int, action="append", default=[])
    p.add_argument("--ready-file", help="created once every port is bound")
    args = p.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server = Server(args.name, args.tcp, args.udp)
    if args.ready_file:
        with open(args.ready_file, "w") as f:
            f.write(f"{os.getpid()}\n")
    print(f"serving {args.name} on tcp {args.tcp} udp {args.udp}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
