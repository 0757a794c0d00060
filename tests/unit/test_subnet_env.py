"""subnet.env: byte-exact as upstream writes it, atomic replacement, and reading it back."""
from __future__ import annotations

import os
import stat
from ipaddress import IPv4Interface, IPv4Network

import pytest

from flannel_py.subnet import subnet_env as se


def test_render_is_byte_exact():
    text = se.render_subnet_env(IPv4Network("10.244.0.0/16"), IPv4Network("10.244.1.0/24"), 1450, False)
    assert text == ("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\n"
                    "FLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n")
    text = se.render_subnet_env(IPv4Network("10.5.0.0/23"), IPv4Network("10.5.1.128/25"), 1472, True)
    assert text == ("FLANNEL_NETWORK=10.5.0.0/23\nFLANNEL_SUBNET=10.5.1.129/25\n"
                    "FLANNEL_MTU=1472\nFLANNEL_IPMASQ=true\n")


def test_write_creates_dir_mode_0644_and_leaves_no_temp(tmp_path):
    path = tmp_path / "run" / "flannel" / "subnet.env"
    old = os.umask(0o077)
    try:
        se.write_subnet_env(str(path), IPv4Network("10.244.0.0/16"), IPv4Network("10.244.7.0/24"), 1500, True)
    finally:
        os.umask(old)
    assert path.read_bytes() == (b"FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.7.1/24\n"
                                 b"FLANNEL_MTU=1500\nFLANNEL_IPMASQ=true\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(path.parent) == ["subnet.env"]


def test_rewrite_replaces_the_inode(tmp_path):
    path = tmp_path / "subnet.env"
    se.write_subnet_env(str(path), IPv4Network("10.244.0.0/16"), IPv4Network("10.244.7.0/24"), 1500, False)
    before = path.stat().st_ino
    with open(path) as reader:          # a reader holding the old file keeps a whole file
        se.write_subnet_env(str(path), IPv4Network("10.244.0.0/16"), IPv4Network("10.244.8.0/24"), 1450, False)
        assert "10.244.7.1/24" in reader.read()
    assert path.stat().st_ino != before
    assert se.read_subnet_env(str(path)).subnet == IPv4Interface("10.244.8.1/24")


def test_read_back(tmp_path):
    path = tmp_path / "subnet.env"
    se.write_subnet_env(str(path), IPv4Network("10.244.0.0/16"), IPv4Network("10.244.7.0/24"), 1450, True)
    env = se.read_subnet_env(str(path))
    assert env == se.SubnetEnv(IPv4Network("10.244.0.0/16"), IPv4Interface("10.244.7.1/24"), 1450, True)
    assert se.previous_subnet(str(path)) == IPv4Network("10.244.7.0/24")


def test_reader_accepts_godotenv_forms():
    env = se.parse_subnet_env('# written by hand\nexport FLANNEL_NETWORK="10.1.0.0/16"\n'
                              "FLANNEL_SUBNET='10.1.2.1/24'\nFLANNEL_MTU=1400 # comment\n"
                              "FLANNEL_IPMASQ=false\n")
    assert env == se.SubnetEnv(IPv4Network("10.1.0.0/16"), IPv4Interface("10.1.2.1/24"), 1400, False)


@pytest.mark.parametrize("text, message", [
    ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n",
     "FLANNEL_SUBNET not found in subnet file"),
    ("FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=big\nFLANNEL_IPMASQ=false\n",
     "malformed subnet file"),
])
def test_reader_errors(text, message):
    with pytest.raises(se.SubnetEnvError, match=message):
        se.parse_subnet_env(text)


def test_previous_subnet_missing_or_ambiguous(tmp_path):
    assert se.previous_subnet(str(tmp_path / "absent.env")) is None
    p = tmp_path / "two.env"
    p.write_text("FLANNEL_SUBNET=10.1.2.1/24,10.1.3.1/24\n")
    assert se.previous_subnet(str(p)) is None
    p.write_text("FLANNEL_NETWORK=10.1.0.0/16\n")
    assert se.previous_subnet(str(p)) is None
