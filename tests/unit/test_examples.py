"""The example conflists name only plugins podnet installs, with configs they accept."""
from __future__ import annotations

import json
import pathlib

import pytest

from cni import registry
from cni.plugins import bridge_config

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize("name", ["10-podnet.conflist", "10-flannel.conflist"])
def test_example_conflists(name):
    conf = json.loads((EXAMPLES / name).read_text())
    assert conf["cniVersion"] == "1.0.0" and conf["plugins"]
    for plugin in conf["plugins"]:
        assert plugin["type"] in registry.PLUGINS
        if plugin["type"] == "bridge":
            c = bridge_config.parse({**plugin, "name": conf["name"]}, {})
            assert c.is_gateway and c.ip_masq and c.ipam_type == "host-local"
