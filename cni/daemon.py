"""The node-local CNI daemon: serves plugin requests with every import already loaded.

Each connection is served on its own thread. The thread first enters the caller's network
namespace (its fd arrives with the request), so "the host side" is exactly what it would be
for the executable; the request then runs through the same ``skel.run`` as standalone.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading

from cni import registry, skel, spec
from cni.spec import CNIError
from cni.shim import MAGIC, _recv_exact
from podnet import netns

log = logging.getLogger(__name__)

DEFAULT_SOCKET = "/run/podnet/cni.sock"


def _read_chunk(conn: socket.socket) -> bytes:
    (n,) = struct.unpack(">I", _recv_exact(conn, 4))
    return _recv_exact(conn, n)


def _parse_env(block: bytes) -> dict[str, str]:
    env = {}
    for item in block.split(b"\0"):
        if item:
            k, _, v = item.decode(errors="surrogateescape").partition("=")
            env[k] = v
    return env


def handle(conn: socket.socket) -> None:
    fds: list[int] = []
    try:
        msg, anc, _flags, _addr = conn.recvmsg(4096, socket.CMSG_SPACE(4 * 4))
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds += list(struct.unpack(f"{len(data) // 4}i", data[: len(data) - len(data) % 4]))
        rest = _BufferedConn(conn, msg)
        if rest.read(4) != MAGIC or not fds:
            log.warning("cni daemon: malformed request")
            return
        plugin_name = rest.chunk().decode()
        env = _parse_env(rest.chunk())
        stdin = rest.chunk()
        try:
            plugin = registry.load(plugin_name)
        except (KeyError, ImportError) as e:
            err = CNIError(spec.INVALID_CONFIG, f"podnet CNI daemon: {e}")
            code, out = 1, (json.dumps(err.to_json(spec.CURRENT_VERSION)) + "\n").encode()
        else:
            with netns.entered(fds[0]):
                code, out = skel.run(plugin, env, stdin)
        conn.sendall(struct.pack(">II", code, len(out)) + out)
    except Exception:
        log.exception("cni daemon: request failed")
    finally:
        for fd in fds:
            os.close(fd)
        conn.close()


class _BufferedConn:
    """Reads the framed request: first from the bytes that came with the fd, then the socket."""

    def __init__(self, conn: socket.socket, first: bytes) -> None:
        self.conn, self.buf = conn, bytearray(first)

    def read(self, n: int) -> bytes:
        while len(self.buf) < n:
            more = self.conn.recv(max(65536, n - len(self.buf)))
            if not more:
                raise ConnectionError("client closed the connection")
            self.buf += more
        out, self.buf = bytes(self.buf[:n]), self.buf[n:]
        return out

    def chunk(self) -> bytes:
        (n,) = struct.unpack(">I", self.read(4))
        return self.read(n)


def preload() -> None:
    """Import everything a request may need, so no request pays an import."""
    import hashlib, re, subprocess, traceback  # noqa: E401,F401 - lazily used by plugins
    from podnet import iptables  # noqa: F401
    for name in registry.available():
        registry.load(name)


def serve(socket_path: str = DEFAULT_SOCKET, *, ready: threading.Event | None = None,
          stop: threading.Event | None = None) -> None:
    preload()
    os.makedirs(os.path.dirname(socket_path) or ".", exist_ok=True)
    try:
        os.unlink(socket_path)
    except FileNotFoundError:
        pass
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(socket_path)
    os.chmod(socket_path, 0o600)
    srv.listen(128)
    srv.settimeout(0.5)
    log.info("cni daemon: serving %s", socket_path)
    if ready:
        ready.set()
    try:
        while not (stop and stop.is_set()):
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                continue
            conn.settimeout(None)
            threading.Thread(target=handle, args=(conn,), daemon=True).start()
    finally:
        srv.close()
        try:
            os.unlink(socket_path)
        except FileNotFoundError:
            pass
