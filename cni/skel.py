"""The CNI protocol: environment + stdin in, result or error JSON out.

``run(plugin, env, stdin)`` is the whole protocol as a pure-ish function returning
``(exit_code, stdout_bytes)``; ``main`` wires it to the process. The same ``run`` serves the
standalone executable and the node-local daemon (``cni.daemon``), so both answer alike.
"""
from __future__ import annotations

import json
import sys

from cni import spec
from cni.log import getLogger
from cni.spec import CNIError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Mapping

log = getLogger(__name__)

_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")
_NAME_CHARS = _ALNUM | frozenset("_.-")
MAX_IFNAME = 15

# Environment variables each command needs (as libcni's skel checks them).
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": ("CNI_PATH",),
    "VERSION": (),
}


class Request:
    """One invocation: what the runtime said through the environment and stdin."""

    __slots__ = ("command", "container_id", "netns", "ifname", "args", "path", "config",
                 "stdin", "env")

    def __init__(self, command: str, container_id: str = "", netns: str = "", ifname: str = "",
                 args: dict[str, str] | None = None, path: list[str] | None = None,
                 config: dict[str, Any] | None = None, stdin: bytes = b"",
                 env: Mapping[str, str] | None = None) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.args = args if args is not None else {}
        self.path = path if path is not None else []
        self.config = config if config is not None else {}
        self.stdin = stdin
        self.env = env if env is not None else {}

    @property
    def version(self) -> str:
        return self.config.get("cniVersion", spec.CURRENT_VERSION)

    @property
    def prev_result(self) -> dict[str, Any] | None:
        raw = self.config.get("prevResult")
        return spec.parse_result(raw) if raw else None


class Plugin:
    """Base class: a plugin overrides the operations it implements."""

    name = "plugin"

    def add(self, req: Request) -> dict[str, Any]:
        raise CNIError(spec.INVALID_ENV, f"{self.name}: ADD is not supported")

    def delete(self, req: Request) -> None:
        return None

    def check(self, req: Request) -> None:
        return None

    def gc(self, req: Request) -> None:
        return None

    def status(self, req: Request) -> None:
        return None


def validate_name(value: str, what: str, code: int) -> None:
    if not value:
        raise CNIError(code, f"missing {what}")
    if value[0] not in _ALNUM or not _NAME_CHARS.issuperset(value):
        raise CNIError(code, f"invalid characters in {what}", value)


def validate_ifname(name: str) -> None:
    if not name:
        raise CNIError(spec.INVALID_ENV, "interface name is empty")
    if len(name) > MAX_IFNAME:
        raise CNIError(spec.INVALID_ENV, "interface name is too long",
                       f"interface name should be less than {MAX_IFNAME + 1} characters")
    if name in (".", ".."):
        raise CNIError(spec.INVALID_ENV, "interface name is . or ..")
    if any(c in "/:" or c.isspace() for c in name):
        raise CNIError(spec.INVALID_ENV, "interface name contains / or : or whitespace characters")


def parse_args(raw: str) -> dict[str, str]:
    """CNI_ARGS: ``K1=V1;K2=V2``."""
    out: dict[str, str] = {}
    if not raw:
        return out
    for pair in raw.split(";"):
        if not pair:
            continue
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CNIError(spec.INVALID_ENV, f"ARGS: invalid pair {pair!r}")
        out[key] = value
    return out


def parse_request(env: Mapping[str, str], stdin: bytes) -> Request:
    command = env.get("CNI_COMMAND", "")
    if not command:
        raise CNIError(spec.INVALID_ENV, "required env variables [CNI_COMMAND] missing")
    if command not in spec.ALL_COMMANDS:
        raise CNIError(spec.INVALID_ENV, f"unknown CNI_COMMAND: {command}")
    missing = [k for k in _REQUIRED_ENV[command] if k not in env or (k != "CNI_PATH" and not env[k])]
    if missing:
        raise CNIError(spec.INVALID_ENV, f"required env variables [{','.join(missing)}] missing")
    req = Request(
        command=command,
        container_id=env.get("CNI_CONTAINERID", ""),
        netns=env.get("CNI_NETNS", ""),
        ifname=env.get("CNI_IFNAME", ""),
        args=parse_args(env.get("CNI_ARGS", "")),
        path=[p for p in env.get("CNI_PATH", "").split(":") if p],
        stdin=stdin,
        env=env,
    )
    if command == "VERSION":
        return req
    req.config = decode_config(stdin)
    if command in ("ADD", "DEL", "CHECK"):
        validate_name(req.container_id, "containerID", spec.INVALID_ENV)
        validate_ifname(req.ifname)
    return req


