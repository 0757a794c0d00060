"""flanneld flags (Go syntax, upstream names) and FLANNELD_* environment variables."""
from __future__ import annotations

import pytest

from flannel_py.cli import Options, UsageError, parse_args
from flannel_py.healthz import respond


def test_defaults():
    o = parse_args([], {})
    assert o == Options()
    assert o.etcd_endpoints == ["http://127.0.0.1:4001", "http://127.0.0.1:2379"]
    assert (o.etcd_prefix, o.subnet_file, o.subnet_lease_renew_margin) == \
        ("/coreos.com/network", "/run/flannel/subnet.env", 60)
    assert (o.healthz_ip, o.healthz_port, o.iptables_resync, o.ip_masq) == ("0.0.0.0", 0, 5, False)


def test_go_style_flags():
    o = parse_args(["-etcd-endpoints=http://a:2379,http://b:2379", "--iface", "eth1", "-iface=10.0.0.1",
                    "-ip-masq", "--public-ip=1.2.3.4", "-v=2", "--healthz-port", "10756",
                    "--etcd-cafile=/ca", "--etcd-certfile=/c", "--etcd-keyfile=/k"], {})
    assert o.etcd_endpoints == ["http://a:2379", "http://b:2379"]
    assert o.iface == ["eth1", "10.0.0.1"]
    assert (o.ip_masq, o.public_ip, o.v, o.healthz_port) == (True, "1.2.3.4", 2, 10756)
    assert (o.etcd_cafile, o.etcd_certfile, o.etcd_keyfile) == ("/ca", "/c", "/k")
    assert parse_args(["--ip-masq=false"], {}).ip_masq is False


def test_env_fills_flags_not_given():
    env = {"FLANNELD_ETCD_ENDPOINTS": "http://e:2379", "FLANNELD_IP_MASQ": "true",
           "FLANNELD_SUBNET_FILE": "/tmp/s.env", "FLANNELD_IFACE": "eth9",
           "FLANNELD_IPTABLES_RESYNC": "7", "FLANNELD_ETCD_PREFIX": ""}
    o = parse_args(["--subnet-file=/x.env"], env)
    assert o.etcd_endpoints == ["http://e:2379"]
    assert (o.ip_masq, o.subnet_file, o.iface, o.iptables_resync) == (True, "/x.env", ["eth9"], 7)
    assert o.etcd_prefix == "/coreos.com/network"      # empty env var: ignored, as upstream


@pytest.mark.parametrize("argv,env", [
    (["--subnet-lease-renew-margin=0"], {}),
    (["--subnet-lease-renew-margin=1440"], {}),
    ([], {"FLANNELD_HEALTHZ_PORT": "x"}),
    ([], {"FLANNELD_IP_MASQ": "maybe"}),
    (["--no-such-flag"], {}),
])
def test_bad_input(argv, env):
    with pytest.raises(UsageError):
        parse_args(argv, env)


def test_healthz_responses():
    assert respond("/healthz", False) == (200, b"flanneld is running")
    assert respond("/readyz", True) == (200, b"flanneld is ready")
    assert respond("/readyz", False) == (503, b"flanneld is not ready yet")
    assert respond("/other", True)[0] == 404
