"""``podnet cni install``: put podnet's plugins into a CNI bin directory under upstream names.

Each executable is a few lines: ``python -I -S`` (no site import: the fast start) and
``cni.shim.run``, which hands the request to the CNI daemon when one listens on the socket
baked in here, and otherwise does the work itself.
"""
from __future__ import annotations

import os
import sys

import cni
from cni import registry
from cni.daemon import DEFAULT_SOCKET

TEMPLATE = """#!{python} -IS
# podnet CNI plugin {name!r}, installed by `podnet cni install`.
import sys
sys.path.insert(0, {root!r})
from cni.shim import run
sys.exit(run({name!r}, {socket!r}))
"""


def project_root() -> str:
    return os.path.dirname(os.path.dirname(os.path.abspath(cni.__file__)))


def render(name: str, socket_path: str, python: str | None = None) -> str:
    return TEMPLATE.format(python=python or sys.executable, name=name, root=project_root(),
                           socket=socket_path)


def install(directory: str, socket_path: str = DEFAULT_SOCKET,
            plugins: list[str] | None = None) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    written = []
    for name in plugins or registry.available():
        path = os.path.join(directory, name)
        tmp = path + ".podnet-tmp"
        with open(tmp, "w") as f:
            f.write(render(name, socket_path))
        os.chmod(tmp, 0o755)
        os.replace(tmp, path)  # atomic: a runtime never execs a half-written plugin
        written.append(path)
    return written
