"""Network namespaces: named ones kept under /run/netns (as iproute2 keeps them) and
per-thread entry.

Entering a namespace with setns() changes only the calling *thread* (a network namespace
is a per-task attribute), so ``entered()`` is safe in threaded daemons as long as the
thread restores its namespace before it does anything else — which the context manager
guarantees, exceptions included.

Import-light on purpose (CNI executables import it): ctypes is loaded only when a libc
call is really needed, and Python >= 3.12's ``os.setns``/``os.unshare`` are preferred.
"""
from __future__ import annotations

import errno
import os

__all__ = [
    "NETNS_DIR", "NetnsNotFound", "path", "create", "remove", "exists", "list_names",
    "entered", "open_fd", "current_fd", "same_netns", "preexec",
]

NETNS_DIR = "/run/netns"

CLONE_NEWNET = 0x40000000
MS_BIND = 0x1000
MS_REC = 0x4000
MS_SHARED = 1 << 20
MNT_DETACH = 2
NS_GET_NSTYPE = 0xB703  # _IO(0xb7, 0x3), linux/nsfs.h

_THREAD_NS = "/proc/thread-self/ns/net"
_O_NS = os.O_RDONLY | os.O_CLOEXEC


class NetnsNotFound(FileNotFoundError):
    """The path does not exist, or exists but is not a network namespace."""


# --- libc access (lazy) --------------------------------------------------------------

_libc_obj = None


def _libc():
    """libc with setns/unshare/mount/umount2 prototypes; loaded on first use (ctypes ≈ 2 ms)."""
    global _libc_obj
    if _libc_obj is None:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.setns.argtypes = (ctypes.c_int, ctypes.c_int)
        libc.unshare.argtypes = (ctypes.c_int,)
        libc.mount.argtypes = (ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p,
                               ctypes.c_ulong, ctypes.c_void_p)
        libc.umount2.argtypes = (ctypes.c_char_p, ctypes.c_int)
        libc.get_errno = ctypes.get_errno  # type: ignore[attr-defined]
        _libc_obj = libc
    return _libc_obj


def _raise_errno(libc, what: str, filename: str | None = None) -> None:
    code = libc.get_errno()
    raise OSError(code, f"{what}: {os.strerror(code)}", filename)


def _setns_func():
    """Return ``setns(fd)`` for network namespaces, resolved now (so it is fork-safe)."""
    if hasattr(os, "setns"):  # Python >= 3.12
        def _os_setns(fd: int) -> None:
            os.setns(fd, CLONE_NEWNET)  # type: ignore[attr-defined]
        return _os_setns
    libc = _libc()

    def _libc_setns(fd: int) -> None:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            _raise_errno(libc, "setns")
    return _libc_setns


def _unshare_net() -> None:
    if hasattr(os, "unshare"):  # Python >= 3.12
        os.unshare(CLONE_NEWNET)  # type: ignore[attr-defined]
        return
    libc = _libc()
    if libc.unshare(CLONE_NEWNET) != 0:
        _raise_errno(libc, "unshare(CLONE_NEWNET)")


def _mount(source: str, target: str, fstype: str, flags: int) -> None:
    libc = _libc()
    if libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None) != 0:
        _raise_errno(libc, f"mount {source} on {target}", target)


def _umount_detach(target: str) -> None:
    libc = _libc()
    if libc.umount2(target.encode(), MNT_DETACH) != 0:
        _raise_errno(libc, f"umount {target}", target)


# --- names and paths -------------------------------------------------------------------

def path(name_or_path: str | os.PathLike[str]) -> str:
    """A bare name means ``/run/netns/<name>``; an absolute path is kept as it is."""
    p = os.fspath(name_or_path)
    if os.path.isabs(p):
        return p
    if not p or "/" in p or p in (".", ".."):
        raise ValueError(f"invalid network namespace name {p!r}")
    return os.path.join(NETNS_DIR, p)


def _is_netns_fd(fd: int) -> bool:
    import fcntl

    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False


def exists(name: str | os.PathLike[str]) -> bool:
    """True when the name (or path) refers to a mounted network namespace."""
    try:
        fd = os.open(path(name), _O_NS)
    except OSError:
        return False
    try:
        return _is_netns_fd(fd)
    finally:
        os.close(fd)


def list_names() -> list[str]:
    """Names under /run/netns, sorted (like ``ip netns list``, without ids)."""
    try:
        return sorted(os.listdir(NETNS_DIR))
    except FileNotFoundError:
        return []


def _ensure_shared_run_dir() -> None:
    """Make /run/netns a shared mount point, as iproute2 does, so that mounts made later
    propagate into mount namespaces cloned from this one (and `ip netns` sees ours)."""
    os.makedirs(NETNS_DIR, mode=0o755, exist_ok=True)
    bound = False
    while True:
        try:
            _mount("", NETNS_DIR, "none", MS_SHARED | MS_REC)
            return
        except OSError as e:
            if e.errno != errno.EINVAL or bound:
                raise
        # EINVAL: not a mount point yet; bind it onto itself, then retry once.
        _mount(NETNS_DIR, NETNS_DIR, "none", MS_BIND | MS_REC)
        bound = True


