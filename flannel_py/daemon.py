"""flanneld's run loop, in upstream's order:

config from etcd (retried) → external interface → backend → lease → backend start →
iptables rules → subnet.env (now ready) → watch the other leases and reconcile on every
change, renew our lease, resync rules and routes periodically.

The watch thread only records lease changes; a reconciler thread converges the backend to
the latest set.  Changes that arrive while a reconcile runs are folded into the next one,
so a burst of N lease events costs a few full reconciles instead of N (each is O(leases)).

Nothing here blocks on etcd: once the node is up, an unreachable etcd only delays renewal
(retried every minute) and lease updates (the watch reconnects with capped backoff);
routes, FDB and rules stay as they are.  SIGTERM stops the threads and leaves the kernel
state in place, so a restart does not interrupt pod traffic.
"""
from __future__ import annotations

import logging
import threading
from ipaddress import IPv4Network
from typing import Any, Callable

from flannel_py.backend import Backend, ExternalInterface
from flannel_py.cli import Options
from flannel_py.config import Config, ConfigError
from flannel_py.subnet.registry import Lease, LeaseAttrs, SubnetRegistry
from flannel_py.subnet.manager import LeaseAdded, LeaseEvent, NoFreeSubnet, SubnetManager
from flannel_py.subnet.subnet_env import previous_subnet, write_subnet_env
from podnet.etcd import Backoff, StoreError, Unavailable

log = logging.getLogger(__name__)

CONFIG_RETRY = 1.0
RESYNC_INTERVAL = 30.0          # full backend check against a fresh view of the leases
RECONCILE_POLL = 0.5            # how often an idle reconciler looks at the stop event


def _subnet_order(lease: Lease) -> tuple[int, int]:
    # ints compare in C; IPv4Network.__lt__ is Python code (500 leases, ~4,500 calls per sort)
    return int(lease.subnet.network_address), lease.subnet.prefixlen


