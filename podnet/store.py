"""Kubernetes objects in etcd: ``/podnet/registry/<resource>/<namespace>/<name>``.

The value of a key is the object's JSON; cluster-scoped objects (Namespaces, Nodes) use
``_`` as namespace.  As the API server does, ``metadata.resourceVersion`` is not stored in
the value: it is the key's etcd mod revision, filled in on every read, and every
conditional write compares on it.  ``metadata.uid`` and ``creationTimestamp`` are set once,
on creation, and carried over by later writes.

:meth:`ObjectStore.apply` writes a whole manifest set in one etcd transaction (compare
every key's revision as read, put every changed object): either all of it lands or none.
etcd limits a transaction to ``--max-txn-ops`` operations (128 by default); a larger set
fails as a whole with :class:`TooLarge`.

:meth:`ObjectStore.watch` is :func:`podnet.etcd.list_and_watch` with objects instead of
keys: a snapshot first and after every resync (a broken or compacted watch), then puts
and deletes.
"""
from __future__ import annotations

import base64
import copy
import datetime
import ipaddress
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from podnet.etcd import StoreError, list_and_watch

log = logging.getLogger(__name__)

PREFIX = "/podnet/registry/"
CLUSTER_NS = "_"                      # namespace segment of cluster-scoped keys
DEFAULT_NAMESPACE = "default"
DEFAULT_SERVICE_CIDR = "10.96.0.0/12"  # kubeadm's default --service-cluster-ip-range
APPLY_ATTEMPTS = 5


@dataclass(frozen=True)
class KindInfo:
    kind: str
    resource: str                     # plural, lower case: the key segment
    api_version: str
    namespaced: bool
    singular: str
    short_names: tuple[str, ...] = ()


KINDS: dict[str, KindInfo] = {k.kind: k for k in (
    KindInfo("Namespace", "namespaces", "v1", False, "namespace", ("ns",)),
    KindInfo("Node", "nodes", "v1", False, "node", ("no",)),
    KindInfo("Pod", "pods", "v1", True, "pod", ("po",)),
    KindInfo("Service", "services", "v1", True, "service", ("svc",)),
    KindInfo("EndpointSlice", "endpointslices", "discovery.k8s.io/v1", True, "endpointslice"),
    KindInfo("NetworkPolicy", "networkpolicies", "networking.k8s.io/v1", True, "networkpolicy",
             ("netpol",)),
)}
RESOURCES: dict[str, KindInfo] = {k.resource: k for k in KINDS.values()}

Key = tuple[str, str, str]            # (resource, namespace or "" when cluster-scoped, name)


class ObjectStoreError(Exception):
    """Base of the object store's own errors (etcd failures stay podnet.etcd.StoreError)."""


class Conflict(ObjectStoreError):
    """The object exists already (create) or changed since it was read (update)."""


class NotFoundError(ObjectStoreError):
    """The object does not exist."""


class Invalid(ObjectStoreError):
    """The change is not allowed (an immutable field)."""


class TooLarge(ObjectStoreError):
    """The set is larger than one etcd transaction may be."""


def resource_for_kind(kind: str) -> str:
    """``"Pod"`` → ``"pods"``; KeyError for a kind the store does not keep."""
    return KINDS[kind].resource


def info_for_resource(resource: str) -> KindInfo:
    return RESOURCES[resource]


def object_key(obj: dict[str, Any]) -> Key:
    """(resource, namespace, name) of an object; namespace "" for cluster-scoped kinds."""
    info = KINDS[obj["kind"]]
    meta = obj.get("metadata") or {}
    ns = (meta.get("namespace") or DEFAULT_NAMESPACE) if info.namespaced else ""
    return info.resource, ns, meta["name"]


def etcd_key(resource: str, namespace: str | None, name: str) -> str:
    info = RESOURCES[resource]
    ns = (namespace or DEFAULT_NAMESPACE) if info.namespaced else CLUSTER_NS
    return f"{PREFIX}{resource}/{ns}/{name}"


def parse_etcd_key(key: str) -> Key | None:
    if not key.startswith(PREFIX):
        return None
    parts = key[len(PREFIX):].split("/")
    if len(parts) != 3 or parts[0] not in RESOURCES:
        return None
    resource, ns, name = parts
    return resource, ("" if ns == CLUSTER_NS else ns), name


def _b64(s: str | bytes) -> str:
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode("ascii")


def _encode(obj: dict[str, Any]) -> str:
    """The stored form: without resourceVersion (that is the key's mod revision)."""
    meta = obj.get("metadata") or {}
    if "resourceVersion" in meta:
        obj = dict(obj, metadata={k: v for k, v in meta.items() if k != "resourceVersion"})
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _decode(value: bytes, revision: int) -> dict[str, Any]:
    obj = json.loads(value)
    obj.setdefault("metadata", {})["resourceVersion"] = str(revision)
    return obj


