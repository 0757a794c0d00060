"""The endpoints controller: Services with a selector + Pods → ``discovery.k8s.io/v1``
EndpointSlices, as upstream's EndpointSlice controller writes them.

:func:`desired_slices` is the pure part: for each Service with a selector, the pods it selects
(Running, with an IP) grouped by the ports they resolve to — a named ``targetPort`` is looked
up in each pod's ``containerPorts``, so pods may differ — one slice per group, named
``<service>-<hash of the ports>``. Not-ready pods are listed with ``ready: false``; a pod being
deleted is ``terminating``. Selector-less Services are left alone: their slices are the
user's. The controller only ever changes slices carrying its ``managed-by`` label.

One instance per cluster is active: :class:`LeaderElector` holds the key
``/podnet/leases/endpoints-controller`` attached to an etcd lease, refreshes it, and the
others take over when it expires (or is revoked on a clean stop).
"""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import threading
import time
from typing import Any, Callable, Iterable, Mapping

log = logging.getLogger(__name__)

Json = dict[str, Any]
LEASE_KEY = "/podnet/leases/endpoints-controller"
LEASE_TTL = 5
SERVICE_NAME_LABEL = "kubernetes.io/service-name"
MANAGED_BY_LABEL = "endpointslice.kubernetes.io/managed-by"
MANAGED_BY = "endpointslice-controller.k8s.io"
MAX_ENDPOINTS_PER_SLICE = 100


# --- pure: pods + services → slices ------------------------------------------------------


def selects(selector: Mapping[str, str], labels: Mapping[str, str] | None) -> bool:
    labels = labels or {}
    return all(labels.get(k) == v for k, v in selector.items())


def pod_ready(pod: Json) -> bool:
    """The pod's Ready condition; a Running pod without conditions counts as ready."""
    for c in (pod.get("status") or {}).get("conditions") or ():
        if c.get("type") == "Ready":
            return c.get("status") == "True"
    return True


def resolve_target_port(port: Mapping[str, Any], pod: Json) -> int | None:
    """The number ``port.targetPort`` means for ``pod``: a number as it is, a name looked up
    in the pod's containerPorts (same protocol); None when the pod has no such port."""
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int) and not isinstance(target, bool):
        return target
    if isinstance(target, str) and target.isdigit():
        return int(target)
    proto = port.get("protocol") or "TCP"
    for c in (pod.get("spec") or {}).get("containers") or ():
        for cp in c.get("ports") or ():
            if cp.get("name") == target and (cp.get("protocol") or "TCP") == proto:
                return cp.get("containerPort")
    return None


def _hash(text: str) -> str:
    digest = hashlib.sha256(text.encode()).digest()
    return base64.b32encode(digest).decode()[:5].lower()


def _endpoint(pod: Json) -> Json:
    meta = pod.get("metadata") or {}
    terminating = bool(meta.get("deletionTimestamp"))
    ready = pod_ready(pod) and not terminating
    ep: Json = {"addresses": [pod["status"]["podIP"]],
                "conditions": {"ready": ready, "serving": pod_ready(pod),
                               "terminating": terminating},
                "targetRef": {"kind": "Pod", "namespace": meta.get("namespace") or "default",
                              "name": meta.get("name"), "uid": meta.get("uid", "")}}
    node = (pod.get("spec") or {}).get("nodeName")
    if node:
        ep["nodeName"] = node
    return ep


def service_slices(svc: Json, pods: Iterable[Json]) -> list[Json]:
    """The slices a Service with a selector should have (``[]`` without a selector)."""
    meta, spec = svc.get("metadata") or {}, svc.get("spec") or {}
    selector = spec.get("selector")
    if not selector or spec.get("type") == "ExternalName":
        return []
    ns, name = meta.get("namespace") or "default", meta["name"]
    groups: dict[tuple, list[Json]] = {}
    for pod in pods:
        pmeta = pod.get("metadata") or {}
        status = pod.get("status") or {}
        if (pmeta.get("namespace") or "default") != ns or not selects(selector, pmeta.get("labels")):
            continue
        if status.get("phase") != "Running" or not status.get("podIP"):
            continue
        ports = []
        for p in spec.get("ports") or ():
            num = resolve_target_port(p, pod)
            if num is None:
                continue
            ports.append((p.get("name") or "", p.get("protocol") or "TCP", num))
        groups.setdefault(tuple(ports), []).append(pod)
    if not groups:
        groups[()] = []      # upstream keeps one empty slice for a Service with no endpoints
    owner = {"apiVersion": "v1", "kind": "Service", "name": name, "uid": meta.get("uid", ""),
             "controller": True, "blockOwnerDeletion": True}
    out = []
    for ports, members in sorted(groups.items()):
        members = sorted(members, key=lambda p: p["status"]["podIP"])
        for i in range(0, max(len(members), 1), MAX_ENDPOINTS_PER_SLICE):
            chunk = members[i:i + MAX_ENDPOINTS_PER_SLICE]
            suffix = _hash(f"{ns}/{name}|IPv4|{json.dumps(ports)}|{i}")
            out.append({
                "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                "metadata": {"name": f"{name}-{suffix}", "namespace": ns,
                             "labels": {SERVICE_NAME_LABEL: name, MANAGED_BY_LABEL: MANAGED_BY},
                             "ownerReferences": [owner]},
                "addressType": "IPv4",
                "endpoints": [_endpoint(p) for p in chunk],
                "ports": [{"name": n, "protocol": proto, "port": num} for n, proto, num in ports],
            })
    return out


