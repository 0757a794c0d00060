"""Shared fixtures. Kernel work happens only in namespaces made here and removed in finally."""
from __future__ import annotations

import os
import subprocess

import pytest

from podnet.netns import Scratch

NS_PREFIX = "pn-test-"


def _need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to create network namespaces")


class NetnsFactory(Scratch):
    """Creates named network namespaces and removes them all at the end."""

    def __init__(self) -> None:
        super().__init__(NS_PREFIX)


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
