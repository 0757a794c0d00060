"""What a CNI executable runs first: hand the request to the node's CNI daemon, or do it here.

Import-light on purpose (only builtins): the executable starts with ``python -I -S`` and this
module, so a request served by the daemon costs one interpreter start and one round trip.
When no daemon answers on the socket, the executable does the work itself (standalone path).

Wire format (unix stream socket), client → daemon, with the caller's netns fd attached
(SCM_RIGHTS) to the first message:
    b"PNC1" | u32 len + plugin name | u32 len + env block (b"K=V\\0"...) | u32 len + stdin
daemon → client:
    u32 exit code | u32 len + stdout bytes
"""
from __future__ import annotations

import os
import sys

MAGIC = b"PNC1"


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


def encode_request(plugin: str, env: dict, stdin: bytes) -> bytes:
    envb = b"".join(f"{k}={v}".encode() + b"\0" for k, v in env.items())
    name = plugin.encode()
    return b"".join((MAGIC, _u32(len(name)), name, _u32(len(envb)), envb, _u32(len(stdin)), stdin))


def _recv_exact(sock, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("daemon closed the connection")
        buf += chunk
    return bytes(buf)


def connect(socket_path: str):
    """A connected socket to the daemon, or None when none listens there."""
    import _socket
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.connect(socket_path)
    except OSError:
        sock.close()
        return None
    return sock


def call_daemon(sock, plugin: str, env: dict, stdin: bytes) -> tuple[int, bytes]:
    """Send one request on a connected socket; the daemon's (exit code, stdout)."""
    import _socket
    try:
        fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
        try:
            payload = encode_request(plugin, env, stdin)
            fds = fd.to_bytes(4, sys.byteorder)
            sent = sock.sendmsg([payload], [(_socket.SOL_SOCKET, _socket.SCM_RIGHTS, fds)])
            if sent < len(payload):
                sock.sendall(payload[sent:])
        finally:
            os.close(fd)
        head = _recv_exact(sock, 8)
        code = int.from_bytes(head[:4], "big")
        out = _recv_exact(sock, int.from_bytes(head[4:], "big"))
        return code, out
    except (OSError, ConnectionError) as e:
        # The request may have been half done: say so in the spec's format ("try again").
        msg = f"podnet CNI daemon failed mid-request: {e}".replace('"', "'")
        return 1, ('{"cniVersion":"1.1.0","code":11,"msg":"' + msg + '"}\n').encode()
    finally:
        sock.close()


def standalone(plugin: str) -> int:
    """Do the work in this process. The plugins need nothing beyond the standard library
    and this project, whose root the executable put on sys.path, so site is never loaded."""
    from cni.registry import load
    from cni.skel import main
    return main(load(plugin))


def run(plugin: str, socket_path: str) -> int:
    sock = None
    if socket_path and os.environ.get("PODNET_CNI_STANDALONE") != "1":
        sock = connect(socket_path)
    if sock is None:
        return standalone(plugin)
    code, out = call_daemon(sock, plugin, dict(os.environ), sys.stdin.buffer.read())
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return code