def _comparable(obj: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "resourceVersion"}
    return dict(obj, metadata=meta)


def rfc3339(ts: float) -> str:
    return datetime.datetime.fromtimestamp(int(ts), datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Applied:
    """One object of an apply: what is stored now and what happened to it."""
    obj: dict[str, Any]
    action: str                      # "created" | "configured" | "unchanged"


class ObjectStore:
    """Typed access to the registry keys through a :class:`podnet.etcd.Store` (or a fake)."""

    def __init__(self, etcd: Any, *, clock: Callable[[], float] = time.time,
                 uid: Callable[[], str] = lambda: str(uuid.uuid4()),
                 service_cidr: str = DEFAULT_SERVICE_CIDR) -> None:
        self.etcd = etcd
        self.clock = clock
        self.uid = uid
        self.service_cidr = ipaddress.ip_network(service_cidr)

    # -- reads -------------------------------------------------------------------------

    def get(self, resource: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        kv = self.etcd.get(etcd_key(resource, namespace, name))
        return _decode(kv.value, kv.mod_revision) if kv else None

    def list(self, resource: str, namespace: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """Objects of ``resource`` (in ``namespace``, or all), sorted by (namespace, name),
        and the revision the list is consistent with."""
        listing = self.etcd.get_prefix(self._prefix(resource, namespace))
        objs = []
        for kv in listing.items:
            key = parse_etcd_key(kv.key)
            if key is None:
                continue
            try:
                objs.append((key, _decode(kv.value, kv.mod_revision)))
            except ValueError:
                log.warning("ignoring %s: not JSON", kv.key)
        objs.sort(key=lambda ko: (ko[0][1], ko[0][2]))
        return [o for _, o in objs], listing.revision

    def _prefix(self, resource: str, namespace: str | None) -> str:
        info = RESOURCES[resource]
        if namespace and info.namespaced:
            return f"{PREFIX}{resource}/{namespace}/"
        return f"{PREFIX}{resource}/"

    # -- single-object writes ----------------------------------------------------------

    def _new_metadata(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        info = KINDS[obj["kind"]]
        obj.setdefault("apiVersion", info.api_version)
        meta = obj.setdefault("metadata", {})
        meta.pop("resourceVersion", None)
        if info.namespaced:
            meta["namespace"] = meta.get("namespace") or DEFAULT_NAMESPACE
        else:
            meta.pop("namespace", None)
        meta.setdefault("uid", self.uid())
        meta.setdefault("creationTimestamp", rfc3339(self.clock()))
        return obj

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object; :class:`Conflict` if one with its key exists."""
        obj = self._new_metadata(obj)
        key = etcd_key(*object_key(obj))
        if obj["kind"] == "Service":
            self._allocate_cluster_ips([obj])
        if not self.etcd.create(key, _encode(obj)):
            raise Conflict(f'{object_key(obj)[0]} "{obj["metadata"]["name"]}" already exists')
        return self._reread(key, obj)

    def update(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Replace an object if it still has ``metadata.resourceVersion``."""
        meta = obj.get("metadata") or {}
        rv = meta.get("resourceVersion")
        if not rv:
            raise ValueError("update needs metadata.resourceVersion (read the object first)")
        resource, ns, name = object_key(obj)
        key = etcd_key(resource, ns, name)
        new = copy.deepcopy(obj)
        if not self.etcd.replace(key, _encode(new), old_mod_revision=int(rv)):
            if self.etcd.get(key) is None:
                raise NotFoundError(f'{resource} "{name}" not found')
            raise Conflict(f'{resource} "{name}": the object has been modified; '
                           "read it again and retry")
        return self._reread(key, new)

    def patch_status(self, resource: str, namespace: str | None, name: str,
                     status: dict[str, Any], attempts: int = 20) -> dict[str, Any]:
        """Merge ``status`` into the object's ``.status`` (top-level keys replaced),
        retrying when someone else wrote in between."""
        key = etcd_key(resource, namespace, name)
        for _ in range(attempts):
            kv = self.etcd.get(key)
            if kv is None:
                raise NotFoundError(f'{resource} "{name}" not found')
            obj = _decode(kv.value, kv.mod_revision)
            merged = dict(obj.get("status") or {})
            merged.update(status)
            if obj.get("status") == merged:
                return obj
            obj["status"] = merged
            if self.etcd.replace(key, _encode(obj), old_mod_revision=kv.mod_revision):
                return self._reread(key, obj)
        raise Conflict(f'{resource} "{name}": status kept changing under {attempts} attempts')

    def delete(self, resource: str, namespace: str | None, name: str) -> bool:
        """Delete an object; False when it did not exist."""
        return self.etcd.delete(etcd_key(resource, namespace, name))

    def _reread(self, key: str, fallback: dict[str, Any]) -> dict[str, Any]:
        kv = self.etcd.get(key)
        return _decode(kv.value, kv.mod_revision) if kv else fallback

    # -- apply: many objects, one transaction -------------------------------------------

    def apply(self, objs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Create or replace every object in one etcd transaction (all or nothing)."""
        return [a.obj for a in self.apply_report(objs)]

    def apply_report(self, objs: list[dict[str, Any]]) -> list[Applied]:
        """:meth:`apply`, saying per object whether it was created, configured or unchanged.

        Server-owned fields of an existing object (uid, creationTimestamp, status when the
        manifest has none, an allocated clusterIP) are kept.  Unchanged objects are not
        rewritten, so re-applying a file causes no watch events.
        """
        keys = [etcd_key(*object_key(o)) for o in objs]
        if len(set(keys)) != len(keys):
            raise ValueError("apply: the same object appears twice")
        for _ in range(APPLY_ATTEMPTS):
            current = self._read_many(keys)
            planned = [self._merge(o, current[k]) for o, k in zip(objs, keys)]
            compare = self._allocate_cluster_ips(
                [new for new, action in planned if new["kind"] == "Service"])
            success = []
            for key, (new, action) in zip(keys, planned):
                kv = current[key]
                if kv is None:
                    compare.append({"key": _b64(key), "target": "VERSION", "result": "EQUAL",
                                    "version": "0"})
                else:
                    compare.append({"key": _b64(key), "target": "MOD", "result": "EQUAL",
                                    "mod_revision": str(kv.mod_revision)})
                if action != "unchanged":
                    success.append({"request_put": {"key": _b64(key), "value": _b64(_encode(new))}})
            if not success:
                return [Applied(_decode(current[k].value, current[k].mod_revision), a)
                        for k, (_, a) in zip(keys, planned)]
            try:
                ok = self.etcd.txn(compare, success)
            except StoreError as exc:
                if "too many operations" in str(exc):
                    raise TooLarge(f"{len(objs)} objects are more than one etcd transaction "
                                   f"may hold (etcd --max-txn-ops): {exc}") from None
                raise
            if ok:
                stored = self._read_many(keys)
                return [Applied(_decode(stored[k].value, stored[k].mod_revision) if stored[k] else new,
                                action) for k, (new, action) in zip(keys, planned)]
            log.info("apply: objects changed while applying; retrying")
        raise Conflict("apply: the objects kept changing while applying; try again")

    def _read_many(self, keys: list[str]) -> dict[str, Any]:
        """The KeyValue (or None) of each key: one range read per resource when there are
        many keys of it, single reads otherwise."""
        by_prefix: dict[str, list[str]] = {}
        for key in keys:
            by_prefix.setdefault(key.rsplit("/", 2)[0] + "/", []).append(key)
        out: dict[str, Any] = {}
        for prefix, group in by_prefix.items():
            if len(group) > 4:
                listing = {kv.key: kv for kv in self.etcd.get_prefix(prefix).items}
                out.update((k, listing.get(k)) for k in group)
            else:
                out.update((k, self.etcd.get(k)) for k in group)
        return out

    def _merge(self, obj: dict[str, Any], kv: Any) -> tuple[dict[str, Any], str]:
        if kv is None:
            return self._new_metadata(obj), "created"
        old = _decode(kv.value, kv.mod_revision)
        new = copy.deepcopy(obj)
        info = KINDS[new["kind"]]
        new.setdefault("apiVersion", info.api_version)
        meta = new.setdefault("metadata", {})
        meta.pop("resourceVersion", None)
        if info.namespaced:
            meta["namespace"] = meta.get("namespace") or DEFAULT_NAMESPACE
        for field in ("uid", "creationTimestamp"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        if "status" not in new and "status" in old:
            new["status"] = old["status"]
        if new["kind"] == "Pod":
            _keep_pod_binding(new, old)
        if new["kind"] == "Service" and not (new.get("spec") or {}).get("clusterIP"):
            old_ip = (old.get("spec") or {}).get("clusterIP")
            if old_ip:
                new.setdefault("spec", {})["clusterIP"] = old_ip
                if (old.get("spec") or {}).get("clusterIPs"):
                    new["spec"]["clusterIPs"] = old["spec"]["clusterIPs"]
        if new["kind"] == "Service":
            old_ip = (old.get("spec") or {}).get("clusterIP")
            new_ip = (new.get("spec") or {}).get("clusterIP")
            if old_ip and new_ip != old_ip:
                raise Invalid(f'Service "{meta["name"]}" is invalid: spec.clusterIP: Invalid value: '
                              f'"{new_ip}": field is immutable (it is {old_ip})')
        same = _comparable(new) == _comparable(old)
        return (old if same else new), ("unchanged" if same else "configured")

    def _allocate_cluster_ips(self, services: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Give Services without a clusterIP one from the service CIDR (in place).

        Returns comparisons guarding the choice: no Service may have changed since the
        list the free addresses were computed from (a concurrent apply retries).
        """
        needy = [s for s in services
                 if (s.get("spec") or {}).get("type") != "ExternalName"
                 and not (s.get("spec") or {}).get("clusterIP")]
        if not needy:
            return []
        listing = self.etcd.get_prefix(f"{PREFIX}services/")
        used = set()
        for kv in listing.items:
            try:
                ip = (json.loads(kv.value).get("spec") or {}).get("clusterIP")
            except ValueError:
                continue
            if ip and ip != "None":
                used.add(ip)
        used.update(ip for s in services if (ip := (s.get("spec") or {}).get("clusterIP")))
        net = self.service_cidr
        # first and second addresses are the network and (by convention) the API server
        candidates = (str(net.network_address + i) for i in range(2, net.num_addresses - 1))
        for svc in needy:
            ip = next((c for c in candidates if c not in used), None)
            if ip is None:
                raise ObjectStoreError(f"no free cluster IP in {net}")
            used.add(ip)
            spec = svc.setdefault("spec", {})
            spec["clusterIP"] = ip
            spec["clusterIPs"] = [ip]
        prefix = f"{PREFIX}services/"
        return [{"key": _b64(prefix), "range_end": _b64(_prefix_end(prefix)),
                 "target": "MOD", "result": "LESS", "mod_revision": str(listing.revision + 1)}]

    # -- watch -------------------------------------------------------------------------

    def watch(self, resource: str, handler: Callable[[tuple], None], stop_event: threading.Event,
              namespace: str | None = None, **kw: Any) -> None:
        """Block until ``stop_event``, calling ``handler(event)`` with one tuple per event:

        ``("snapshot", [objs])`` first and after every resync (the complete current set:
        forget what you had), ``("put", obj)``, ``("delete", (resource, ns, name), last)``
        where ``last`` is the object as last seen (None if never seen; ns is "" for
        cluster-scoped kinds).  ``kw`` goes to :func:`podnet.etcd.list_and_watch`.
        """
        known: dict[str, dict[str, Any]] = {}

        def on_event(kind: str, *args: Any) -> None:
            if kind == "snapshot":
                known.clear()
                objs = []
                for kv in args[0]:
                    if parse_etcd_key(kv.key) is None:
                        continue
                    try:
                        obj = _decode(kv.value, kv.mod_revision)
                    except ValueError:
                        log.warning("ignoring %s: not JSON", kv.key)
                        continue
                    known[kv.key] = obj
                    objs.append(obj)
                handler(("snapshot", objs))
                return
            key, value, ev = args
            parsed = parse_etcd_key(key)
            if parsed is None:
                return
            if kind == "put":
                try:
                    obj = _decode(value, ev.revision)
                except ValueError:
                    log.warning("ignoring %s: not JSON", key)
                    return
                known[key] = obj
                handler(("put", obj))
            else:
                handler(("delete", parsed, known.pop(key, None)))

        list_and_watch(self.etcd, self._prefix(resource, namespace), on_event,
                       stop_event=stop_event, **kw)


def _keep_pod_binding(new: dict[str, Any], old: dict[str, Any]) -> None:
    """A Pod's spec is immutable once stored, except that the manifest may leave out the
    node it was bound to (as kubectl apply's merge keeps server-set fields)."""
    old_spec = old.get("spec") or {}
    spec = new.setdefault("spec", {})
    if old_spec.get("nodeName") and not spec.get("nodeName"):
        spec["nodeName"] = old_spec["nodeName"]
    if spec != old_spec:
        changed = sorted(k for k in set(spec) | set(old_spec) if spec.get(k) != old_spec.get(k))
        raise Invalid(f'Pod "{new["metadata"]["name"]}" is invalid: spec: Forbidden: pod updates '
                      f"may not change the spec (changed: {', '.join(changed)}); delete the pod "
                      "and apply again")


def _prefix_end(prefix: str) -> bytes:
    from podnet.etcd import prefix_end
    return prefix_end(prefix)