def create(name: str) -> str:
    """Create a named network namespace like ``ip netns add``; returns its path.

    The namespace is made by a throwaway thread (unshare + bind-mount of its
    /proc/thread-self/ns/net), so the calling thread never changes namespace.
    Raises FileExistsError when the name is taken.
    """
    import threading

    target = path(name)
    if os.path.dirname(target) == NETNS_DIR:
        _ensure_shared_run_dir()
    fd = os.open(target, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0)
    os.close(fd)
    errors: list[BaseException] = []

    def work() -> None:
        try:
            _unshare_net()
            _mount(_THREAD_NS, target, "none", MS_BIND)
        except BaseException as e:  # reported to the caller below
            errors.append(e)

    worker = threading.Thread(target=work, name=f"netns-create-{name}", daemon=True)
    worker.start()
    worker.join()
    if errors:
        try:
            os.unlink(target)
        except OSError:
            pass
        raise errors[0]
    return target


def remove(name: str) -> None:
    """Delete a named namespace like ``ip netns del``; no error when it is missing."""
    target = path(name)
    try:
        _umount_detach(target)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
    try:
        os.unlink(target)
    except FileNotFoundError:
        pass


class Scratch:
    """Throwaway namespaces for tests, benchmarks and tools: ``scratch(tag) -> name`` makes
    ``<prefix><tag>-<random>`` with ``lo`` up; ``cleanup()`` (or leaving the ``with``)
    removes every one it made, newest first."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.names: list[str] = []

    def __call__(self, tag: str = "ns") -> str:
        from podnet import rtnl  # lazy: keeps this module import-light for the CNI plugins
        name = f"{self.prefix}{tag}-{os.urandom(4).hex()}"
        create(name)
        self.names.append(name)
        with rtnl.RTNL(netns=name) as h:
            h.set_link("lo", up=True)
        return name

    def cleanup(self) -> None:
        for name in reversed(self.names):
            remove(name)
        self.names.clear()

    def __enter__(self) -> "Scratch":
        return self

    def __exit__(self, *exc: object) -> None:
        self.cleanup()


# --- file descriptors and identity ------------------------------------------------------

def open_fd(ns: str | os.PathLike[str]) -> int:
    """Open a namespace file (name or path) read-only, close-on-exec."""
    p = path(ns)
    try:
        return os.open(p, _O_NS)
    except FileNotFoundError:
        raise NetnsNotFound(errno.ENOENT, "network namespace not found", p) from None


def current_fd() -> int:
    """An fd for the calling thread's current network namespace."""
    return os.open(_THREAD_NS, _O_NS)


def _stat(ref) -> os.stat_result:
    if isinstance(ref, int):
        return os.fstat(ref)
    p = path(ref)
    try:
        return os.stat(p)
    except FileNotFoundError:
        raise NetnsNotFound(errno.ENOENT, "network namespace not found", p) from None


def same_netns(a, b) -> bool:
    """True when two namespace references (names, paths or fds) are the same namespace."""
    sa, sb = _stat(a), _stat(b)
    return (sa.st_dev, sa.st_ino) == (sb.st_dev, sb.st_ino)


# --- entering ---------------------------------------------------------------------------

def _describe(ref) -> str:
    return f"fd {ref}" if isinstance(ref, int) else path(ref)


class _Entered:
    """Context manager returned by :func:`entered`."""

    __slots__ = ("_target", "_saved", "_setns")

    def __init__(self, target) -> None:
        self._target = target
        self._saved = -1
        self._setns = None

    def __enter__(self) -> None:
        target = self._target
        if isinstance(target, int):
            fd, owned = target, False
        else:
            fd, owned = open_fd(target), True
        try:
            setns = self._setns = _setns_func()
            saved = current_fd()
            try:
                setns(fd)
            except OSError as e:
                os.close(saved)
                if e.errno == errno.EINVAL:
                    raise NetnsNotFound(errno.ENOENT, "not a network namespace",
                                        _describe(target)) from None
                raise
            self._saved = saved
        finally:
            if owned:
                os.close(fd)

    def __exit__(self, *exc) -> bool:
        saved, self._saved = self._saved, -1
        try:
            self._setns(saved)  # a failure here is fatal for the thread: let it raise
        finally:
            os.close(saved)
        return False


def entered(ns) -> _Entered:
    """``with entered(ns):`` runs the block with the *current thread* inside ``ns``
    (a name, a path or an open fd) and puts the thread back where it was afterwards,
    even when the block raises. Raises :class:`NetnsNotFound` for a missing path or a
    file that is not a network namespace."""
    return _Entered(ns)


def preexec(ns):
    """A ``preexec_fn`` for subprocess that moves the child into ``ns`` before exec.

    Everything that could fail or import is done here, in the parent; the returned
    function only opens the file and calls setns (fork-safe)."""
    setns = _setns_func()
    if isinstance(ns, int):
        def _enter_fd() -> None:
            setns(ns)
        return _enter_fd
    p = path(ns)
    if not os.path.exists(p):
        raise NetnsNotFound(errno.ENOENT, "network namespace not found", p)

    def _enter_path() -> None:
        fd = os.open(p, _O_NS)
        try:
            setns(fd)
        finally:
            os.close(fd)
    return _enter_path
