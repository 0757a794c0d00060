"""Fixtures for driving CNI plugins through libcni: the Go driver and the plugin dirs."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from tests.cnitool import (
    GO_PLUGIN_DIR, PLUGINS, PodnetCniMissing, build_driver, install_podnet_plugins,
)

PODNET_NOT_INSTALLED = "podnet plugins not installed yet"


class Impl(NamedTuple):
    """One set of CNI plugins: "go" (the reference in /usr/lib/cni) or "podnet"."""

    name: str
    dir: Path


@pytest.fixture(scope="session")
def cnidriver(tmp_path_factory) -> Path:
    """tests/libcni/driver.go built once per session against Debian's libcni."""
    if shutil.which("go") is None:
        pytest.skip("`go` is not installed (Debian: golang-go + golang-github-appc-cni-dev)")
    try:
        return build_driver(tmp_path_factory.mktemp("cnidriver"))
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"building the libcni driver failed:\n{exc.stderr}")


@pytest.fixture(scope="session")
def go_plugins() -> Path:
    missing = [p for p in PLUGINS if not (GO_PLUGIN_DIR / p).exists()]
    if missing:
        pytest.skip(f"Go reference plugins {missing} missing in {GO_PLUGIN_DIR} "
                    "(Debian: containernetworking-plugins)")
    return GO_PLUGIN_DIR


@pytest.fixture(scope="session")
def podnet_plugins(tmp_path_factory) -> Path:
    """podnet's plugins, installed by `podnet cni install --dir <tmp>`."""
    # Guard while the plugins are being written: skip only while `podnet cni install` does
    # not exist; once it does, a failing install fails the tests. The lead removes the guard.
    try:
        return install_podnet_plugins(tmp_path_factory.mktemp("podnet-cni") / "bin")
    except PodnetCniMissing as exc:
        pytest.skip(f"{PODNET_NOT_INSTALLED}: {exc}")
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(params=["go", "podnet"])
def impl(request) -> Impl:
    """Parametrizes a test over the Go reference plugins and podnet's."""
    fixture = "go_plugins" if request.param == "go" else "podnet_plugins"
    return Impl(request.param, request.getfixturevalue(fixture))