def desired_slices(services: Iterable[Json], pods: Iterable[Json]) -> dict[tuple[str, str], Json]:
    """{(namespace, slice name): slice} for every Service with a selector."""
    pods = list(pods)
    out = {}
    for svc in services:
        try:
            for sl in service_slices(svc, pods):
                out[(sl["metadata"]["namespace"], sl["metadata"]["name"])] = sl
        except (KeyError, TypeError, AttributeError) as e:
            meta = svc.get("metadata") or {}
            log.error("skipping Service %s/%s: %s", meta.get("namespace"), meta.get("name"), e)
    return out


def _content(sl: Json) -> Json:
    meta = sl.get("metadata") or {}
    return {"labels": meta.get("labels") or {}, "owner": meta.get("ownerReferences"),
            "endpoints": sl.get("endpoints") or [], "ports": sl.get("ports") or [],
            "addressType": sl.get("addressType")}


def plan(desired: Mapping[tuple[str, str], Json], existing: Iterable[Json]
         ) -> tuple[list[Json], list[tuple[str, str]]]:
    """(slices to write, (ns, name) of managed slices to delete): existing slices that are
    not ours are never touched."""
    ours = {}
    for sl in existing:
        meta = sl.get("metadata") or {}
        if (meta.get("labels") or {}).get(MANAGED_BY_LABEL) == MANAGED_BY:
            ours[(meta.get("namespace") or "default", meta["name"])] = sl
    writes = [sl for key, sl in sorted(desired.items())
              if key not in ours or _content(ours[key]) != _content(sl)]
    deletes = sorted(k for k in ours if k not in desired)
    return writes, deletes


# --- election ---------------------------------------------------------------------------


class LeaderElector:
    """Leadership through one etcd key attached to a lease.

    :meth:`step` (call it every ``ttl/3`` seconds) refreshes the lease while it holds the
    key, or tries to create the key with a fresh lease when nobody does. Leadership is only
    claimed while the last successful refresh is younger than the TTL, so a partitioned
    leader stops acting before another one may start.
    """

    def __init__(self, etcd: Any, identity: str, *, key: str = LEASE_KEY, ttl: int = LEASE_TTL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.etcd, self.identity, self.key, self.ttl, self.clock = etcd, identity, key, ttl, clock
        self.lease = 0
        self.renewed_at = float("-inf")

    @property
    def is_leader(self) -> bool:
        return bool(self.lease) and self.clock() - self.renewed_at < self.ttl

    def step(self) -> bool:
        from podnet.etcd import StoreError
        now = self.clock()
        try:
            if self.lease:
                if self.etcd.lease_refresh(self.lease) > 0:
                    kv = self.etcd.get(self.key)
                    if kv is not None and kv.lease == self.lease:
                        self.renewed_at = now
                        return True
                log.warning("endpoints controller: lost the lease %x", self.lease)
                self.lease = 0
            grant = self.etcd.lease_grant(self.ttl)
            if self.etcd.create(self.key, self.identity, lease=grant.id):
                self.lease, self.renewed_at = grant.id, now
                log.info("endpoints controller: %s is the leader", self.identity)
                return True
            self.etcd.lease_revoke(grant.id)
        except StoreError as e:
            log.warning("endpoints controller election: %s", e)
            return self.is_leader
        return False

    def release(self) -> None:
        if self.lease:
            try:
                self.etcd.lease_revoke(self.lease)
            except Exception as e:  # best effort: the lease expires anyway
                log.debug("lease revoke: %s", e)
            self.lease = 0


# --- the controller loop ---------------------------------------------------------------------


class EndpointsController:
    """Watches Pods, Services and EndpointSlices; while leader, reconciles the managed slices
    on every change and every ``resync`` seconds."""

    def __init__(self, store: Any, elector: LeaderElector, *, resync: float = 30.0) -> None:
        self.store, self.elector, self.resync = store, elector, resync
        self.dirty = threading.Event()

    def reconcile(self) -> tuple[int, int]:
        """One pass from fresh lists; (written, deleted)."""
        services, _ = self.store.list("services")
        pods, _ = self.store.list("pods")
        slices, _ = self.store.list("endpointslices")
        writes, deletes = plan(desired_slices(services, pods), slices)
        if writes:
            self.store.apply(writes)
        for ns, name in deletes:
            self.store.delete("endpointslices", ns, name)
        if writes or deletes:
            log.info("endpoints controller: %d slices written, %d deleted", len(writes), len(deletes))
        return len(writes), len(deletes)

    def _on_event(self, _event: tuple) -> None:
        self.dirty.set()

    def run(self, stop: threading.Event) -> None:
        for resource in ("pods", "services", "endpointslices"):
            threading.Thread(target=self.store.watch, args=(resource, self._on_event, stop),
                             name=f"epc-watch-{resource}", daemon=True).start()
        period = self.elector.ttl / 3
        next_step = next_full = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now >= next_step:
                    was = self.elector.is_leader
                    if self.elector.step() and not was:
                        self.dirty.set()
                    next_step = now + period
                if self.elector.is_leader and (self.dirty.is_set() or now >= next_full):
                    self.dirty.clear()
                    try:
                        self.reconcile()
                        next_full = now + self.resync
                    except Exception as e:  # store hiccup: retry on the next tick
                        log.warning("endpoints controller: reconcile failed: %s", e)
                        self.dirty.set()
                        stop.wait(0.5)
                if not self.elector.is_leader:
                    self.dirty.clear()          # a new leader starts with a full pass
                    stop.wait(max(0.0, next_step - time.monotonic()))
                else:
                    self.dirty.wait(max(0.0, min(next_step, next_full) - time.monotonic()))
        finally:
            self.elector.release()
