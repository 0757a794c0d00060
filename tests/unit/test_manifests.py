"""Manifest loading and validation: every bad-manifest case names file, object and field."""
from __future__ import annotations

import io
import textwrap

import pytest

from podnet import manifests
from podnet.manifests import Document, ManifestError, check_node_names, load, normalize, prepare, validate

POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: c
    image: busybox
    ports:
    - containerPort: 8080
"""


def docs_of(text: str, name: str = "x.yaml") -> list[Document]:
    return manifests._parse(name, textwrap.dedent(text))


def problems(text: str) -> list[str]:
    return validate(docs_of(text))


def test_valid_pod_has_no_problems():
    assert problems(POD) == []


BAD = [
    # (case, manifest, expected problem lines)
    ("unknown kind",
     "apiVersion: v1\nkind: Deploymnt\nmetadata: {name: web}\n",
     ['x.yaml: Deploymnt "web" : kind: Unsupported value: "Deploymnt": supported values: '
      '"EndpointSlice", "Namespace", "NetworkPolicy", "Node", "Pod", "Service"']),
    ("missing kind",
     "apiVersion: v1\nmetadata: {name: web}\n",
     ['x.yaml: object "web" (document 1) : kind: Required value']),
    ("wrong apiVersion",
     "apiVersion: apps/v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: c, image: i}]}\n",
     ['x.yaml: Pod "web" : apiVersion: Unsupported value: "apps/v1": supported values: "v1"']),
    ("missing name",
     "apiVersion: v1\nkind: Pod\nmetadata: {labels: {a: b}}\nspec: {containers: [{name: c, image: i}]}\n",
     ["x.yaml: Pod (document 1) : metadata.name: Required value: name is required"]),
    ("name not a DNS subdomain",
     "apiVersion: v1\nkind: Pod\nmetadata: {name: Web_1}\nspec: {containers: [{name: c, image: i}]}\n",
     ['x.yaml: Pod "Web_1" : metadata.name: Invalid value: "Web_1": a lowercase RFC 1123 subdomain '
      "must consist of lower case alphanumeric characters, '-' or '.', and must start and end "
      "with an alphanumeric character"]),
    ("service name must be a DNS-1035 label",
     "apiVersion: v1\nkind: Service\nmetadata: {name: 1svc}\nspec: {ports: [{port: 80}]}\n",
     ['x.yaml: Service "1svc" : metadata.name: Invalid value: "1svc": a DNS-1035 label must '
      "consist of lower case alphanumeric characters or '-', start with an alphabetic "
      "character, and end with an alphanumeric character"]),
    ("namespace name is a label (no dots)",
     "apiVersion: v1\nkind: Namespace\nmetadata: {name: a.b}\n",
     ['x.yaml: Namespace "a.b" : metadata.name: Invalid value: "a.b": a lowercase RFC 1123 '
      "label must consist of lower case alphanumeric characters or '-', and must start and "
      "end with an alphanumeric character"]),
    ("namespace on a cluster-scoped kind",
     "apiVersion: v1\nkind: Node\nmetadata: {name: node-1, namespace: default}\n",
     ['x.yaml: Node "node-1" : metadata.namespace: Forbidden: not allowed on this type']),
    ("bad port",
     POD.replace("8080", "70000"),
     ['x.yaml: Pod "web" : spec.containers[0].ports[0].containerPort: Invalid value: 70000: '
      "must be between 1 and 65535"]),
    ("port as a string",
     POD.replace("8080", '"http"'),
     ['x.yaml: Pod "web" : spec.containers[0].ports[0].containerPort: Invalid value: "http": '
      "must be an integer between 1 and 65535"]),
    ("bad protocol",
     POD.replace("- containerPort: 8080", "- {containerPort: 8080, protocol: tcp}"),
     ['x.yaml: Pod "web" : spec.containers[0].ports[0].protocol: Unsupported value: "tcp": '
      'supported values: "TCP", "UDP", "SCTP"']),
    ("container without image",
     "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {containers: [{name: c}]}\n",
     ['x.yaml: Pod "web" : spec.containers[0].image: Required value']),
    ("pod without containers",
     "apiVersion: v1\nkind: Pod\nmetadata: {name: web}\nspec: {}\n",
     ['x.yaml: Pod "web" : spec.containers: Required value']),
    ("container port name too long",
     POD.replace("- containerPort: 8080", "- {containerPort: 8080, name: averyveryverylongname}"),
     ['x.yaml: Pod "web" : spec.containers[0].ports[0].name: Invalid value: '
      '"averyveryverylongname": must be no more than 15 characters']),
    ("label value not a string",
     POD.replace("{app: web}", "{app: web, tier: 1}"),
     ['x.yaml: Pod "web" : metadata.labels[tier]: Invalid value: 1: label values must be strings '
      "(quote it)"]),
    ("bad selector operator",
     """\
     apiVersion: networking.k8s.io/v1
     kind: NetworkPolicy
     metadata: {name: np}
     spec:
       podSelector:
         matchExpressions: [{key: app, operator: Equals, values: [web]}]
     """,
     ['x.yaml: NetworkPolicy "np" : spec.podSelector.matchExpressions[0].operator: Unsupported '
      'value: "Equals": supported values: "In", "NotIn", "Exists", "DoesNotExist"']),
    ("selector In without values",
     """\
     apiVersion: networking.k8s.io/v1
     kind: NetworkPolicy
     metadata: {name: np}
     spec:
       podSelector:
         matchExpressions: [{key: app, operator: In}]
     """,
     ['x.yaml: NetworkPolicy "np" : spec.podSelector.matchExpressions[0].values: Required value: '
      "must be specified when `operator` is 'In' or 'NotIn'"]),
    ("bad selector label key",
     """\
     apiVersion: networking.k8s.io/v1
     kind: NetworkPolicy
     metadata: {name: np}
     spec:
       podSelector: {matchLabels: {"-app": web}}
     """,
     ['x.yaml: NetworkPolicy "np" : spec.podSelector.matchLabels: Invalid value: "-app": name '
      "part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
      "with an alphanumeric character"]),
    ("ipBlock except outside cidr",
     """\
     apiVersion: networking.k8s.io/v1
     kind: NetworkPolicy
     metadata: {name: np}
     spec:
       podSelector: {}
       ingress:
       - from:
         - ipBlock: {cidr: 10.0.0.0/16, except: [10.1.0.0/24]}
     """,
     ['x.yaml: NetworkPolicy "np" : spec.ingress[0].from[0].ipBlock.except[0]: Invalid value: '
      '"10.1.0.0/24": must be a strict subset of `cidr`']),
    ("ipBlock bad cidr",
     """\
     apiVersion: networking.k8s.io/v1
     kind: NetworkPolicy
     metadata: {name: np}
     spec:
       podSelector: {}
       egress:
       - to:
         - ipBlock: {cidr: 10.0.0.300/16}
     """,
     ['x.yaml: NetworkPolicy "np" : spec.egress[0].to[0].ipBlock.cidr: Invalid value: '
      '"10.0.0.300/16": must be a valid CIDR (e.g. 10.0.0.0/16)']),
    ("ipBlock together with a selector",
     """\
     apiVersion: networking.k8s.io/v1
     kind: NetworkPolicy
     metadata: {name: np}
     spec:
       podSelector: {}
       ingress:
       - from:
         - {ipBlock: {cidr: 10.0.0.0/16}, podSelector: {}}
     """,
     ['x.yaml: NetworkPolicy "np" : spec.ingress[0].from[0]: Forbidden: may not specify both '
      "ipBlock and another peer"]),
    ("service: duplicate port, missing port name",
     """\
     apiVersion: v1
     kind: Service
     metadata: {name: svc}
     spec:
       ports: [{port: 80}, {port: 80, name: b}]
     """,
     ['x.yaml: Service "svc" : spec.ports[0].name: Required value',
      'x.yaml: Service "svc" : spec.ports[1]: Duplicate value: "80/TCP"']),
    ("service: duplicate port names",
     """\
     apiVersion: v1
     kind: Service
     metadata: {name: svc}
     spec:
       ports: [{port: 80, name: a}, {port: 81, name: a}]
     """,
     ['x.yaml: Service "svc" : spec.ports[1].name: Duplicate value: "a"']),
    ("service: bad clusterIP, type, nodePort",
     """\
     apiVersion: v1
     kind: Service
     metadata: {name: svc}
     spec:
       clusterIP: 10.96.0.300
       type: NodePort
       ports: [{port: 80, nodePort: 80}]
     """,
     ['x.yaml: Service "svc" : spec.clusterIP: Invalid value: "10.96.0.300": must be a valid IP '
      'address, "None" or empty',
      'x.yaml: Service "svc" : spec.ports[0].nodePort: Invalid value: 80: provided port is not in '
      "the valid range. The range of valid ports is 30000-32767"]),
    ("service: unknown type",
     "apiVersion: v1\nkind: Service\nmetadata: {name: svc}\nspec: {type: Foo, ports: [{port: 1}]}\n",
     ['x.yaml: Service "svc" : spec.type: Unsupported value: "Foo": supported values: '
      '"ClusterIP", "NodePort", "LoadBalancer", "ExternalName"']),
    ("service: nodePort on ClusterIP",
     "apiVersion: v1\nkind: Service\nmetadata: {name: svc}\nspec: {ports: [{port: 1, nodePort: 30001}]}\n",
     ['x.yaml: Service "svc" : spec.ports[0].nodePort: Forbidden: may not be used when `type` '
      "is 'ClusterIP'"]),
    ("service: bad targetPort name",
     "apiVersion: v1\nkind: Service\nmetadata: {name: svc}\nspec: {ports: [{port: 1, targetPort: web--x}]}\n",
     ['x.yaml: Service "svc" : spec.ports[0].targetPort: Invalid value: "web--x": must not '
      "contain consecutive hyphens"]),
    ("endpointslice address of the wrong family",
     """\
     apiVersion: discovery.k8s.io/v1
     kind: EndpointSlice
     metadata: {name: es}
     addressType: IPv4
     endpoints: [{addresses: ["fd00::1"]}]
     ports: [{port: 0}]
     """,
     ['x.yaml: EndpointSlice "es" : endpoints[0].addresses[0]: Invalid value: "fd00::1": must be '
      "a valid IPv4 address",
      'x.yaml: EndpointSlice "es" : ports[0].port: Invalid value: 0: must be between 1 and '
      "65535, inclusive"]),
    ("not an object",
     "- a\n- b\n",
     ['x.yaml: document 1 : <document>: Invalid value: ["a","b"]: a manifest must be an object '
      "with apiVersion, kind and metadata"]),
]


@pytest.mark.parametrize("case,text,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_manifest_is_refused_naming_file_object_and_field(case, text, expected):
    assert problems(text) == expected


def test_duplicate_name_within_one_apply_names_both_places(tmp_path):
    (tmp_path / "a.yaml").write_text(POD)
    (tmp_path / "b.yaml").write_text(POD.replace("8080", "8081"))
    docs = load([str(tmp_path)])
    assert validate(docs) == [
        f'{tmp_path}/b.yaml: Pod "web" : metadata.name: Duplicate value: "web": also defined '
        f"in {tmp_path}/a.yaml (document 1)"]


def test_same_name_in_different_namespaces_or_kinds_is_fine():
    text = POD + "---\n" + POD.replace("name: web\n", "name: web\n  namespace: other\n") + textwrap.dedent("""\
        ---
        apiVersion: v1
        kind: Service
        metadata: {name: web}
        spec: {ports: [{port: 80}]}
        """)
    assert problems(text) == []


def test_pod_on_a_node_that_does_not_exist():
    docs = docs_of(POD.replace("spec:\n", "spec:\n  nodeName: node-9\n"))
    assert check_node_names(docs, {"node-1", "node-2"}) == [
        'x.yaml: Pod "web" : spec.nodeName: Not found: "node-9": no such Node (nodes: node-1, node-2)']
    assert check_node_names(docs, {"node-9"}) == []
    assert check_node_names(docs, set()) == []          # no nodes registered yet: not checked


def test_node_in_the_same_apply_counts():
    node = "---\napiVersion: v1\nkind: Node\nmetadata: {name: node-9}\n"
    docs = docs_of(POD.replace("spec:\n", "spec:\n  nodeName: node-9\n") + node)
    assert check_node_names(docs, {"node-1"}) == []


def test_list_items_are_expanded_and_named_by_position():
    text = textwrap.dedent("""\
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: v1, kind: Namespace, metadata: {name: team-a}}
        - {apiVersion: v1, kind: Namespace, metadata: {}}
        """)
    docs = docs_of(text)
    assert [d.item for d in docs] == [0, 1]
    assert validate(docs) == ["x.yaml: Namespace (document 1 items[1]) : metadata.name: Required "
                              "value: name is required"]


def test_directory_is_read_in_sorted_order_and_ignores_other_files(tmp_path):
    (tmp_path / "b.yml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: b}\n")
    (tmp_path / "a.json").write_text('{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}}')
    (tmp_path / "c.yaml").write_text("---\n---\napiVersion: v1\nkind: Namespace\nmetadata: {name: c}\n")
    (tmp_path / "README.md").write_text("not a manifest")
    names = [d.obj["metadata"]["name"] for d in load([str(tmp_path)])]
    assert names == ["a", "b", "c"]


def test_stdin():
    docs = load(["-"], io.StringIO(POD))
    assert docs[0].source == "-" and docs[0].obj["metadata"]["name"] == "web"


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: v1\nkind: Pod\nmetadata:\n  name: [web\n")
    with pytest.raises(ManifestError) as exc:
        load([str(bad)])
    assert exc.value.problems[0].startswith(f"{bad}: line ")
    assert "invalid YAML" in exc.value.problems[0]


def test_missing_file(tmp_path):
    with pytest.raises(ManifestError) as exc:
        load([str(tmp_path / "nope.yaml")])
    assert exc.value.problems == [f"{tmp_path}/nope.yaml: No such file or directory"]


def test_namespace_flag_conflict():
    text = POD.replace("name: web\n", "name: web\n  namespace: a\n")
    assert validate(docs_of(text), namespace="b") == [
        "x.yaml: Pod \"web\" : metadata.namespace: Invalid value: \"a\": does not match the "
        "namespace given with -n ('b')"]


def test_prepare_raises_with_every_problem_and_normalizes_valid_input():
    with pytest.raises(ManifestError) as exc:
        prepare(docs_of(POD.replace("8080", "0") + "---\nkind: Foo\napiVersion: v1\nmetadata: {name: x}\n"))
    assert len(exc.value.problems) == 2
    [pod] = prepare(docs_of(POD))
    assert pod["metadata"]["namespace"] == "default"
    assert pod["spec"]["containers"][0]["ports"][0]["protocol"] == "TCP"


def test_normalize_service_and_policy_defaults():
    svc = normalize({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"},
                     "spec": {"ports": [{"port": 80}]}}, namespace="ns1")
    assert svc["metadata"]["namespace"] == "ns1"
    assert svc["spec"]["type"] == "ClusterIP"
    assert svc["spec"]["ports"] == [{"port": 80, "protocol": "TCP", "targetPort": 80}]
    np = normalize({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                    "metadata": {"name": "p"}, "spec": {"podSelector": {}, "egress": [{}]}})
    assert np["spec"]["policyTypes"] == ["Ingress", "Egress"]


@pytest.mark.parametrize("name,ok", [
    ("http", True), ("h2c", True), ("a-b", True), ("8080", False), ("-a", False),
    ("a--b", False), ("abcdefghijklmnop", False), ("HTTP", False),
])
def test_iana_svc_name(name, ok):
    assert (manifests.iana_svc_name(name) is None) is ok


@pytest.mark.parametrize("key,ok", [
    ("app", True), ("example.com/app", True), ("a/b/c", False), ("/a", False),
    ("Example.com/app", False), ("a" * 63, True), ("a" * 64, False), ("app_1.x", True),
])
def test_qualified_name(key, ok):
    assert (manifests.qualified_name(key) is None) is ok


def test_examples_are_valid():
    import os
    root = os.path.join(os.path.dirname(__file__), "..", "..", "examples")
    for name in ("pods-on-nodes.yaml", "hostnames.yaml"):
        docs = load([os.path.join(root, name)])
        assert docs and validate(docs) == []
