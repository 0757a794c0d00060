"""kube-proxy's loop: watch Services and EndpointSlices → parse → ``syncer.sync``.

Objects are parsed when they arrive (a Service that fails to parse is logged and skipped —
the others keep working); a sync renders and applies everything the caches hold. Syncs are
rate-limited as upstream's ``BoundedFrequencyRunner`` does: a change syncs at once when the
last sync is at least ``min_sync_period`` old, otherwise as soon as it is; and a full resync
runs every ``sync_period`` whatever happens. A failed sync is retried after
``min_sync_period`` (at least 1 s), as a full one (the syncer schedules that itself).

After each sync, stale UDP flows are flushed (:mod:`podnet.conntrack`) and the
``healthCheckNodePort`` servers of ``externalTrafficPolicy: Local`` Services are updated.
"""
from __future__ import annotations

import json
import logging
import threading
import time
from http.server import ThreadingHTTPServer
from typing import Any, Callable, Mapping

from kubeproxy_py.iptables.render import categorize
from kubeproxy_py.model import (Endpoint, PortKey, ProxyOptions, ServicePort,
                                parse_endpoint_slices, service_ports)

log = logging.getLogger(__name__)

Json = dict[str, Any]
ObjKey = tuple[str, str]


def _okey(obj: Json) -> ObjKey:
    meta = obj.get("metadata") or {}
    return meta.get("namespace") or "default", meta.get("name") or ""


class Schedule:
    """When to sync next (pure, clock injected): rate limit + periodic full resync."""

    def __init__(self, min_sync_period: float, sync_period: float) -> None:
        self.min_period = min_sync_period
        self.period = sync_period
        self.last_sync: float | None = None
        self.last_full: float | None = None
        self.dirty = True           # the first sync is due at once
        self.retry_at: float | None = None

    def due(self, now: float) -> tuple[bool, bool, float]:
        """(sync now?, full?, seconds to wait otherwise)."""
        if self.last_full is None or now >= self.last_full + self.period:
            return True, True, 0.0
        if self.retry_at is not None:
            if now >= self.retry_at:
                return True, True, 0.0
            return False, False, self.retry_at - now
        if not self.dirty:
            return False, False, self.last_full + self.period - now
        earliest = (self.last_sync or float("-inf")) + self.min_period
        if now >= earliest:
            return True, False, 0.0
        return False, False, earliest - now

    def done(self, now: float, full: bool, ok: bool) -> None:
        """Record a sync. ``dirty`` is cleared by the caller when it takes its snapshot, so
        a change arriving during the sync is never lost."""
        self.last_sync = now
        if ok:
            self.retry_at = None
            if full:
                self.last_full = now
        else:
            self.retry_at = now + max(self.min_period, 1.0)
            if self.last_full is None:
                self.last_full = now   # keep the period running while the first sync fails


class HealthCheckServers:
    """One HTTP server per ``healthCheckNodePort``, answering as upstream's service health
    server: 200 with local endpoints, 503 without, JSON naming the Service."""

    def __init__(self, bind_ip: str = "0.0.0.0", *, start: Callable[..., Any] | None = None) -> None:
        self.bind_ip = bind_ip
        self.state: dict[int, tuple[str, str, int]] = {}
        self.servers: dict[int, ThreadingHTTPServer] = {}
        self._start = start or self._serve

    def body(self, port: int) -> tuple[int, str, bytes]:
        ns, name, n = self.state.get(port, ("", "", 0))
        doc = {"service": {"namespace": ns, "name": name}, "localEndpoints": n,
               "serviceProxyHealthy": True}
        return (200 if n > 0 else 503), "application/json", json.dumps(doc).encode()

    def _serve(self, port: int) -> Any:
        from kubeproxy_py.metrics import serve
        return serve((self.bind_ip, port), {"/": lambda: self.body(port)}, f"healthcheck-{port}")

    def update(self, want: Mapping[int, tuple[str, str, int]]) -> None:
        self.state = dict(want)
        for port in list(self.servers):
            if port not in want:
                server = self.servers.pop(port)
                if hasattr(server, "shutdown"):
                    server.shutdown()
                    server.server_close()
        for port in want:
            if port not in self.servers:
                try:
                    self.servers[port] = self._start(port)
                except OSError as e:
                    log.error("healthCheckNodePort %d: %s", port, e)

    def close(self) -> None:
        self.update({})