class Daemon:
    def __init__(self, opts: Options, *, stop_event: threading.Event | None = None,
                 store: Any = None, rtnl: Any = None, restorer: Any = None,
                 route_check_interval: float = 10.0) -> None:
        self.opts = opts
        self.stop_event = stop_event or threading.Event()
        self._store = store
        self._rtnl = rtnl
        self._restorer = restorer
        self.route_check_interval = route_check_interval
        self.ready = False
        self.exit_code = 0
        self.lease: Lease | None = None
        self.config: Config | None = None
        self.backend: Backend | None = None
        self.remote: dict[IPv4Network, Lease] = {}
        self._remote_lock = threading.Lock()
        self._apply_lock = threading.Lock()        # one reconcile/resync at a time
        self._dirty = threading.Event()            # leases changed since the last reconcile
        self.reconciles = 0
        self._threads: list[threading.Thread] = []

    # -- helpers -----------------------------------------------------------------------

    def _wait(self, seconds: float) -> bool:
        return self.stop_event.wait(seconds)

    def _fatal(self, message: str, *args: Any) -> None:
        log.error(message, *args)
        self.exit_code = 1
        self.stop_event.set()

    def _spawn(self, name: str, fn: Callable[[], Any]) -> None:
        def run() -> None:
            try:
                fn()
            except Exception:  # noqa: BLE001
                log.exception("%s thread failed", name)
                self._fatal("%s thread failed; shutting down", name)
        t = threading.Thread(target=run, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def store(self) -> Any:
        if self._store is None:
            from podnet.etcd import Store
            o = self.opts
            self._store = Store(o.etcd_endpoints, ca=o.etcd_cafile or None,
                                cert=o.etcd_certfile or None, key=o.etcd_keyfile or None)
        return self._store

    def rtnl(self) -> Any:
        if self._rtnl is None:
            from podnet.rtnl import RTNL
            self._rtnl = RTNL()
        return self._rtnl

    # -- start-up steps ----------------------------------------------------------------

    def get_config(self, manager: SubnetManager) -> Config | None:
        """Retry every second until the config is there and valid (upstream getConfig)."""
        while not self.stop_event.is_set():
            try:
                config = manager.network_config()
                log.info("Found network config - Backend type: %s", config.backend_type)
                return config
            except (StoreError, ConfigError) as exc:
                log.error("Couldn't fetch network config: %s", exc)
            self._wait(CONFIG_RETRY)
        return None

    def acquire(self, manager: SubnetManager, attrs: LeaseAttrs) -> Lease | None:
        backoff = Backoff(1.0, 10.0)
        while not self.stop_event.is_set():
            try:
                return manager.acquire(attrs)
            except NoFreeSubnet as exc:
                log.error("failed to acquire lease: %s (retrying)", exc)
            except Unavailable as exc:
                log.error("failed to acquire lease: etcd unavailable: %s (retrying)", exc)
            except StoreError as exc:
                log.error("failed to acquire lease: %s (retrying)", exc)
            self._wait(backoff.next())
        return None

    def ext_iface(self) -> ExternalInterface:
        from flannel_py.iface import lookup_ext_iface
        return lookup_ext_iface(self.rtnl(), self.opts.iface, self.opts.public_ip or None)

    # -- steady state ------------------------------------------------------------------

    def on_lease_events(self, events: list[LeaseEvent]) -> None:
        """Record a batch of lease changes and wake the reconciler.

        Called on the watch thread, so it never touches the kernel: changes that arrive
        while a reconcile is running are folded into the next one (500 leases written one
        by one cost a few reconciles, not 500 of them)."""
        with self._remote_lock:
            for ev in events:
                if isinstance(ev, LeaseAdded):
                    log.info("Subnet added: %s via %s", ev.lease.subnet, ev.lease.attrs.public_ip)
                    self.remote[ev.lease.subnet] = ev.lease
                else:
                    log.info("Subnet removed: %s", ev.lease.subnet)
                    self.remote.pop(ev.lease.subnet, None)
            self._dirty.set()

    def remote_leases(self) -> list[Lease]:
        """The other nodes' leases, ordered by subnet."""
        with self._remote_lock:
            return sorted(self.remote.values(), key=_subnet_order)

    def reconcile_pending(self) -> bool:
        """Converge the backend to the latest leases if they changed since the last
        reconcile; returns whether it reconciled."""
        with self._apply_lock:
            with self._remote_lock:
                if not self._dirty.is_set():
                    return False
                self._dirty.clear()
                leases = sorted(self.remote.values(), key=_subnet_order)
            assert self.backend is not None
            self.backend.reconcile(leases)
            self.reconciles += 1
            return True

    def run_reconciler(self) -> None:
        while not self.stop_event.is_set():
            if self._dirty.wait(RECONCILE_POLL) and not self.stop_event.is_set():
                self.reconcile_pending()

    def resync_backend(self) -> None:
        while not self._wait(RESYNC_INTERVAL):
            with self._apply_lock:
                leases = self.remote_leases()
                resync = getattr(self.backend, "resync", None)
                try:
                    if resync is not None:
                        resync(leases)
                    elif self.backend is not None:
                        self.backend.reconcile(leases)
                except Exception as exc:  # noqa: BLE001
                    log.error("backend resync failed: %s", exc)

    def on_renewed(self, lease: Lease) -> None:
        self.lease = lease

    def on_own_removed(self) -> None:
        self._fatal("Lease has been revoked. Shutting down daemon.")

    def on_lost(self, exc: Exception) -> None:
        self._fatal("Lease for our subnet was lost (%s). Shutting down daemon.", exc)

    # -- main --------------------------------------------------------------------------

    def run(self) -> int:
        healthz = None
        try:
            if self.opts.healthz_port > 0:
                from flannel_py.healthz import HealthzServer
                healthz = HealthzServer(self.opts.healthz_ip, self.opts.healthz_port,
                                        lambda: self.ready)
                healthz.start()
            return self._run()
        finally:
            self.stop_event.set()
            self._dirty.set()                      # wake the reconciler so it sees the stop
            for t in self._threads:
                t.join(5)
            if self.backend is not None:
                try:
                    self.backend.stop()
                except Exception:  # noqa: BLE001
                    log.exception("stopping the backend failed")
            if healthz is not None:
                healthz.stop()
            log.info("Exiting cleanly...")

    def _run(self) -> int:
        from flannel_py.backend.registry import UnknownBackend, create_backend
        o = self.opts
        registry = SubnetRegistry(self.store(), o.etcd_prefix)
        manager = SubnetManager(registry, previous_subnet=previous_subnet(o.subnet_file),
                                renew_margin_minutes=o.subnet_lease_renew_margin)
        config = self.get_config(manager)
        if config is None:
            return self.exit_code
        self.config = config
        try:
            ext = self.ext_iface()
        except Exception as exc:  # noqa: BLE001
            log.error("Failed to find any valid interface to use: %s", exc)
            return 1
        try:
            self.backend = create_backend(ext, config, rtnl=self.rtnl(),
                                          check_interval=self.route_check_interval)
            # Upstream's udp backend publishes no BackendType: its leases stay byte-compatible.
            lease_type = getattr(self.backend, "lease_backend_type", self.backend.type)
            attrs = LeaseAttrs(public_ip=ext.public_ip, backend_type=lease_type,
                               backend_data=self.backend.backend_data())
        except UnknownBackend as exc:
            log.error("Error fetching backend: %s", exc)
            return 1
        except Exception as exc:  # noqa: BLE001
            log.error("Error registering network: %s", exc)
            return 1
        lease = self.acquire(manager, attrs)
        if lease is None:
            return self.exit_code
        self.lease = lease
        try:
            self.backend.start(lease, config)
        except Exception as exc:  # noqa: BLE001
            log.exception("Error registering network: %s", exc)
            return 1
        self.setup_rules(config, lease)
        write_subnet_env(o.subnet_file, config.network, lease.subnet, self.backend.mtu(), o.ip_masq)
        log.info("Wrote subnet file to %s", o.subnet_file)
        self.ready = True
        # No reconcile before the first lease snapshot: a restarted flanneld must not drop
        # the routes of peers it has not heard about yet.

        self._spawn("reconcile-backend", self.run_reconciler)
        self._spawn("watch-leases", lambda: manager.watch_leases(
            lease.subnet, self.on_lease_events, self.stop_event,
            on_own_removed=self.on_own_removed))
        self._spawn("renew-lease", lambda: manager.run_renewal(
            lease, self.stop_event, on_renewed=self.on_renewed, on_lost=self.on_lost))
        self._spawn("resync-backend", self.resync_backend)
        log.info("Running backend.")
        while not self.stop_event.wait(1.0):
            pass
        return self.exit_code

    def setup_rules(self, config: Config, lease: Lease) -> None:
        from flannel_py.rules import RulesManager
        rules = RulesManager(config.network, lease.subnet, ip_masq=self.opts.ip_masq,
                             random_fully=not self.opts.ip_masq_fully_random_disable,
                             restorer=self._restorer)
        if self.opts.ip_masq:
            log.info("Setting up masking rules")
        log.info("Changing default FORWARD chain policy to ACCEPT")
        try:
            rules.apply()
        except Exception as exc:  # noqa: BLE001 - retried by the resync loop
            log.error("Failed to set up iptables rules: %s", exc)
        self._spawn("iptables-resync", lambda: rules.run(self.stop_event, self.opts.iptables_resync))
