"""Shared fixtures. Kernel work happens only in namespaces made here and removed in finally."""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

NS_PREFIX = "pn-test-"


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")


class NetnsFactory:
    """Creates named network namespaces (``ip netns add``) and removes them all at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, tag: str = "ns") -> str:
        name = f"{NS_PREFIX}{tag}-{uuid.uuid4().hex[:8]}"
        subprocess.run(["ip", "netns", "add", name], check=True)
        self.names.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    def cleanup(self) -> None:
        for name in reversed(self.names):
            subprocess.run(["ip", "netns", "del", name], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.names.clear()


@pytest.fixture
def netns_factory():
    """``netns_factory(tag) -> name``; every namespace it made is deleted afterwards."""
    _need_root()
    factory = NetnsFactory()
    try:
        yield factory
    finally:
        factory.cleanup()


def ns_run(ns: str, argv: list[str], **kw) -> subprocess.CompletedProcess:
    """Run a command inside namespace ``ns`` (test helper; check=True unless told)."""
    kw.setdefault("check", True)
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    return subprocess.run(["ip", "netns", "exec", ns, *argv], **kw)