def health_check_ports(ports: list[ServicePort], endpoints: Mapping[PortKey, list[Endpoint]],
                       node_name: str) -> dict[int, tuple[str, str, int]]:
    """{healthCheckNodePort: (ns, name, local ready endpoints)}."""
    out: dict[int, tuple[str, str, int]] = {}
    for sp in ports:
        if not sp.health_check_node_port:
            continue
        _, local, _, _ = categorize(sp, endpoints.get(sp.key, ()), node_name)
        ns, name, n = out.get(sp.health_check_node_port, (sp.namespace, sp.name, 0))
        out[sp.health_check_node_port] = (ns, name, max(n, len(local)))
    return out


def stale_udp(old_ports: Mapping[PortKey, ServicePort], old_eps: Mapping[PortKey, list[Endpoint]],
              new_ports: Mapping[PortKey, ServicePort], new_eps: Mapping[PortKey, list[Endpoint]]
              ) -> tuple[list[tuple[str, str]], list[tuple[int, str]], list[str]]:
    """What conntrack must forget after a change, as upstream works it out:
    ``(orig_dst, endpoint_ip)`` and ``(node_port, endpoint_ip)`` for UDP endpoints that went
    away, and the service IPs of UDP ports that just got their first endpoint (their
    flows were REJECTed until now)."""
    nat: set[tuple[str, str]] = set()
    node_nat: set[tuple[int, str]] = set()
    fresh: set[str] = set()
    for key, sp in old_ports.items():
        if sp.protocol != "UDP":
            continue
        now_ips = {e.ip for e in new_eps.get(key, ()) if e.ready} if key in new_ports else set()
        for e in old_eps.get(key, ()):
            if e.ip not in now_ips:
                for ip in (sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips):
                    nat.add((ip, e.ip))
                if sp.node_port:
                    node_nat.add((sp.node_port, e.ip))
    for key, sp in new_ports.items():
        if sp.protocol != "UDP":
            continue
        had = any(e.ready for e in old_eps.get(key, ())) if key in old_ports else False
        if not had and any(e.ready for e in new_eps.get(key, ())):
            fresh.update((sp.cluster_ip, *sp.external_ips, *sp.load_balancer_ips))
    return sorted(nat), sorted(node_nat), sorted(fresh)


