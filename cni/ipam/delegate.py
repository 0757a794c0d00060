"""Calling the IPAM plugin named in ``ipam.type``.

``host-local`` runs in-process (same code, same on-disk store as the executable, no second
process start); any other IPAM type is exec'd from CNI_PATH as libcni's ``ipam.Exec*`` do.
"""
from __future__ import annotations

from cni import invoke, spec
from cni.ipam import host_local
from cni.skel import Request
from cni.spec import CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

BUILTIN = "host-local"


def _type(req: Request) -> str:
    return (req.config.get("ipam") or {}).get("type", "")


def add(req: Request) -> dict[str, Any]:
    if _type(req) == BUILTIN:
        return host_local.allocate(req.config, req.container_id, req.ifname, req.args)
    out = invoke.exec_plugin(_type(req), "ADD", req.stdin, req.env, req.path)
    if out is None:
        raise CNIError(spec.INTERNAL, f"IPAM plugin {_type(req)!r} returned no result")
    return spec.parse_result(out)


def delete(req: Request) -> None:
    if _type(req) == BUILTIN:
        host_local.release(req.config, req.container_id, req.ifname)
    else:
        invoke.exec_plugin(_type(req), "DEL", req.stdin, req.env, req.path)


def check(req: Request) -> None:
    if _type(req) == BUILTIN:
        host_local.check(req.config, req.container_id, req.ifname)
    else:
        invoke.exec_plugin(_type(req), "CHECK", req.stdin, req.env, req.path)
