"""Which cluster a command talks to, and from which network namespace.

``connect(args)`` resolves, in this order:

1. ``--etcd-endpoints URLS`` (comma-separated), else the environment's
   ``PODNET_ETCD_ENDPOINTS``: talk to those endpoints from the current namespace;
2. ``--lab NAME`` (or ``PODNET_LAB``): read the lab's state file;
3. neither: the lab named ``lab`` (``podnet lab up``'s default name) if its state file
   exists, else the only lab there is.

The lab's state file is ``<root>/<NAME>/state.json`` with ``<root>`` =
``$PODNET_LAB_ROOT`` or ``/run/podnet/lab``.  Fields read here:

- ``etcd_endpoints`` (list of URLs, required): the etcd client URLs;
- ``client_netns`` (string, optional): a namespace (name under /run/netns, or a path)
  from which those URLs are reachable; every store call enters it;
- ``etcd_netns`` (string, optional): used instead when ``client_netns`` is absent
  (etcd's own namespace reaches its own listening address);
- ``service_cidr`` (string, optional): the range Service cluster IPs are allocated from.

Because etcd lives in a namespace of its own, the returned :class:`ObjectStore` talks
through a store wrapper that enters that namespace around each etcd request (and each
step of a watch); the thread is back in its own namespace in between.  The second value
returned, a :class:`NetnsScope`, is the same thing as a context manager for callers that
open connections of their own.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import threading
from typing import Any

from podnet.store import DEFAULT_SERVICE_CIDR, ObjectStore

log = logging.getLogger(__name__)

DEFAULT_LAB_ROOT = "/run/podnet/lab"
DEFAULT_LAB = "lab"
ENV_ENDPOINTS = "PODNET_ETCD_ENDPOINTS"
ENV_LAB = "PODNET_LAB"
ENV_LAB_ROOT = "PODNET_LAB_ROOT"


class ClusterError(Exception):
    """No cluster selected, or the selected lab's state is missing or unusable."""


def lab_root() -> str:
    return os.environ.get(ENV_LAB_ROOT) or DEFAULT_LAB_ROOT


def state_path(name: str) -> str:
    return os.path.join(lab_root(), name, "state.json")


def read_lab_state(name: str) -> dict[str, Any]:
    path = state_path(name)
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
    except FileNotFoundError:
        raise ClusterError(f'lab "{name}" not found (no {path}); is it up? '
                           "(podnet lab up --name NAME)") from None
    except (OSError, ValueError) as exc:
        raise ClusterError(f'lab "{name}": cannot read {path}: {exc}') from None
    if not isinstance(state, dict) or not state.get("etcd_endpoints"):
        raise ClusterError(f'lab "{name}": {path} names no etcd_endpoints')
    return state


def _default_lab() -> str | None:
    root = lab_root()
    if os.path.exists(os.path.join(root, DEFAULT_LAB, "state.json")):
        return DEFAULT_LAB
    try:
        labs = sorted(n for n in os.listdir(root) if os.path.exists(os.path.join(root, n, "state.json")))
    except OSError:
        return None
    return labs[0] if len(labs) == 1 else None


class NetnsScope:
    """``with scope:`` puts the current thread into the namespace (nestable, reusable,
    per thread); a no-op when ``netns`` is None."""

    def __init__(self, netns: str | None) -> None:
        self.netns = netns
        self._local = threading.local()

    def __enter__(self) -> NetnsScope:
        if self.netns:
            from podnet import netns as _netns
            entered = _netns.entered(self.netns)
            entered.__enter__()
            self._stack().append(entered)
        return self

    def __exit__(self, *exc: object) -> bool:
        if self.netns:
            self._stack().pop().__exit__(*exc)
        return False

    def _stack(self) -> list[Any]:
        stack = getattr(self._local, "stack", None)
        if stack is None:
            stack = self._local.stack = []
        return stack


class NetnsStore:
    """A :class:`podnet.etcd.Store` whose every request runs inside ``scope``."""

    def __init__(self, store: Any, scope: NetnsScope) -> None:
        self._store, self._scope = store, scope

    def __repr__(self) -> str:
        return f"NetnsStore({self._store!r}, netns={self._scope.netns})"

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._store, name)
        if not callable(attr):
            return attr
        scope = self._scope

        def call(*args: Any, **kw: Any) -> Any:
            with scope:
                result = attr(*args, **kw)
            return _NetnsWatch(result, scope) if name == "watch_prefix" else result
        return call


class _NetnsWatch:
    """A watch stream whose reads (which may reconnect) run inside the scope."""

    def __init__(self, stream: Any, scope: NetnsScope) -> None:
        self._stream, self._scope = stream, scope

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)

    def __enter__(self) -> _NetnsWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()

    def __iter__(self):
        with self._scope:
            it = iter(self._stream)
        while True:
            with self._scope:
                try:
                    batch = next(it)
                except StopIteration:
                    return
            yield batch


def add_cluster_options(parser: argparse.ArgumentParser, *, suppress: bool = False) -> None:
    """``--lab`` and ``--etcd-endpoints`` (``suppress``: on a subcommand, so they do not
    override the same options given before it; ``-v`` is added there too)."""
    default: Any = argparse.SUPPRESS if suppress else None
    group = parser.add_argument_group("cluster")
    group.add_argument("--lab", metavar="NAME", default=default,
                       help="the lab to talk to (default: $PODNET_LAB, else the only lab)")
    group.add_argument("--etcd-endpoints", metavar="URLS", default=default,
                       help=f"comma-separated etcd URLs (default: ${ENV_ENDPOINTS})")
    if suppress:
        parser.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS,
                            help="more log output; tracebacks on errors")


def resolve(args: Any) -> tuple[list[str], str | None, dict[str, Any]]:
    """(endpoints, netns or None, lab state or {}) for the parsed arguments."""
    endpoints = getattr(args, "etcd_endpoints", None)
    lab = getattr(args, "lab", None)
    if endpoints and lab:
        raise ClusterError("give either --lab or --etcd-endpoints, not both")
    if not endpoints and not lab:
        endpoints = os.environ.get(ENV_ENDPOINTS)
    if endpoints:
        urls = [u.strip() for u in endpoints.split(",") if u.strip()]
        if not urls:
            raise ClusterError("--etcd-endpoints: no URL given")
        return urls, None, {}
    lab = lab or os.environ.get(ENV_LAB) or _default_lab()
    if not lab:
        raise ClusterError("no cluster selected: give --lab NAME or --etcd-endpoints URLS "
                           f"(or set {ENV_ENDPOINTS})")
    state = read_lab_state(lab)
    urls = state["etcd_endpoints"]
    if isinstance(urls, str):
        urls = [u for u in urls.split(",") if u]
    return list(urls), state.get("client_netns") or state.get("etcd_netns"), state


def connect(args: Any, **store_kw: Any) -> tuple[ObjectStore, NetnsScope]:
    """The object store of the selected cluster, and the scope its requests run in."""
    from podnet.etcd import Store

    urls, ns, state = resolve(args)
    scope = NetnsScope(ns)
    try:
        etcd = Store(urls, **store_kw)
    except ValueError as exc:
        raise ClusterError(str(exc)) from None
    log.debug("cluster: etcd %s%s", ",".join(urls), f" from netns {ns}" if ns else "")
    raw: Any = NetnsStore(etcd, scope) if ns else etcd
    return ObjectStore(raw, service_cidr=state.get("service_cidr") or DEFAULT_SERVICE_CIDR), scope
