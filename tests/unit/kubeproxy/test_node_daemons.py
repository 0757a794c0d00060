"""kube-proxy in the node's daemon list: started for --proxy-mode iptables only."""
from podnet import node


def test_kube_proxy_started_in_iptables_mode():
    cfg = node.standard("n1", "http://10.0.0.1:2379", "eth1", "10.0.0.5")
    role, argv = node.daemons(cfg, "/py")[-1]
    assert role == "kube-proxy" and argv[:3] == ["/py", "-m", "kubeproxy_py"]
    assert "--hostname-override=n1" in argv and "--run-endpoints-controller" in argv
    assert "--healthz-bind-address=10.0.0.5:10258" in argv
    assert "kube-proxy.service" in node.units(cfg, "/py")


def test_no_kube_proxy_without_iptables_mode():
    cfg = node.standard("n1", "http://10.0.0.1:2379", "eth1", proxy_mode="none")
    assert [r for r, _ in node.daemons(cfg)] == ["cni-daemon", "flanneld", "runner"]


def test_duration_flags():
    from kubeproxy_py.cli import duration
    assert duration("1s") == 1.0 and duration("100ms") == 0.1 and duration("1m30s") == 90.0
    assert duration("0") == 0.0
