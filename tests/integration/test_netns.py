"""podnet.netns: named namespaces and per-thread entry (root; everything removed afterwards)."""
from __future__ import annotations

import os
import subprocess
import threading
import uuid

import pytest

from podnet import netns
from tests.conftest import NS_PREFIX


def ino(ref: str | int) -> tuple[int, int]:
    st = os.fstat(ref) if isinstance(ref, int) else os.stat(ref)
    return st.st_dev, st.st_ino


def thread_ns() -> tuple[int, int]:
    return ino("/proc/thread-self/ns/net")


@pytest.fixture
def fresh_name():
    """A unique name for netns.create(); removed (with netns.remove) whatever happens."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    name = f"{NS_PREFIX}own-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        netns.remove(name)


def mounted(path: str) -> bool:
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def test_create_and_remove_leave_nothing(fresh_name):
    before = thread_ns()
    path = netns.create(fresh_name)
    assert path == netns.path(fresh_name) == f"/run/netns/{fresh_name}"
    assert thread_ns() == before, "create() must not move the calling thread"
    assert netns.exists(fresh_name)
    assert fresh_name in netns.list_names()
    assert mounted(path)
    assert not netns.same_netns(path, "/proc/thread-self/ns/net")
    # iproute2 sees and can use it
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    assert fresh_name in listed.stdout
    links = subprocess.run(["ip", "-n", fresh_name, "-o", "link"], capture_output=True,
                           text=True, check=True).stdout
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]

    with pytest.raises(FileExistsError):
        netns.create(fresh_name)
    assert netns.exists(fresh_name)  # the failed create did not damage it

    netns.remove(fresh_name)
    assert not os.path.exists(path)
    assert not mounted(path)
    assert not netns.exists(fresh_name)
    assert fresh_name not in netns.list_names()
    netns.remove(fresh_name)  # missing: no error


def test_entered_switches_and_restores_the_thread(netns_factory):
    name = netns_factory("netns")
    target = ino(netns.path(name))
    before = thread_ns()
    with netns.entered(name):
        assert thread_ns() == target
        out = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
        assert [line.split(":")[1].strip() for line in out.stdout.splitlines()] == ["lo"]
    assert thread_ns() == before


def test_entered_restores_on_exception_and_nests(netns_factory):
    a, b = netns_factory("netns-a"), netns_factory("netns-b")
    before = thread_ns()
    with pytest.raises(RuntimeError, match="boom"):
        with netns.entered(netns.path(a)):
            with netns.entered(b):
                assert thread_ns() == ino(netns.path(b))
            assert thread_ns() == ino(netns.path(a))
            raise RuntimeError("boom")
    assert thread_ns() == before


def test_entered_by_fd_leaves_fd_open(netns_factory):
    name = netns_factory("netns-fd")
    fd = netns.open_fd(name)
    try:
        with netns.entered(fd):
            assert thread_ns() == ino(fd)
        os.fstat(fd)  # still open: entered() does not own a caller's fd
        assert netns.same_netns(fd, name)
    finally:
        os.close(fd)


def test_entered_only_affects_the_current_thread(netns_factory):
    name = netns_factory("netns-thr")
    main_before = thread_ns()
    seen: dict[str, tuple[int, int]] = {}
    inside, release = threading.Event(), threading.Event()

    def worker() -> None:
        with netns.entered(name):
            seen["worker"] = thread_ns()
            inside.set()
            release.wait(30)
        seen["worker_after"] = thread_ns()

    t = threading.Thread(target=worker)
    t.start()
    try:
        assert inside.wait(30)
        assert thread_ns() == main_before
    finally:
        release.set()
        t.join()
    assert seen["worker"] == ino(netns.path(name))
    assert seen["worker_after"] == main_before


def test_missing_or_non_netns_paths_raise_netns_not_found(tmp_path):
    before = thread_ns()
    with pytest.raises(netns.NetnsNotFound) as exc:
        with netns.entered("/run/netns/pn-test-definitely-missing"):
            pass
    assert isinstance(exc.value, FileNotFoundError)
    plain = tmp_path / "not-a-netns"
    plain.write_text("")
    with pytest.raises(netns.NetnsNotFound, match="not a network namespace"):
        with netns.entered(str(plain)):
            pass
    with pytest.raises(netns.NetnsNotFound):  # a namespace, but not a network one
        with netns.entered("/proc/self/ns/uts"):
            pass
    assert thread_ns() == before
    assert not netns.exists(str(plain))
    with pytest.raises(netns.NetnsNotFound):
        netns.open_fd("pn-test-definitely-missing")
    with pytest.raises(netns.NetnsNotFound):
        netns.preexec("pn-test-definitely-missing")


def test_current_fd_and_same_netns(netns_factory):
    name = netns_factory("netns-same")
    fd = netns.current_fd()
    try:
        assert netns.same_netns(fd, "/proc/self/ns/net")
        assert not netns.same_netns(fd, name)
        with netns.entered(name):
            inner = netns.current_fd()
        try:
            assert netns.same_netns(inner, name)
        finally:
            os.close(inner)
    finally:
        os.close(fd)


def test_preexec_runs_the_child_in_the_namespace(netns_factory):
    name = netns_factory("netns-exec")
    subprocess.run(["ip", "-n", name, "link", "add", "marker0", "type", "bridge"], check=True)
    out = subprocess.run(["stat", "-L", "-c", "%d %i", "/proc/self/ns/net"],
                         preexec_fn=netns.preexec(name), capture_output=True, text=True,
                         check=True).stdout.split()
    st = os.stat(netns.path(name))
    assert int(out[1]) == st.st_ino
    links = subprocess.run(["ip", "-o", "link"], preexec_fn=netns.preexec(netns.path(name)),
                           capture_output=True, text=True, check=True).stdout
    assert "marker0" in links
    mine = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True).stdout
    assert "marker0" not in mine
