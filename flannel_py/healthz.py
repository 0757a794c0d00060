"""``/healthz`` and ``/readyz`` as upstream flanneld answers them (``--healthz-port`` > 0)."""
from __future__ import annotations

import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

log = logging.getLogger(__name__)

HEALTHZ_BODY = b"flanneld is running"
READY_BODY = b"flanneld is ready"
NOT_READY_BODY = b"flanneld is not ready yet"


def respond(path: str, ready: bool) -> tuple[int, bytes]:
    """Status and body for a request path (pure, so tests need no socket)."""
    path = path.split("?", 1)[0]
    if path == "/healthz":
        return 200, HEALTHZ_BODY
    if path == "/readyz":
        return (200, READY_BODY) if ready else (503, NOT_READY_BODY)
    return 404, b"404 page not found\n"


class HealthzServer:
    def __init__(self, ip: str, port: int, ready: Callable[[], bool]) -> None:
        ready_fn = ready

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                status, body = respond(self.path, ready_fn())
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt: str, *args) -> None:
                log.debug("healthz: " + fmt, *args)

        self.server = ThreadingHTTPServer((ip, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="healthz", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        return self.server.server_address[:2]

    def start(self) -> None:
        log.info("Start healthz server on %s:%d", *self.address)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
