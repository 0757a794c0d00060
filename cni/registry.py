"""podnet's CNI plugins by their upstream executable names (imported lazily)."""
from __future__ import annotations

import importlib

from cni.skel import Plugin

PLUGINS = {
    "bridge": "cni.plugins.bridge",
    "host-local": "cni.ipam.host_local",
    "loopback": "cni.plugins.loopback",
    "portmap": "cni.plugins.portmap",
    "flannel": "cni.plugins.flannel",
}


def available() -> list[str]:
    import importlib.util
    out = []
    for name, module in PLUGINS.items():
        if importlib.util.find_spec(module) is not None:
            out.append(name)
    return out


def load(name: str) -> Plugin:
    try:
        module = PLUGINS[name]
    except KeyError:
        raise KeyError(f"unknown podnet CNI plugin {name!r}") from None
    return importlib.import_module(module).PLUGIN
