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
    p.add_argument("-v", "--verbose", action="count", default=0,
                   help="more log output; tracebacks on errors")
    from podnet.cluster import add_cluster_options
    add_cluster_options(p)
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
    from podnet import cli_lab, cli_objects
    cli_lab.register(sub)
    cli_objects.register(sub)
    try:
        from podnet import cli_pods
    except ImportError as exc:
        if exc.name != "podnet.cli_pods":
            raise
    else:
        cli_pods.register(sub)
    return p


def _report(exc: BaseException, verbose: int) -> int:
    """One line per problem on stderr (the traceback too under -v); exit status 1."""
    import traceback

    from podnet.manifests import ManifestError
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)
    if isinstance(exc, ManifestError):
        for line in exc.problems:
            print(f"error: {line}", file=sys.stderr)
        return 1
    text = str(exc).strip().splitlines()
    msg = text[0] if text else type(exc).__name__
    if not _is_expected(exc):
        msg = f"{type(exc).__name__}: {msg}"
    print(f"error: {msg}", file=sys.stderr)
    return 1


def _is_expected(exc: BaseException) -> bool:
    from podnet.cli_objects import CommandError
    from podnet.cluster import ClusterError
    from podnet.etcd import StoreError
    from podnet.lab import LabError
    from podnet.store import ObjectStoreError
    return isinstance(exc, (CommandError, ClusterError, StoreError, ObjectStoreError, OSError,
                            LabError))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(stream=sys.stderr, level=level, format="%(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # noqa: BLE001 - the command's one-line error
        return _report(exc, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
