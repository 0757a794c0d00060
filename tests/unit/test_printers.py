"""kubectl-like tables: golden outputs."""
from __future__ import annotations

import ipaddress
import json

import pytest
import yaml

from flannel_py.subnet.registry import Lease, LeaseAttrs
from podnet import printers

NOW = 1_700_000_000.0            # 2023-11-14T22:13:20Z
CREATED = "2023-11-14T22:08:20Z"  # five minutes before NOW


def meta(name, ns="default", created=CREATED, **extra):
    return {"name": name, "namespace": ns, "creationTimestamp": created, **extra}


@pytest.mark.parametrize("seconds,text", [
    (-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (125, "2m5s"),
    (600, "10m"), (179 * 60, "179m"), (3 * 3600, "3h"), (5 * 3600 + 120, "5h2m"), (20 * 3600, "20h"),
    (3 * 86400 + 4 * 3600, "3d4h"), (40 * 86400, "40d"), (800 * 86400, "2y70d"), (9 * 365 * 86400, "9y"),
])
def test_human_duration(seconds, text):
    assert printers.human_duration(seconds) == text


PODS = [
    {"metadata": meta("web-1"), "spec": {"containers": [{"name": "c"}], "nodeName": "node-1"},
     "status": {"phase": "Running", "podIP": "10.244.1.2",
                "containerStatuses": [{"ready": True, "restartCount": 2}]}},
    {"metadata": meta("pending-pod-with-long-name", ns="team-a"),
     "spec": {"containers": [{"name": "a"}, {"name": "b"}]}},
]


def test_pods_table():
    assert printers.object_table("pods", PODS, NOW) == (
        "NAME                         READY   STATUS    RESTARTS   AGE\n"
        "web-1                        1/1     Running   2          5m\n"
        "pending-pod-with-long-name   0/2     Pending   0          5m\n")


def test_pods_wide_all_namespaces():
    assert printers.object_table("pods", PODS, NOW, wide=True, all_namespaces=True) == (
        "NAMESPACE   NAME                         READY   STATUS    RESTARTS   AGE   IP           NODE\n"
        "default     web-1                        1/1     Running   2          5m    10.244.1.2   node-1\n"
        "team-a      pending-pod-with-long-name   0/2     Pending   0          5m    <none>       <none>\n")


SERVICES = [
    {"metadata": meta("hostnames"), "spec": {"type": "ClusterIP", "clusterIP": "10.96.152.205",
                                             "selector": {"app": "hostnames"},
                                             "ports": [{"port": 80, "protocol": "TCP"}]}},
    {"metadata": meta("np"), "spec": {"type": "NodePort", "clusterIP": "10.96.0.9",
                                      "ports": [{"port": 80, "nodePort": 30080, "protocol": "TCP"},
                                                {"port": 53, "protocol": "UDP", "nodePort": 30053}]}},
    {"metadata": meta("headless"), "spec": {"clusterIP": "None", "ports": [{"port": 9376}]}},
    {"metadata": meta("db"), "spec": {"type": "ExternalName", "externalName": "my.database.example.com"}},
    {"metadata": meta("lb"), "spec": {"type": "LoadBalancer", "clusterIP": "10.96.0.10",
                                      "ports": [{"port": 443, "nodePort": 31443}]}},
]


def test_services_table():
    assert printers.object_table("services", SERVICES, NOW, wide=True) == (
        "NAME        TYPE           CLUSTER-IP      EXTERNAL-IP               PORT(S)                     AGE   SELECTOR\n"
        "hostnames   ClusterIP      10.96.152.205   <none>                    80/TCP                      5m    app=hostnames\n"
        "np          NodePort       10.96.0.9       <none>                    80:30080/TCP,53:30053/UDP   5m    <none>\n"
        "headless    ClusterIP      None            <none>                    9376/TCP                    5m    <none>\n"
        "db          ExternalName   <none>          my.database.example.com   <none>                      5m    <none>\n"
        "lb          LoadBalancer   10.96.0.10      <pending>                 443:31443/TCP               5m    <none>\n")


NODES = [
    {"metadata": {"name": "node-1", "creationTimestamp": "2023-11-14T20:13:20Z",
                  "labels": {"node-role.kubernetes.io/control-plane": ""}},
     "spec": {"podCIDR": "10.244.1.0/24"},
     "status": {"conditions": [{"type": "Ready", "status": "True"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.50.11"}],
                "nodeInfo": {"kubeletVersion": "podnet-0.1.0"}}},
    {"metadata": {"name": "node-2", "creationTimestamp": CREATED},
     "spec": {"unschedulable": True},
     "status": {"conditions": [{"type": "Ready", "status": "False"}],
                "addresses": [{"type": "InternalIP", "address": "192.168.50.12"}]}},
    {"metadata": {"name": "node-3", "creationTimestamp": CREATED}},
]


def test_nodes_table_wide_takes_pod_cidr_from_the_flannel_lease():
    leases = {"192.168.50.12": "10.244.7.0/24"}
    assert printers.object_table("nodes", NODES, NOW, wide=True, all_namespaces=True,
                                 leases=leases) == (
        "NAME     STATUS                        ROLES           AGE    VERSION        INTERNAL-IP     POD-CIDR\n"
        "node-1   Ready                         control-plane   120m   podnet-0.1.0   192.168.50.11   10.244.1.0/24\n"
        "node-2   NotReady,SchedulingDisabled   <none>          5m                    192.168.50.12   10.244.7.0/24\n"
        "node-3   Unknown                       <none>          5m                    <none>          <none>\n")


def test_namespaces_endpointslices_netpols():
    assert printers.object_table("namespaces", [{"metadata": {"name": "default", "creationTimestamp": CREATED}}],
                                 NOW) == "NAME      STATUS   AGE\ndefault   Active   5m\n"
    es = [{"metadata": meta("hostnames-abc"), "addressType": "IPv4",
           "ports": [{"port": 9376}],
           "endpoints": [{"addresses": [f"10.244.{i}.5"]} for i in range(5)]},
          {"metadata": meta("empty"), "addressType": "IPv4"}]
    assert printers.object_table("endpointslices", es, NOW) == (
        "NAME            ADDRESSTYPE   PORTS     ENDPOINTS                                      AGE\n"
        "hostnames-abc   IPv4          9376      10.244.0.5,10.244.1.5,10.244.2.5 + 2 more...   5m\n"
        "empty           IPv4          <unset>   <unset>                                        5m\n")
    np = [{"metadata": meta("db"), "spec": {"podSelector": {
        "matchLabels": {"role": "db", "app": "x"},
        "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                             {"key": "canary", "operator": "DoesNotExist"}]}}},
          {"metadata": meta("all"), "spec": {"podSelector": {}}}]
    assert printers.object_table("networkpolicies", np, NOW) == (
        "NAME   POD-SELECTOR                          AGE\n"
        "db     app=x,role=db,tier in (a,b),!canary   5m\n"
        "all    <none>                                5m\n")


def test_subnets_table_and_json():
    leases = [
        Lease(ipaddress.ip_network("10.244.2.0/24"),
              LeaseAttrs(ipaddress.ip_address("192.168.50.12"), "vxlan",
                         {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"}), "k2", 0x20),
        Lease(ipaddress.ip_network("10.244.1.0/24"),
              LeaseAttrs(ipaddress.ip_address("192.168.50.11"), "udp"), "k1", 0),
        Lease(ipaddress.ip_network("10.244.10.0/24"),
              LeaseAttrs(ipaddress.ip_address("192.168.50.13"), "host-gw"), "k3", 0x30),
    ]
    rows = printers.subnet_rows(leases, {0x20: 86399, 0x30: -1})
    assert printers.subnet_table(rows) == (
        "SUBNET           PUBLIC-IP       BACKEND   BACKEND-DATA                      TTL\n"
        "10.244.1.0/24    192.168.50.11   udp       <none>                            <none>\n"
        "10.244.2.0/24    192.168.50.12   vxlan     VNI=1,VtepMAC=aa:bb:cc:dd:ee:02   23h\n"
        "10.244.10.0/24   192.168.50.13   host-gw   <none>                            <expired>\n")
    assert json.loads(printers.render(rows, "json"))[1] == {
        "subnet": "10.244.2.0/24", "publicIP": "192.168.50.12", "backendType": "vxlan",
        "backendData": {"VNI": 1, "VtepMAC": "aa:bb:cc:dd:ee:02"}, "ttl": 86399}


def test_json_and_yaml_lists():
    data = printers.as_list([PODS[0]])
    assert json.loads(printers.render(data, "json")) == {
        "apiVersion": "v1", "items": [PODS[0]], "kind": "List", "metadata": {"resourceVersion": ""}}
    assert yaml.safe_load(printers.render(data, "yaml")) == data
    assert printers.render(PODS[0], "json").startswith('{\n    "metadata": {')


def test_render_table_no_trailing_spaces():
    text = printers.render_table(["A", "B"], [["x", ""], ["longer", "y"]])
    assert text == "A        B\nx\nlonger   y\n"