class Proxier:
    """The caches, the schedule and one sync; :meth:`run` drives it from watches."""

    def __init__(self, syncer: Any, options: ProxyOptions, *, min_sync_period: float = 1.0,
                 sync_period: float = 30.0, clock: Callable[[], float] = time.monotonic,
                 conntrack: Any = None, health: HealthCheckServers | None = None,
                 metrics: Any = None) -> None:
        self.syncer = syncer
        self.options = options
        self.clock = clock
        self.schedule = Schedule(min_sync_period, sync_period)
        self.conntrack = conntrack
        self.health = health
        self.metrics = metrics
        self.services: dict[ObjKey, list[ServicePort]] = {}
        self.slices: dict[ObjKey, Json] = {}
        self.synced_ports: dict[PortKey, ServicePort] = {}
        self.synced_eps: dict[PortKey, list[Endpoint]] = {}
        self.last_success: float | None = None     # wall clock, for /healthz
        self.seen = {"services": False, "endpointslices": False}
        self.wake = threading.Event()
        self._lock = threading.Lock()

    # -- events ---------------------------------------------------------------------------

    def _parse(self, svc: Json) -> list[ServicePort]:
        try:
            return service_ports(svc, ip_family=self.options.ip_family)
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            ns, name = _okey(svc)
            log.error("skipping Service %s/%s: %s", ns, name, e)
            return []

    def on_service(self, event: tuple) -> None:
        with self._lock:
            if event[0] == "snapshot":
                self.services = {_okey(s): self._parse(s) for s in event[1]}
                self.seen["services"] = True
            elif event[0] == "put":
                self.services[_okey(event[1])] = self._parse(event[1])
            else:
                _, (_, ns, name), _ = event
                self.services.pop((ns, name), None)
            self.schedule.dirty = True
        self.wake.set()

    def on_slice(self, event: tuple) -> None:
        with self._lock:
            if event[0] == "snapshot":
                self.slices = {_okey(s): s for s in event[1]}
                self.seen["endpointslices"] = True
            elif event[0] == "put":
                self.slices[_okey(event[1])] = event[1]
            else:
                _, (_, ns, name), _ = event
                self.slices.pop((ns, name), None)
            self.schedule.dirty = True
        self.wake.set()

    # -- sync -----------------------------------------------------------------------------

    def state(self) -> tuple[list[ServicePort], dict[PortKey, list[Endpoint]]]:
        with self._lock:
            ports = [sp for sps in self.services.values() for sp in sps]
            slices = list(self.slices.values())
        ports.sort(key=lambda sp: sp.key)
        return ports, parse_endpoint_slices(slices, ip_family=self.options.ip_family)

    def sync(self, full: bool = False) -> bool:
        """Render and apply the caches now; False when the syncer failed."""
        with self._lock:
            self.schedule.dirty = False      # events from now on make the next sync due
        ports, eps = self.state()
        t0 = time.perf_counter()
        try:
            result = self.syncer.sync(ports, eps, full=full)
        except Exception as e:
            log.error("sync failed (%s sync): %s", "full" if full else "partial", e)
            return False
        seconds = time.perf_counter() - t0
        self.last_success = time.time()
        if self.metrics is not None:
            self.metrics.observe_sync(seconds, filter_rules=getattr(result, "filter_rules", None),
                                      nat_rules=getattr(result, "nat_rules", None),
                                      total_rules=getattr(result, "rules", None))
        log.info("synced %d service ports (%s) in %.3f s", len(ports),
                 "full" if full else "partial", seconds)
        new_ports = {sp.key: sp for sp in ports}
        self._after_sync(new_ports, eps)
        self.synced_ports, self.synced_eps = new_ports, eps
        return True

    def _after_sync(self, new_ports: dict[PortKey, ServicePort],
                    eps: dict[PortKey, list[Endpoint]]) -> None:
        if self.conntrack is not None and self.synced_ports:
            nat, node_nat, fresh = stale_udp(self.synced_ports, self.synced_eps, new_ports, eps)
            for orig, ep in nat:
                self.conntrack.clear_nat(orig, ep)
            for port, ep in node_nat:
                self.conntrack.clear_port_nat(port, ep)
            for ip in fresh:
                self.conntrack.clear_service_ip(ip)
        if self.health is not None:
            self.health.update(health_check_ports(list(new_ports.values()), eps,
                                                  self.options.node_name))

    def step(self) -> float:
        """Sync if due; the seconds until the next check."""
        with self._lock:
            ready = all(self.seen.values())
        if not ready:
            return 0.1
        go, full, wait = self.schedule.due(self.clock())
        if not go:
            return wait
        ok = self.sync(full=full)
        self.schedule.done(self.clock(), full, ok)
        return 0.0

    def healthy(self, now_wall: float | None = None) -> bool:
        """Upstream's rule: healthy unless a sync is overdue (> 2 sync periods)."""
        now_wall = time.time() if now_wall is None else now_wall
        if self.last_success is None:
            return True
        return now_wall - self.last_success <= 2 * self.schedule.period + 1

    def run(self, store: Any, stop: threading.Event) -> None:
        for resource, handler in (("services", self.on_service),
                                  ("endpointslices", self.on_slice)):
            threading.Thread(target=store.watch, args=(resource, handler, stop),
                             name=f"kp-watch-{resource}", daemon=True).start()
        while not stop.is_set():
            wait = self.step()
            if wait > 0:
                self.wake.wait(min(wait, 1.0))
                self.wake.clear()
        if self.health is not None:
            self.health.close()
