"""``flanneld`` command line: upstream's flag names, Go's flag syntax, ``FLANNELD_*`` env.

Go flags accept ``-flag`` and ``--flag``, ``-flag=value`` and ``-flag value`` (booleans only
``-flag`` / ``-flag=false``).  As upstream's ``flagutil.SetFlagsFromEnv(…, "FLANNELD")``, a
flag not given on the command line is taken from ``FLANNELD_<NAME>`` (upper case, ``-`` →
``_``) when that is set and non-empty.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

DEFAULT_ENDPOINTS = "http://127.0.0.1:4001,http://127.0.0.1:2379"
ENV_PREFIX = "FLANNELD"


class UsageError(ValueError):
    pass


@dataclass(frozen=True)
class Options:
    etcd_endpoints: list[str] = field(default_factory=lambda: DEFAULT_ENDPOINTS.split(","))
    etcd_prefix: str = "/coreos.com/network"
    etcd_keyfile: str = ""
    etcd_certfile: str = ""
    etcd_cafile: str = ""
    iface: list[str] = field(default_factory=list)
    public_ip: str = ""
    subnet_file: str = "/run/flannel/subnet.env"
    subnet_lease_renew_margin: int = 60
    ip_masq: bool = False
    ip_masq_fully_random_disable: bool = False
    healthz_ip: str = "0.0.0.0"
    healthz_port: int = 0
    iptables_resync: int = 5
    v: int = 0


def go_bool(text: str) -> bool:
    """Go's ``strconv.ParseBool``."""
    if text in ("1", "t", "T", "true", "TRUE", "True"):
        return True
    if text in ("0", "f", "F", "false", "FALSE", "False"):
        return False
    raise ValueError(f"invalid boolean value {text!r}")


# flag name -> (kind, help)
FLAGS: dict[str, tuple[str, str]] = {
    "etcd-endpoints": ("str", "a comma-delimited list of etcd endpoints"),
    "etcd-prefix": ("str", "etcd prefix"),
    "etcd-keyfile": ("str", "SSL key file used to secure etcd communication"),
    "etcd-certfile": ("str", "SSL certification file used to secure etcd communication"),
    "etcd-cafile": ("str", "SSL Certificate Authority file used to secure etcd communication"),
    "iface": ("list", "interface to use (IP or name) for inter-host communication. "
                      "Can be specified multiple times to check each option in order."),
    "public-ip": ("str", "IP accessible by other nodes for inter-host communication"),
    "subnet-file": ("str", "filename where env variables (subnet, MTU, ... ) will be written to"),
    "subnet-lease-renew-margin": ("int", "subnet lease renewal margin, in minutes, "
                                         "ranging from 1 to 1439"),
    "ip-masq": ("bool", "setup IP masquerade rule for traffic destined outside of overlay network"),
    "ip-masq-fully-random-disable": ("bool", "disable fully-random mode for MASQUERADE"),
    "healthz-ip": ("str", "the IP address for healthz server to listen"),
    "healthz-port": ("int", "the port for healthz server to listen(0 to disable)"),
    "iptables-resync": ("int", "resync period for iptables rules, in seconds"),
    "v": ("int", "log level for V logs"),
}


def _normalise(argv: Sequence[str]) -> list[str]:
    """Go flag syntax → argparse: ``-flag`` → ``--flag``; ``--bool=value`` split off."""
    out: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg == "--":
            out.append(arg)
            out.extend(it)
            break
        if arg.startswith("-") and not arg.startswith("--") and len(arg) > 1:
            arg = "-" + arg
        if arg.startswith("--"):
            name, eq, value = arg[2:].partition("=")
            kind = FLAGS.get(name, ("", ""))[0]
            if kind == "bool":
                out.append(f"--{name}" if not eq or go_bool_safe(value) else f"--no-{name}")
                continue
        out.append(arg)
    return out


def go_bool_safe(value: str) -> bool:
    try:
        return go_bool(value)
    except ValueError:
        raise UsageError(f"invalid boolean value {value!r}") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flanneld", argument_default=argparse.SUPPRESS,
                                description="flannel: an overlay network for pods")
    for name, (kind, help_) in FLAGS.items():
        dest = name.replace("-", "_")
        if kind == "bool":
            p.add_argument(f"--{name}", dest=dest, action="store_const", const=True, help=help_)
            p.add_argument(f"--no-{name}", dest=dest, action="store_const", const=False,
                           help=argparse.SUPPRESS)
        elif kind == "list":
            p.add_argument(f"--{name}", dest=dest, action="append", help=help_)
        elif kind == "int":
            p.add_argument(f"--{name}", dest=dest, type=int, help=help_)
        else:
            p.add_argument(f"--{name}", dest=dest, help=help_)
    return p


def _convert(kind: str, text: str, key: str) -> Any:
    try:
        if kind == "bool":
            return go_bool(text)
        if kind == "int":
            return int(text)
        if kind == "list":
            return [text]
        return text
    except ValueError:
        raise UsageError(f'invalid value "{text}" for {key}') from None


def parse_args(argv: Sequence[str], env: Mapping[str, str] | None = None) -> Options:
    """Flags first, then ``FLANNELD_*`` for the flags not given; UsageError on bad input."""
    env = os.environ if env is None else env
    parser = _parser()
    try:
        ns, rest = parser.parse_known_args(_normalise(argv))
    except SystemExit as exc:  # argparse prints its message to stderr
        raise UsageError("invalid command line") from exc
    if rest:
        raise UsageError(f"unexpected arguments: {' '.join(rest)}")
    given = vars(ns)
    values: dict[str, Any] = {}
    for name, (kind, _) in FLAGS.items():
        dest = name.replace("-", "_")
        if dest in given:
            values[dest] = given[dest]
            continue
        key = f"{ENV_PREFIX}_{name.upper().replace('-', '_')}"
        if env.get(key):
            values[dest] = _convert(kind, env[key], key)
    if "etcd_endpoints" in values:
        values["etcd_endpoints"] = [e.strip() for e in values["etcd_endpoints"].split(",") if e.strip()]
        if not values["etcd_endpoints"]:
            raise UsageError("--etcd-endpoints is empty")
    margin = values.get("subnet_lease_renew_margin", 60)
    if not 0 < margin < 24 * 60:
        raise UsageError("Invalid subnet-lease-renew-margin option, out of acceptable range")
    if values.get("iptables_resync", 5) <= 0:
        raise UsageError("--iptables-resync must be positive")
    return Options(**values)


def setup_logging(verbosity: int) -> None:
    logging.basicConfig(level=logging.DEBUG if verbosity >= 2 else logging.INFO,
                        format="%(levelname).1s%(asctime)s %(process)d %(name)s] %(message)s",
                        stream=sys.stderr)
    if verbosity < 4:
        for noisy in ("urllib3", "etcd3gw", "requests", "futurist"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        opts = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        print(f"flanneld: {exc}", file=sys.stderr)
        return 2
    setup_logging(opts.v)
    from flannel_py.daemon import Daemon

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        logging.getLogger(__name__).info("received signal %d, shutting down", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return Daemon(opts, stop_event=stop).run()


if __name__ == "__main__":
    sys.exit(main())