def decode_config(stdin: bytes) -> dict[str, Any]:
    try:
        config = json.loads(stdin)
    except (ValueError, UnicodeDecodeError) as e:
        raise CNIError(spec.DECODE_FAILURE, f"error decoding network config: {e}") from None
    if not isinstance(config, dict):
        raise CNIError(spec.DECODE_FAILURE, "error decoding network config: not a JSON object")
    spec.check_version(config.get("cniVersion"))
    name = config.get("name")
    if not isinstance(name, str):
        raise CNIError(spec.INVALID_CONFIG, "missing network name")
    validate_name(name, "network name", spec.INVALID_CONFIG)
    plugin_type = config.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        raise CNIError(spec.INVALID_CONFIG, "missing plugin type")
    return config


def dispatch(plugin: Plugin, req: Request) -> dict[str, Any] | None:
    if req.command == "VERSION":
        return spec.version_result()
    if not spec.command_allowed(req.version, req.command):
        raise CNIError(spec.INCOMPATIBLE_VERSION,
                       f"config version {req.version} does not allow command {req.command}")
    if req.command == "ADD":
        return spec.format_result(plugin.add(req), req.version)
    handler = {"DEL": plugin.delete, "CHECK": plugin.check,
               "GC": plugin.gc, "STATUS": plugin.status}[req.command]
    handler(req)
    return None


def _error_version(stdin: bytes) -> str:
    try:
        version = json.loads(stdin).get("cniVersion")
    except Exception:
        return spec.CURRENT_VERSION
    return version if version in spec.SUPPORTED_VERSIONS else spec.CURRENT_VERSION


def run(plugin: Plugin, env: Mapping[str, str], stdin: bytes) -> tuple[int, bytes]:
    """Run one invocation; return (exit code, bytes for stdout). Never raises."""
    try:
        req = parse_request(env, stdin)
        _configure_log_file(req.config)
        result = dispatch(plugin, req)
    except CNIError as e:
        log.info("%s %s: error %d: %s", plugin.name, env.get("CNI_COMMAND"), e.code, e.msg)
        body = e.to_json(_error_version(stdin))
        return 1, (json.dumps(body) + "\n").encode()
    except Exception as e:  # a bug: still answer in the spec's format
        import traceback
        log.error("%s: internal error: %s", plugin.name, traceback.format_exc())
        err = CNIError(spec.INTERNAL, f"{plugin.name}: internal error: {type(e).__name__}: {e}")
        return 1, (json.dumps(err.to_json(_error_version(stdin))) + "\n").encode()
    if result is None:
        return 0, b""
    return 0, (json.dumps(result, indent=4) + "\n").encode()


_log_files: dict[str, object] = {}


def _configure_log_file(config: dict[str, Any]) -> None:
    """Honour ``logFile`` in the config: log there as well as stderr."""
    path = config.get("logFile") if isinstance(config, dict) else None
    if not isinstance(path, str) or not path or path in _log_files:
        return
    import logging
    try:
        handler = logging.FileHandler(path)
    except OSError as e:
        raise CNIError(spec.IO_FAILURE, f"cannot open logFile {path}: {e}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    _log_files[path] = handler


def main(plugin: Plugin, env: Mapping[str, str] | None = None) -> int:
    """The executable's entry: logs go to stderr only (see cni.log), never stdout."""
    import os
    code, out = run(plugin, os.environ if env is None else env, sys.stdin.buffer.read())
    sys.stdout.buffer.write(out)
    sys.stdout.flush()
    return code
