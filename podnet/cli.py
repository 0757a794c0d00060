"""The ``podnet`` command."""
from __future__ import annotations

import argparse
import logging
import sys


def _cni_install(args: argparse.Namespace) -> int:
    from cni.install import install
    for path in install(args.dir, args.socket, native=args.native):
        print(path)
    return 0


def _cni_daemon(args: argparse.Namespace) -> int:
    import signal

    from cni.daemon import serve
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # unwind: the socket is removed
    try:
        serve(args.socket)
    except KeyboardInterrupt:
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    from cni.daemon import DEFAULT_SOCKET
    p = argparse.ArgumentParser(prog="podnet", description="podnet: container networking")
    p.add_argument("-v", "--verbose", action="count", default=0)
    sub = p.add_subparsers(dest="cmd", required=True)
    cni = sub.add_parser("cni", help="CNI plugins").add_subparsers(dest="cni_cmd", required=True)
    inst = cni.add_parser("install", help="install the plugins into a CNI bin directory")
    inst.add_argument("--dir", default="/opt/cni/bin")
    inst.add_argument("--socket", default=DEFAULT_SOCKET,
                      help="CNI daemon socket the plugins try first (default %(default)s)")
    inst.add_argument("--native", dest="native", action="store_true", default=None,
                      help="install the C shim (default when a C compiler is present)")
    inst.add_argument("--no-native", dest="native", action="store_false",
                      help="install Python scripts only")
    inst.set_defaults(func=_cni_install)
    dmn = cni.add_parser("daemon", help="serve CNI requests with imports preloaded")
    dmn.add_argument("--socket", default=DEFAULT_SOCKET)
    dmn.set_defaults(func=_cni_daemon)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(stream=sys.stderr, level=level, format="%(name)s %(levelname)s %(message)s")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
