"""An in-memory object store for pod runner tests: the real :class:`podnet.store.ObjectStore`
over the in-memory etcd fake, with every etcd call serialised (the runner writes from
several threads, and the fake's compare-and-put is not atomic on its own).

Helpers build the Kubernetes objects the tests need.
"""
from __future__ import annotations

import threading
from typing import Any

from podnet.store import ObjectStore
from tests.fakes.etcd import FakeStore


class LockedFakeStore(FakeStore):
    _CALLS = ("get", "get_prefix", "put", "delete", "delete_prefix", "create", "replace",
              "txn", "revision")

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self._call_lock = threading.RLock()

    def __getattribute__(self, name: str) -> Any:
        attr = super().__getattribute__(name)
        if name in LockedFakeStore._CALLS and callable(attr):
            lock = super().__getattribute__("_call_lock")

            def locked(*a: Any, **kw: Any) -> Any:
                with lock:
                    return attr(*a, **kw)
            return locked
        return attr


def object_store() -> ObjectStore:
    return ObjectStore(LockedFakeStore())


def node(name: str, ready: bool = True, ip: str | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
    if ip:
        status["addresses"] = [{"type": "InternalIP", "address": ip}]
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "status": status}


def pod(name: str, namespace: str = "default", node_name: str | None = None,
        containers: list[dict[str, Any]] | None = None, **spec: Any) -> dict[str, Any]:
    s: dict[str, Any] = {"containers": containers or [
        {"name": "srv", "ports": [{"containerPort": 8080, "protocol": "TCP"},
                                  {"containerPort": 8080, "protocol": "UDP"}]}]}
    if node_name:
        s["nodeName"] = node_name
    s.update(spec)
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace}, "spec": s}
