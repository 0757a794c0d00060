"""``podnet cni install``: put podnet's plugins into a CNI bin directory under upstream names.

Each plugin executable first hands the request to the node's CNI daemon (every import already
loaded) and otherwise does the work itself. Two forms of that executable:

* native (default when a C compiler is present): ``cni/shim.c`` built once with the socket,
  interpreter and project paths baked in, and installed under every plugin name. It moves
  bytes only; when no daemon listens it execs ``python -IS`` on the plugin.
* ``--no-native``: a four-line Python script run with ``python -IS`` doing the same through
  ``cni.shim``. Costs one interpreter start (~10 ms here) on every call, daemon or not.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

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


def _c_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def compiler() -> str | None:
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def build_native(socket_path: str, out: str, python: str | None = None) -> None:
    """Compile cni/shim.c into ``out`` with this installation's paths baked in."""
    cc = compiler()
    if cc is None:
        raise RuntimeError("no C compiler found (install gcc, or use --no-native)")
    source = os.path.join(os.path.dirname(os.path.abspath(cni.__file__)), "shim.c")
    root = project_root()
    if "'" in root:
        raise RuntimeError(f"project path {root!r} contains a quote")
    cmd = [cc, "-O2", "-Wall", "-o", out, source,
           f"-DPODNET_SOCKET={_c_string(socket_path)}",
           f"-DPODNET_PYTHON={_c_string(python or sys.executable)}",
           f"-DPODNET_ROOT={_c_string(root)}"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building the CNI shim failed: {proc.stderr.strip()}")


def install(directory: str, socket_path: str = DEFAULT_SOCKET,
            plugins: list[str] | None = None, native: bool | None = None) -> list[str]:
    """Install the plugins; ``native=None`` means native when a compiler is available."""
    os.makedirs(directory, exist_ok=True)
    if native is None:
        native = compiler() is not None
    names = plugins or registry.available()
    written = []
    with tempfile.TemporaryDirectory(dir=directory, prefix=".podnet-") as tmpdir:
        binary = os.path.join(tmpdir, "shim")
        if native:
            build_native(socket_path, binary)
        for name in names:
            tmp = os.path.join(tmpdir, name)
            if native:
                shutil.copyfile(binary, tmp)
            else:
                with open(tmp, "w") as f:
                    f.write(render(name, socket_path))
            os.chmod(tmp, 0o755)
            path = os.path.join(directory, name)
            os.replace(tmp, path)  # atomic: a runtime never execs a half-written plugin
            written.append(path)
    return written
