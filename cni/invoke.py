"""Delegation: run another plugin found on CNI_PATH, as libcni's invoke package does.

Used for IPAM plugins other than the built-in host-local, and by the ``flannel`` meta-plugin.
"""
from __future__ import annotations

import json
import os

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

from cni import spec
from cni.spec import CNIError


def find_plugin(plugin_type: str, path: list[str]) -> str:
    if not plugin_type or "/" in plugin_type or plugin_type in (".", ".."):
        raise CNIError(spec.INVALID_CONFIG, f"invalid plugin type {plugin_type!r}")
    for d in path:
        candidate = os.path.join(d, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(spec.INVALID_CONFIG,
                   f"failed to find plugin {plugin_type!r} in path {path}")


def exec_plugin(plugin_type: str, command: str, stdin: bytes, env: Mapping[str, str],
                path: list[str]) -> dict[str, Any] | None:
    """Run ``plugin_type`` with CNI_COMMAND=command; return its parsed stdout (or None)."""
    import subprocess
    exe = find_plugin(plugin_type, path)
    child_env = {k: v for k, v in env.items()}
    child_env["CNI_COMMAND"] = command
    child_env["CNI_PATH"] = ":".join(path)
    try:
        proc = subprocess.run([exe], input=stdin, env=child_env, capture_output=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CNIError(spec.IO_FAILURE, f"failed to run plugin {plugin_type!r}: {e}") from None
    out = proc.stdout.strip()
    if proc.returncode != 0:
        try:
            err = json.loads(out)
            raise CNIError(int(err.get("code", spec.INTERNAL)), str(err.get("msg", "")),
                           str(err.get("details", "")))
        except (ValueError, AttributeError, TypeError):
            raise CNIError(spec.INTERNAL, f"plugin {plugin_type!r} failed: "
                           f"{(out or proc.stderr).decode(errors='replace').strip()}") from None
    if not out:
        return None
    try:
        return json.loads(out)
    except ValueError:
        raise CNIError(spec.DECODE_FAILURE,
                       f"plugin {plugin_type!r} returned invalid JSON: {out[:200]!r}") from None
