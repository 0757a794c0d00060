"""The ``flannel`` meta-plugin: turn ``subnet.env`` into a ``bridge`` delegate config.

As upstream (flannel-io/cni-plugin): the delegate gets ``name``, ``type`` (default bridge),
``ipMasq = !FLANNEL_IPMASQ``, ``mtu = FLANNEL_MTU``, ``isGateway`` for bridge, the config's
``cniVersion`` and ``runtimeConfig``, and a host-local ``ipam`` whose range is the node's
subnet with a route to the whole Network. The rendered delegate config is saved to
``<dataDir>/<containerID>`` before delegating, and DEL replays it. Unlike upstream, DEL keeps
the file when the delegate's DEL fails, so a retried DEL still knows what to remove.

Delegates that podnet implements run in-process; any other type is exec'd from CNI_PATH.
"""
from __future__ import annotations

import json
import os
import sys

from cni import invoke, registry, spec
from cni.log import getLogger
from cni.skel import Plugin, Request, main
from cni.spec import CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

log = getLogger(__name__)

DEFAULT_SUBNET_FILE = "/run/flannel/subnet.env"
DEFAULT_DATA_DIR = "/var/lib/cni/flannel"


def _conf_error(msg: str) -> CNIError:
    return CNIError(spec.INVALID_CONFIG, msg)


def load_subnet_env(path: str):
    from flannel_py.subnet.subnet_env import SubnetEnvError, read_subnet_env
    try:
        return read_subnet_env(path)
    except FileNotFoundError:
        raise CNIError(spec.TRY_AGAIN_LATER,
                       f"failed to load flannel 'subnet.env' file: open {path}: no such file or "
                       "directory. Check the flannel pod log for this node.") from None
    except (OSError, SubnetEnvError) as e:
        raise CNIError(spec.INVALID_CONFIG,
                       f"failed to load flannel 'subnet.env' file: {path}: {e}. "
                       "Check the flannel pod log for this node.") from None


def build_delegate(config: dict[str, Any], fenv) -> dict[str, Any]:
    """The delegate network config, exactly as upstream's doCmdAdd assembles it (pure)."""
    delegate = config.get("delegate")
    if delegate is None:
        delegate = {}
    elif not isinstance(delegate, dict):
        raise _conf_error("'delegate' must be a dictionary")
    else:
        delegate = dict(delegate)
        if "type" in delegate and not isinstance(delegate["type"], str):
            raise _conf_error("'delegate' dictionary, if present, must have (string) 'type' field")
        if "name" in delegate:
            raise _conf_error("'delegate' dictionary must not have 'name' field, it'll be set by flannel")
        if "ipam" in delegate:
            raise _conf_error("'delegate' dictionary must not have 'ipam' field, it'll be set by flannel")
    if config.get("runtimeConfig") is not None:
        delegate["runtimeConfig"] = config["runtimeConfig"]
    delegate["name"] = config["name"]
    delegate.setdefault("type", "bridge")
    delegate.setdefault("ipMasq", not fenv.ipmasq)
    delegate.setdefault("mtu", fenv.mtu)
    if delegate["type"] == "bridge":
        delegate.setdefault("isGateway", True)
    if config.get("cniVersion"):
        delegate["cniVersion"] = config["cniVersion"]
    ipam = config.get("ipam") or {}
    if not isinstance(ipam, dict):
        raise _conf_error("failed to load flannel netconf: ipam must be an object")
    ipam = dict(ipam)
    ipam.setdefault("type", "host-local")
    ipam["ranges"] = [[{"subnet": str(fenv.subnet.network)}]]
    routes = ipam.get("routes") or []
    if not isinstance(routes, list):
        raise _conf_error("failed to assemble Delegate IPAM: failed to read IPAM routes")
    routes = list(routes)
    routes.append({"dst": str(fenv.network)})
    ipam["routes"] = routes
    delegate["ipam"] = ipam
    return delegate


def _str_field(config: dict[str, Any], key: str, default: str) -> str:
    value = config.get(key) or default
    if not isinstance(value, str):
        raise _conf_error(f"failed to load flannel netconf: {key} must be a string, got {value!r}")
    return value


def _scratch_path(config: dict[str, Any], container_id: str) -> str:
    return os.path.join(_str_field(config, "dataDir", DEFAULT_DATA_DIR), container_id)


def _write_scratch(path: str, data: bytes) -> None:
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as e:
        raise CNIError(spec.IO_FAILURE, f"failed to save delegate netconf {path}: {e.strerror}") from None


def delegate_call(req: Request, command: str, delegate: dict[str, Any], raw: bytes) -> dict | None:
    """Run the delegate: in-process when podnet implements its type, else exec'd."""
    dtype = delegate["type"]
    if dtype in registry.PLUGINS and dtype != "flannel":
        sub = Request(command=command, container_id=req.container_id, netns=req.netns,
                      ifname=req.ifname, args=req.args, path=req.path, config=delegate,
                      stdin=raw, env=req.env)
        plugin = registry.load(dtype)
        if command == "ADD":
            return spec.format_result(plugin.add(sub), sub.version)
        (plugin.delete if command == "DEL" else plugin.check)(sub)
        return None
    return invoke.exec_plugin(dtype, command, raw, req.env, req.path)


class Flannel(Plugin):
    name = "flannel"

    def add(self, req: Request) -> dict[str, Any]:
        path = _scratch_path(req.config, req.container_id)
        fenv = load_subnet_env(_str_field(req.config, "subnetFile", DEFAULT_SUBNET_FILE))
        delegate = build_delegate(req.config, fenv)
        raw = json.dumps(delegate).encode()
        log.debug("flannel: delegate netconf %s", raw)
        _write_scratch(path, raw)
        result = delegate_call(req, "ADD", delegate, raw)
        if result is None:
            raise CNIError(spec.INTERNAL, f"delegate {delegate['type']!r} returned no result")
        return spec.parse_result(result)

    def delete(self, req: Request) -> None:
        path = _scratch_path(req.config, req.container_id)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return  # never added, or already deleted
        except OSError as e:
            raise CNIError(spec.IO_FAILURE, f"failed to read {path}: {e.strerror}") from None
        try:
            delegate = json.loads(raw)
            dtype = delegate["type"]
        except (ValueError, KeyError, TypeError):
            log.warning("flannel: unparsable saved netconf %s: dropping it", path)
            os.unlink(path)
            return
        if req.config.get("runtimeConfig") is not None:
            delegate["runtimeConfig"] = req.config["runtimeConfig"]
        delegate_call(req, "DEL", delegate, json.dumps(delegate).encode())
        # Only now: a failed delegate DEL raised above and the file stays for the retry.
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        log.debug("flannel: deleted %s (%s)", req.container_id, dtype)

    def check(self, req: Request) -> None:
        return None  # upstream's CHECK is a no-op too


PLUGIN = Flannel()

if __name__ == "__main__":
    sys.exit(main(PLUGIN))
