"""Fixtures for the object store and the podnet command against a real etcd.

etcd is flannel's test etcd (tests/integration/flannel/conftest.py): it runs in a
namespace of its own, reachable only from a client namespace.  ``lab`` writes a lab state
file naming that client namespace, so ``podnet --lab NAME`` reaches etcd from the root
namespace exactly as it would reach a real lab's.
"""
from __future__ import annotations

import json
import os

import pytest

from tests.integration.flannel.conftest import etcd  # noqa: F401  (the fixture)


@pytest.fixture
def etcd_store(etcd):  # noqa: F811
    """A podnet.etcd.Store whose requests run in the client namespace."""
    from podnet.cluster import NetnsScope, NetnsStore
    from podnet.etcd import Store

    return NetnsStore(Store([etcd.url], timeout=3), NetnsScope(etcd.client_ns))


@pytest.fixture
def lab(etcd, tmp_path, monkeypatch):  # noqa: F811
    """A lab state file for ``--lab test`` pointing at the etcd fixture; returns the name."""
    root = tmp_path / "labs"
    (root / "test").mkdir(parents=True)
    (root / "test" / "state.json").write_text(json.dumps({
        "name": "test", "etcd_endpoints": [etcd.url], "etcd_netns": etcd.etcd_ns,
        "client_netns": etcd.client_ns}))
    monkeypatch.setenv("PODNET_LAB_ROOT", str(root))
    monkeypatch.delenv("PODNET_ETCD_ENDPOINTS", raising=False)
    monkeypatch.delenv("PODNET_LAB", raising=False)
    return "test"


EXAMPLES = os.path.join(os.path.dirname(__file__), "..", "..", "..", "examples")
