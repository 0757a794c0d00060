"""Backends by ``Backend.Type``: imported lazily, so a node running vxlan never loads udp.

A backend module exposes either ``new(ext, config, **kw)`` or a class (``VxlanBackend``,
``HostGwBackend``, ``UdpBackend``/``UDPBackend``) taking ``(ext, config, **kw)``.
"""
from __future__ import annotations

import importlib
from typing import Any

from flannel_py.backend import Backend, ExternalInterface
from flannel_py.config import Config

BACKENDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "vxlan": ("flannel_py.backend.vxlan", ("new", "VxlanBackend")),
    "host-gw": ("flannel_py.backend.hostgw", ("new", "HostGwBackend")),
    "udp": ("flannel_py.backend.udp", ("new", "UdpBackend", "UDPBackend")),
}


class UnknownBackend(ValueError):
    pass


def backend_factory(backend_type: str) -> Any:
    """The constructor for ``backend_type``; :class:`UnknownBackend` with a clear message."""
    if backend_type not in BACKENDS:
        raise UnknownBackend(f"unknown backend type: {backend_type!r} "
                             f"(supported: {', '.join(sorted(BACKENDS))})")
    module_name, candidates = BACKENDS[backend_type]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name != module_name:
            raise
        raise UnknownBackend(f"backend {backend_type!r} is not available in this build "
                             f"({module_name} is missing)") from None
    for name in candidates:
        factory = getattr(module, name, None)
        if callable(factory):
            return factory
    raise UnknownBackend(f"{module_name} defines none of {', '.join(candidates)}")


def create_backend(ext: ExternalInterface, config: Config, **kw: Any) -> Backend:
    """Build the backend; keyword options it does not take (e.g. ``check_interval`` for
    udp) are left out."""
    import inspect
    factory = backend_factory(config.backend_type)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        kw = {k: v for k, v in kw.items() if k in params}
    return factory(ext, config, **kw)
