"""kube-proxy's sync metrics (upstream's names) and the ``/metrics`` + ``/healthz`` servers.

The registry is per :class:`Metrics` instance (not the process-global default), so tests and
several proxiers in one process do not collide. ``prometheus_client`` is imported lazily.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

log = logging.getLogger(__name__)

# upstream's buckets: exponential from 1 ms, ×2, 15 buckets
DURATION_BUCKETS = tuple(0.001 * 2 ** i for i in range(15))


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Gauge, Histogram
        self.registry = CollectorRegistry()
        self.sync_duration = Histogram(
            "kubeproxy_sync_proxy_rules_duration_seconds", "SyncProxyRules latency in seconds",
            buckets=DURATION_BUCKETS, registry=self.registry)
        self.last_timestamp = Gauge(
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
            "The last time proxy rules were successfully synced", registry=self.registry)
        self.iptables_total = Gauge(
            "kubeproxy_sync_proxy_rules_iptables_total",
            "Total number of iptables rules owned by kube-proxy", ["table"],
            registry=self.registry)

    def observe_sync(self, seconds: float, *, filter_rules: int | None = None,
                     nat_rules: int | None = None, total_rules: int | None = None,
                     now: float | None = None) -> None:
        """One successful sync. Per-table counts when the syncer gives them, else the total
        under ``table="all"``."""
        self.sync_duration.observe(seconds)
        self.last_timestamp.set(time.time() if now is None else now)
        if filter_rules is not None:
            self.iptables_total.labels(table="filter").set(filter_rules)
        if nat_rules is not None:
            self.iptables_total.labels(table="nat").set(nat_rules)
        if filter_rules is None and nat_rules is None and total_rules is not None:
            self.iptables_total.labels(table="all").set(total_rules)

    def text(self) -> bytes:
        from prometheus_client import generate_latest
        return generate_latest(self.registry)


def split_hostport(addr: str, default_port: int) -> tuple[str, int]:
    """``"ip:port"``, ``"ip"`` or ``":port"`` → (host, port); ``"[v6]:port"`` too."""
    if addr.startswith("["):
        host, _, rest = addr[1:].partition("]")
        return host, int(rest[1:]) if rest.startswith(":") else default_port
    if addr.count(":") == 1:
        host, port = addr.split(":")
        return host or "0.0.0.0", int(port)
    return (addr or "0.0.0.0"), default_port


def _handler(routes: dict[str, Callable[[], tuple[int, str, bytes]]]) -> type:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            route = routes.get(self.path.split("?")[0])
            code, ctype, body = route() if route else (404, "text/plain", b"404 page not found\n")
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args: Any) -> None:
            log.debug("http: " + fmt, *args)
    return Handler


def serve(addr: tuple[str, int], routes: dict[str, Callable[[], tuple[int, str, bytes]]],
          name: str) -> ThreadingHTTPServer:
    """An HTTP server on ``addr`` in a daemon thread; ``shutdown()`` it to stop."""
    ThreadingHTTPServer.allow_reuse_address = True
    server = ThreadingHTTPServer(addr, _handler(routes))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name=name, daemon=True).start()
    return server


def healthz_body(last_updated: float | None, now: float, healthy: bool) -> tuple[int, str, bytes]:
    """Upstream's ``/healthz`` answer: 200 while syncs keep up, 503 otherwise."""
    def ts(t: float | None) -> str:
        if t is None:
            return ""
        frac = ("%.9f" % (t % 1))[1:].rstrip("0").rstrip(".")
        return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + frac + "Z"
    body = {"lastUpdated": ts(last_updated), "currentTime": ts(now)}
    return (200 if healthy else 503), "application/json", json.dumps(body).encode()
