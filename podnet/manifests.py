"""Manifests: loading (files, directories, stdin, ``kind: List``) and validation as the
API server would do it, with messages that name the file, the object and the field::

    examples/x.yaml: Pod "web" : spec.containers[0].ports[0].containerPort: Invalid value: 70000: must be between 1 and 65535

Validation is pure (objects in, messages out).  Checks that need the store — a pod's
``spec.nodeName`` must name an existing Node — take the known names as an argument
(:func:`check_node_names`); the command supplies them.  :func:`normalize` fills in the
defaults the API server would (namespace, protocols, Service type and targetPort,
NetworkPolicy policyTypes) after validation.
"""
from __future__ import annotations

import copy
import ipaddress
import json
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from podnet.store import DEFAULT_NAMESPACE, KINDS

# -- name syntax (k8s.io/apimachinery/pkg/util/validation) ------------------------------

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
_IANA_SVC_NAME = re.compile(r"^[-a-z0-9]+$")

PROTOCOLS = ("TCP", "UDP", "SCTP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName")
SELECTOR_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")
NODE_PORT_RANGE = (30000, 32767)
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def dns1123_label(value: str) -> str | None:
    """None if ``value`` is a DNS-1123 label, else the API server's explanation."""
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1123_LABEL.match(value):
        return ("a lowercase RFC 1123 label must consist of lower case alphanumeric characters "
                "or '-', and must start and end with an alphanumeric character")
    return None


def dns1123_subdomain(value: str) -> str | None:
    if len(value) > 253:
        return "must be no more than 253 characters"
    if not _DNS1123_SUBDOMAIN.match(value):
        return ("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric "
                "characters, '-' or '.', and must start and end with an alphanumeric character")
    return None


def dns1035_label(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _DNS1035_LABEL.match(value):
        return ("a DNS-1035 label must consist of lower case alphanumeric characters or '-', "
                "start with an alphabetic character, and end with an alphanumeric character")
    return None


def qualified_name(value: str) -> str | None:
    """Label and annotation keys: ``[prefix/]name``."""
    prefix, _, name = value.rpartition("/")
    if "/" in value and not prefix:
        return "prefix part must be non-empty"
    if prefix:
        err = dns1123_subdomain(prefix)
        if err:
            return "prefix part " + err
    if not name:
        return "name part must be non-empty"
    if len(name) > 63:
        return "name part must be no more than 63 characters"
    if not _QUALIFIED_NAME.match(name):
        return ("name part must consist of alphanumeric characters, '-', '_' or '.', and must "
                "start and end with an alphanumeric character")
    return None


def label_value(value: str) -> str | None:
    if len(value) > 63:
        return "must be no more than 63 characters"
    if not _LABEL_VALUE.match(value):
        return ("a valid label must be an empty string or consist of alphanumeric characters, "
                "'-', '_' or '.', and must start and end with an alphanumeric character")
    return None


def iana_svc_name(value: str) -> str | None:
    if len(value) > 15:
        return "must be no more than 15 characters"
    if not _IANA_SVC_NAME.match(value):
        return "must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)"
    if "--" in value:
        return "must not contain consecutive hyphens"
    if not re.search("[a-z]", value):
        return "must contain at least one letter (a-z)"
    if value.startswith("-") or value.endswith("-"):
        return "must not begin or end with a hyphen"
    return None


# -- errors ------------------------------------------------------------------------------

def _show(value: Any) -> str:
    """A value as the API server quotes it: strings in quotes, numbers bare."""
    if isinstance(value, str):
        return json.dumps(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"))
    return str(value)


class ManifestError(ValueError):
    """One or more manifests are invalid; ``problems`` holds one line each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass
class Document:
    """One object of an apply and where it came from."""
    obj: Any
    source: str                      # file name, or "-" for stdin
    index: int                       # 1-based document number within the source
    item: int | None = None          # index within a kind: List

    @property
    def where(self) -> str:
        """``file`` plus the document/item when the object has no usable name."""
        return self.source

    @property
    def label(self) -> str:
        """``Pod "web"`` (or a position when kind or name are unusable)."""
        obj = self.obj if isinstance(self.obj, dict) else {}
        kind = obj.get("kind") if isinstance(obj.get("kind"), str) and obj.get("kind") else None
        meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
        name = meta.get("name") if isinstance(meta.get("name"), str) and meta.get("name") else None
        pos = f"document {self.index}" + (f" items[{self.item}]" if self.item is not None else "")
        if kind and name:
            return f'{kind} "{name}"'
        if kind:
            return f"{kind} ({pos})"
        if name:
            return f'object "{name}" ({pos})'
        return pos


class _Errors:
    """Collects field errors for one document."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.lines: list[str] = []

    def add(self, field: str, text: str) -> None:
        self.lines.append(f"{self.doc.where}: {self.doc.label} : {field}: {text}")

    def required(self, field: str, detail: str = "") -> None:
        self.add(field, "Required value" + (f": {detail}" if detail else ""))

    def invalid(self, field: str, value: Any, detail: str) -> None:
        self.add(field, f"Invalid value: {_show(value)}: {detail}")

    def unsupported(self, field: str, value: Any, supported: tuple[str, ...] | list[str]) -> None:
        self.add(field, f"Unsupported value: {_show(value)}: supported values: "
                        + ", ".join(json.dumps(s) for s in supported))

    def duplicate(self, field: str, value: Any, detail: str = "") -> None:
        self.add(field, f"Duplicate value: {_show(value)}" + (f": {detail}" if detail else ""))

    def forbidden(self, field: str, detail: str) -> None:
        self.add(field, f"Forbidden: {detail}")

    def not_found(self, field: str, value: Any, detail: str = "") -> None:
        self.add(field, f"Not found: {_show(value)}" + (f": {detail}" if detail else ""))

    # typed accessors: report a wrong type once and hand back a usable default
    def mapping(self, parent: dict[str, Any], key: str, field: str) -> dict[str, Any] | None:
        value = parent.get(key)
        if value is None:
            return None
        if not isinstance(value, dict):
            self.invalid(field, value, "must be an object")
            return None
        return value

    def sequence(self, parent: dict[str, Any], key: str, field: str) -> list[Any]:
        value = parent.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.invalid(field, value, "must be a list")
            return []
        return value

    def string(self, parent: dict[str, Any], key: str, field: str) -> str | None:
        value = parent.get(key)
        if value is None:
            return None
        if not isinstance(value, str):
            self.invalid(field, value, "must be a string")
            return None
        return value


# -- loading -----------------------------------------------------------------------------

def load(paths: list[str], stdin: TextIO | None = None) -> list[Document]:
    """Read every document of ``paths`` (files, directories of *.yaml/*.yml/*.json in
    sorted order, ``-`` for stdin), expanding ``kind: List``.  Syntax errors and unreadable
    paths raise :class:`ManifestError` naming the file (and line)."""
    docs: list[Document] = []
    problems: list[str] = []
    for path in paths:
        for source, text in _sources(path, stdin, problems):
            try:
                docs.extend(_parse(source, text))
            except ManifestError as exc:
                problems.extend(exc.problems)
    if problems:
        raise ManifestError(problems)
    return docs


def _sources(path: str, stdin: TextIO | None, problems: list[str]):
    if path == "-":
        yield "-", (stdin or sys.stdin).read()
        return
    if os.path.isdir(path):
        names = sorted(n for n in os.listdir(path) if n.endswith(MANIFEST_SUFFIXES)
                       and os.path.isfile(os.path.join(path, n)))
        if not names:
            problems.append(f"{path}: no manifests (*.yaml, *.yml, *.json) in this directory")
        for n in names:
            yield from _sources(os.path.join(path, n), stdin, problems)
        return
    try:
        with open(path, encoding="utf-8") as f:
            yield path, f.read()
    except OSError as exc:
        problems.append(f"{path}: {exc.strerror or exc}")
    except UnicodeDecodeError as exc:
        problems.append(f"{path}: not UTF-8 text ({exc.reason})")


def _parse(source: str, text: str) -> list[Document]:
    import yaml

    try:
        if source.endswith(".json"):
            raw = [json.loads(text)] if text.strip() else []
        else:
            raw = list(yaml.safe_load_all(text))
    except json.JSONDecodeError as exc:
        raise ManifestError([f"{source}: line {exc.lineno}: invalid JSON: {exc.msg}"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        what = getattr(exc, "problem", None) or str(exc)
        raise ManifestError([f"{source}: {where}invalid YAML: {what}"]) from None
    docs = []
    for i, obj in enumerate(raw, 1):
        if obj is None:                                    # an empty document ("---" twice)
            continue
        if isinstance(obj, dict) and obj.get("kind") == "List" and isinstance(obj.get("items"), list):
            docs.extend(Document(item, source, i, j) for j, item in enumerate(obj["items"]))
        else:
            docs.append(Document(obj, source, i))
    return docs


# -- validation --------------------------------------------------------------------------

def validate(docs: list[Document], namespace: str | None = None) -> list[str]:
    """Every problem of every document, plus duplicates across them (one line each).

    ``namespace`` is the namespace objects without one go to (``apply -n``)."""
    problems: list[str] = []
    seen: dict[tuple[str, str, str], Document] = {}
    for doc in docs:
        errs = _Errors(doc)
        _validate_object(doc.obj, errs, namespace)
        problems.extend(errs.lines)
        if errs.lines:
            continue
        key = _key(doc.obj, namespace)
        if key in seen:
            first = seen[key]
            errs.duplicate("metadata.name", doc.obj["metadata"]["name"],
                           f"also defined in {first.source} (document {first.index})")
            problems.extend(errs.lines)
        else:
            seen[key] = doc
    return problems


def _key(obj: dict[str, Any], namespace: str | None) -> tuple[str, str, str]:
    info = KINDS[obj["kind"]]
    ns = ""
    if info.namespaced:
        ns = obj["metadata"].get("namespace") or namespace or DEFAULT_NAMESPACE
    return info.resource, ns, obj["metadata"]["name"]


def validate_object(obj: Any, source: str = "<input>") -> list[str]:
    """Problems of one object on its own."""
    errs = _Errors(Document(obj, source, 1))
    _validate_object(obj, errs, None)
    return errs.lines


def _validate_object(obj: Any, errs: _Errors, namespace: str | None) -> None:
    if not isinstance(obj, dict):
        errs.add("<document>", f"Invalid value: {_show(obj)}: a manifest must be an object "
                               "with apiVersion, kind and metadata")
        return
    kind = obj.get("kind")
    if kind is None or kind == "":
        errs.required("kind")
        return
    if kind not in KINDS:
        errs.unsupported("kind", kind, sorted(KINDS))
        return
    info = KINDS[kind]
    api = obj.get("apiVersion")
    if api is None or api == "":
        errs.required("apiVersion")
    elif api != info.api_version:
        errs.unsupported("apiVersion", api, [info.api_version])
    meta = obj.get("metadata")
    if not isinstance(meta, dict):
        if meta is None:
            errs.required("metadata.name", "name is required")
        else:
            errs.invalid("metadata", meta, "must be an object")
        return
    _validate_metadata(meta, errs, kind, info.namespaced, namespace)
    if errs.lines:
        return
    _VALIDATORS[kind](obj, errs)


_NAME_RULES = {"Namespace": dns1123_label, "Service": dns1035_label}


def _validate_metadata(meta: dict[str, Any], errs: _Errors, kind: str, namespaced: bool,
                       namespace: str | None) -> None:
    name = meta.get("name")
    if name is None or name == "":
        errs.required("metadata.name", "name is required")
    elif not isinstance(name, str):
        errs.invalid("metadata.name", name, "must be a string")
    else:
        err = _NAME_RULES.get(kind, dns1123_subdomain)(name)
        if err:
            errs.invalid("metadata.name", name, err)
    ns = meta.get("namespace")
    if ns is not None and ns != "":
        if not namespaced:
            errs.forbidden("metadata.namespace", "not allowed on this type")
        elif not isinstance(ns, str):
            errs.invalid("metadata.namespace", ns, "must be a string")
        else:
            err = dns1123_label(ns)
            if err:
                errs.invalid("metadata.namespace", ns, err)
            elif namespace and ns != namespace:
                errs.invalid("metadata.namespace", ns,
                             f"does not match the namespace given with -n ({namespace!r})")
    labels = errs.mapping(meta, "labels", "metadata.labels")
    if labels:
        _validate_labels(labels, "metadata.labels", errs)
    annotations = errs.mapping(meta, "annotations", "metadata.annotations")
    for key, value in (annotations or {}).items():
        err = qualified_name(str(key))
        if err:
            errs.invalid("metadata.annotations", key, err)
        if not isinstance(value, str):
            errs.invalid(f"metadata.annotations[{key}]", value,
                         "annotation values must be strings (quote it)")


def _validate_labels(labels: dict[str, Any], field: str, errs: _Errors) -> None:
    for key, value in labels.items():
        err = qualified_name(str(key)) if isinstance(key, str) else "must be a string"
        if err:
            errs.invalid(field, key, err)
        if not isinstance(value, str):
            errs.invalid(f"{field}[{key}]", value, "label values must be strings (quote it)")
            continue
        err = label_value(value)
        if err:
            errs.invalid(f"{field}[{key}]", value, err)


def validate_label_selector(sel: Any, field: str, errs: _Errors) -> None:
    """A metav1.LabelSelector: matchLabels and matchExpressions."""
    if not isinstance(sel, dict):
        errs.invalid(field, sel, "must be an object (matchLabels/matchExpressions)")
        return
    for key in sel:
        if key not in ("matchLabels", "matchExpressions"):
            errs.add(f"{field}.{key}", "Invalid value: unknown field (want matchLabels or "
                                        "matchExpressions)")
    labels = errs.mapping(sel, "matchLabels", f"{field}.matchLabels")
    if labels:
        _validate_labels(labels, f"{field}.matchLabels", errs)
    for i, expr in enumerate(errs.sequence(sel, "matchExpressions", f"{field}.matchExpressions")):
        path = f"{field}.matchExpressions[{i}]"
        if not isinstance(expr, dict):
            errs.invalid(path, expr, "must be an object (key, operator, values)")
            continue
        key = expr.get("key")
        if not key:
            errs.required(f"{path}.key")
        elif not isinstance(key, str) or qualified_name(key):
            errs.invalid(f"{path}.key", key, qualified_name(str(key)) or "must be a string")
        op = expr.get("operator")
        values = expr.get("values")
        if op is None or op == "":
            errs.required(f"{path}.operator")
            continue
        if op not in SELECTOR_OPERATORS:
            errs.unsupported(f"{path}.operator", op, SELECTOR_OPERATORS)
            continue
        if values is not None and not isinstance(values, list):
            errs.invalid(f"{path}.values", values, "must be a list")
            continue
        values = values or []
        if op in ("In", "NotIn") and not values:
            errs.required(f"{path}.values", "must be specified when `operator` is 'In' or 'NotIn'")
        if op in ("Exists", "DoesNotExist") and values:
            errs.forbidden(f"{path}.values",
                           "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
        for j, v in enumerate(values):
            if not isinstance(v, str):
                errs.invalid(f"{path}.values[{j}]", v, "must be a string (quote it)")
            elif label_value(v):
                errs.invalid(f"{path}.values[{j}]", v, label_value(v))


def _port_number(value: Any, field: str, errs: _Errors, required: bool = True) -> None:
    if value is None:
        if required:
            errs.required(field)
        return
    if isinstance(value, bool) or not isinstance(value, int):
        errs.invalid(field, value, "must be an integer between 1 and 65535")
    elif not 1 <= value <= 65535:
        errs.invalid(field, value, "must be between 1 and 65535, inclusive")


def _container_port(value: Any, field: str, errs: _Errors) -> None:
    if value is None:
        errs.required(field)
    elif isinstance(value, bool) or not isinstance(value, int):
        errs.invalid(field, value, "must be an integer between 1 and 65535")
    elif not 1 <= value <= 65535:
        errs.invalid(field, value, "must be between 1 and 65535")


def _protocol(value: Any, field: str, errs: _Errors) -> None:
    if value is not None and value not in PROTOCOLS:
        errs.unsupported(field, value, PROTOCOLS)


def _int_or_name(value: Any, field: str, errs: _Errors) -> None:
    """targetPort / NetworkPolicy port: a number 1-65535 or an IANA_SVC_NAME."""
    if isinstance(value, str):
        if value.isdigit():
            _port_number(int(value), field, errs)
            return
        err = iana_svc_name(value)
        if err:
            errs.invalid(field, value, err)
    else:
        _port_number(value, field, errs)


def _ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(value) if isinstance(value, str) else None
    except ValueError:
        return None


def _cidr(value: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(value, strict=False) if isinstance(value, str) and "/" in value else None
    except ValueError:
        return None


# -- per kind ------------------------------------------------------------------------------

def _validate_namespace(obj: dict[str, Any], errs: _Errors) -> None:
    pass


def _validate_node(obj: dict[str, Any], errs: _Errors) -> None:
    spec = errs.mapping(obj, "spec", "spec") or {}
    cidr = spec.get("podCIDR")
    if cidr not in (None, "") and _cidr(cidr) is None:
        errs.invalid("spec.podCIDR", cidr, "must be a valid CIDR (e.g. 10.244.1.0/24)")
    for i, c in enumerate(errs.sequence(spec, "podCIDRs", "spec.podCIDRs")):
        if _cidr(c) is None:
            errs.invalid(f"spec.podCIDRs[{i}]", c, "must be a valid CIDR")


def _validate_pod(obj: dict[str, Any], errs: _Errors) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        errs.required("spec.containers") if spec is None else errs.invalid("spec", spec, "must be an object")
        return
    containers = errs.sequence(spec, "containers", "spec.containers")
    if not containers:
        errs.required("spec.containers")
    port_names: dict[str, str] = {}
    names: set[str] = set()
    for group in ("initContainers", "containers"):
        for i, c in enumerate(errs.sequence(spec, group, f"spec.{group}") if group != "containers" else containers):
            _validate_container(c, f"spec.{group}[{i}]", errs, names, port_names)
    node = spec.get("nodeName")
    if node not in (None, ""):
        err = dns1123_subdomain(node) if isinstance(node, str) else "must be a string"
        if err:
            errs.invalid("spec.nodeName", node, err)
    policy = spec.get("restartPolicy")
    if policy is not None and policy not in ("Always", "OnFailure", "Never"):
        errs.unsupported("spec.restartPolicy", policy, ("Always", "OnFailure", "Never"))
    sel = errs.mapping(spec, "nodeSelector", "spec.nodeSelector")
    if sel:
        _validate_labels(sel, "spec.nodeSelector", errs)


def _validate_container(c: Any, path: str, errs: _Errors, names: set[str],
                        port_names: dict[str, str]) -> None:
    if not isinstance(c, dict):
        errs.invalid(path, c, "must be an object (name, image, ...)")
        return
    name = c.get("name")
    if name is None or name == "":
        errs.required(f"{path}.name")
    elif not isinstance(name, str) or dns1123_label(name):
        errs.invalid(f"{path}.name", name, dns1123_label(str(name)) or "must be a string")
    elif name in names:
        errs.duplicate(f"{path}.name", name)
    else:
        names.add(name)
    image = c.get("image")
    if image is None or (isinstance(image, str) and not image.strip()):
        errs.required(f"{path}.image")
    elif not isinstance(image, str):
        errs.invalid(f"{path}.image", image, "must be a string")
    for field in ("command", "args"):
        value = c.get(field)
        if value is None:
            continue
        if not isinstance(value, list):
            errs.invalid(f"{path}.{field}", value, "must be a list of strings")
            continue
        for j, arg in enumerate(value):
            if not isinstance(arg, str):
                errs.invalid(f"{path}.{field}[{j}]", arg, "must be a string (quote it)")
    for j, env in enumerate(errs.sequence(c, "env", f"{path}.env")):
        if not isinstance(env, dict) or not env.get("name"):
            errs.required(f"{path}.env[{j}].name")
        elif env.get("value") is not None and not isinstance(env["value"], str):
            errs.invalid(f"{path}.env[{j}].value", env["value"], "must be a string (quote it)")
    seen: set[tuple[int, str]] = set()
    for j, port in enumerate(errs.sequence(c, "ports", f"{path}.ports")):
        p = f"{path}.ports[{j}]"
        if not isinstance(port, dict):
            errs.invalid(p, port, "must be an object (containerPort, protocol, name)")
            continue
        _container_port(port.get("containerPort"), f"{p}.containerPort", errs)
        _protocol(port.get("protocol"), f"{p}.protocol", errs)
        host = port.get("hostPort")
        if host not in (None, 0):
            _container_port(host, f"{p}.hostPort", errs)
        pname = port.get("name")
        if pname not in (None, ""):
            err = iana_svc_name(pname) if isinstance(pname, str) else "must be a string"
            if err:
                errs.invalid(f"{p}.name", pname, err)
            elif pname in port_names:
                errs.duplicate(f"{p}.name", pname)
            else:
                port_names[pname] = p
        pair = (port.get("containerPort"), port.get("protocol") or "TCP")
        if isinstance(pair[0], int) and pair in seen:
            errs.duplicate(f"{p}", f"{pair[0]}/{pair[1]}")
        seen.add(pair)


def _validate_service(obj: dict[str, Any], errs: _Errors) -> None:
    spec = obj.get("spec")
    if spec is None:
        errs.required("spec.ports")
        return
    if not isinstance(spec, dict):
        errs.invalid("spec", spec, "must be an object")
        return
    stype = spec.get("type") or "ClusterIP"
    if stype not in SERVICE_TYPES:
        errs.unsupported("spec.type", stype, SERVICE_TYPES)
        return
    cluster_ip = spec.get("clusterIP")
    if cluster_ip not in (None, "", "None") and _ip(cluster_ip) is None:
        errs.invalid("spec.clusterIP", cluster_ip, 'must be a valid IP address, "None" or empty')
    for i, ip in enumerate(errs.sequence(spec, "clusterIPs", "spec.clusterIPs")):
        if ip not in ("None",) and _ip(ip) is None:
            errs.invalid(f"spec.clusterIPs[{i}]", ip, 'must be a valid IP address or "None"')
    headless = cluster_ip == "None"
    if stype == "ExternalName":
        ext = spec.get("externalName")
        if not ext:
            errs.required("spec.externalName")
        elif not isinstance(ext, str) or dns1123_subdomain(ext.rstrip(".")):
            errs.invalid("spec.externalName", ext, dns1123_subdomain(str(ext)) or "must be a string")
    elif headless and stype != "ClusterIP":
        errs.invalid("spec.clusterIP", cluster_ip, f"may not be set to 'None' for {stype} services")
    selector = errs.mapping(spec, "selector", "spec.selector")
    if selector:
        _validate_labels(selector, "spec.selector", errs)
    ports = errs.sequence(spec, "ports", "spec.ports")
    if not ports and stype != "ExternalName" and not headless:
        errs.required("spec.ports")
    names: set[str] = set()
    pairs: set[tuple[Any, str]] = set()
    node_ports: set[tuple[Any, str]] = set()
    for i, port in enumerate(ports):
        p = f"spec.ports[{i}]"
        if not isinstance(port, dict):
            errs.invalid(p, port, "must be an object (port, targetPort, protocol, name)")
            continue
        name = port.get("name")
        if name in (None, ""):
            if len(ports) > 1:
                errs.required(f"{p}.name")
        elif not isinstance(name, str) or dns1123_label(name):
            errs.invalid(f"{p}.name", name, dns1123_label(str(name)) or "must be a string")
        elif name in names:
            errs.duplicate(f"{p}.name", name)
        else:
            names.add(name)
        _port_number(port.get("port"), f"{p}.port", errs)
        _protocol(port.get("protocol"), f"{p}.protocol", errs)
        if port.get("targetPort") is not None:
            _int_or_name(port["targetPort"], f"{p}.targetPort", errs)
        proto = port.get("protocol") or "TCP"
        pair = (port.get("port"), proto)
        if isinstance(pair[0], int):
            if pair in pairs:
                errs.duplicate(p, f"{pair[0]}/{proto}")
            pairs.add(pair)
        node_port = port.get("nodePort")
        if node_port not in (None, 0):
            if stype not in ("NodePort", "LoadBalancer"):
                errs.forbidden(f"{p}.nodePort", f"may not be used when `type` is '{stype}'")
            elif isinstance(node_port, bool) or not isinstance(node_port, int) \
                    or not NODE_PORT_RANGE[0] <= node_port <= NODE_PORT_RANGE[1]:
                errs.invalid(f"{p}.nodePort", node_port,
                             "provided port is not in the valid range. The range of valid "
                             f"ports is {NODE_PORT_RANGE[0]}-{NODE_PORT_RANGE[1]}")
            elif (node_port, proto) in node_ports:
                errs.duplicate(f"{p}.nodePort", node_port)
            else:
                node_ports.add((node_port, proto))
    for i, ip in enumerate(errs.sequence(spec, "externalIPs", "spec.externalIPs")):
        if _ip(ip) is None:
            errs.invalid(f"spec.externalIPs[{i}]", ip, "must be a valid IP address")
    affinity = spec.get("sessionAffinity")
    if affinity is not None and affinity not in ("None", "ClientIP"):
        errs.unsupported("spec.sessionAffinity", affinity, ("ClientIP", "None"))
    for field in ("externalTrafficPolicy", "internalTrafficPolicy"):
        value = spec.get(field)
        if value is not None and value not in ("Cluster", "Local"):
            errs.unsupported(f"spec.{field}", value, ("Cluster", "Local"))
    if spec.get("externalTrafficPolicy") is not None and stype not in ("NodePort", "LoadBalancer"):
        errs.invalid("spec.externalTrafficPolicy", spec["externalTrafficPolicy"],
                     "may only be set when `type` is 'NodePort' or 'LoadBalancer'")


def _validate_endpointslice(obj: dict[str, Any], errs: _Errors) -> None:
    atype = obj.get("addressType")
    if atype is None or atype == "":
        errs.required("addressType")
        return
    if atype not in ("IPv4", "IPv6", "FQDN"):
        errs.unsupported("addressType", atype, ("FQDN", "IPv4", "IPv6"))
        return
    for i, ep in enumerate(errs.sequence(obj, "endpoints", "endpoints")):
        p = f"endpoints[{i}]"
        if not isinstance(ep, dict):
            errs.invalid(p, ep, "must be an object (addresses, conditions, ...)")
            continue
        addrs = errs.sequence(ep, "addresses", f"{p}.addresses")
        if not addrs:
            errs.required(f"{p}.addresses", "must contain at least 1 address")
        elif len(addrs) > 100:
            errs.add(f"{p}.addresses", f"Too many: {len(addrs)}: must have at most 100 items")
        for j, addr in enumerate(addrs):
            ip = _ip(addr)
            if atype == "FQDN":
                if not isinstance(addr, str) or dns1123_subdomain(addr):
                    errs.invalid(f"{p}.addresses[{j}]", addr, "must be a valid FQDN")
            elif ip is None or ip.version != (4 if atype == "IPv4" else 6):
                errs.invalid(f"{p}.addresses[{j}]", addr, f"must be a valid {atype} address")
        conditions = errs.mapping(ep, "conditions", f"{p}.conditions") or {}
        for cond, value in conditions.items():
            if value is not None and not isinstance(value, bool):
                errs.invalid(f"{p}.conditions.{cond}", value, "must be true or false")
        node = ep.get("nodeName")
        if node not in (None, "") and (not isinstance(node, str) or dns1123_subdomain(node)):
            errs.invalid(f"{p}.nodeName", node, dns1123_subdomain(str(node)) or "must be a string")
    names: set[str] = set()
    for i, port in enumerate(errs.sequence(obj, "ports", "ports")):
        p = f"ports[{i}]"
        if not isinstance(port, dict):
            errs.invalid(p, port, "must be an object (name, port, protocol)")
            continue
        name = port.get("name") or ""
        if name:
            if not isinstance(name, str) or dns1123_label(name):
                errs.invalid(f"{p}.name", name, dns1123_label(str(name)) or "must be a string")
        if name in names:
            errs.duplicate(f"{p}.name", name)
        names.add(name)
        _port_number(port.get("port"), f"{p}.port", errs, required=False)
        _protocol(port.get("protocol"), f"{p}.protocol", errs)


def _validate_networkpolicy(obj: dict[str, Any], errs: _Errors) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        if spec is None:
            errs.required("spec.podSelector")
        else:
            errs.invalid("spec", spec, "must be an object")
        return
    if "podSelector" not in spec:
        errs.required("spec.podSelector", "use {} to select every pod of the namespace")
    elif spec["podSelector"] is not None:
        validate_label_selector(spec["podSelector"], "spec.podSelector", errs)
    types = errs.sequence(spec, "policyTypes", "spec.policyTypes")
    for i, t in enumerate(types):
        if t not in ("Ingress", "Egress"):
            errs.unsupported(f"spec.policyTypes[{i}]", t, ("Egress", "Ingress"))
        elif t in types[:i]:
            errs.duplicate(f"spec.policyTypes[{i}]", t)
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        for i, rule in enumerate(errs.sequence(spec, direction, f"spec.{direction}")):
            p = f"spec.{direction}[{i}]"
            if not isinstance(rule, dict):
                errs.invalid(p, rule, f"must be an object (ports, {peers_key})")
                continue
            for j, port in enumerate(errs.sequence(rule, "ports", f"{p}.ports")):
                _validate_policy_port(port, f"{p}.ports[{j}]", errs)
            for j, peer in enumerate(errs.sequence(rule, peers_key, f"{p}.{peers_key}")):
                _validate_peer(peer, f"{p}.{peers_key}[{j}]", errs)


def _validate_policy_port(port: Any, p: str, errs: _Errors) -> None:
    if not isinstance(port, dict):
        errs.invalid(p, port, "must be an object (protocol, port, endPort)")
        return
    _protocol(port.get("protocol"), f"{p}.protocol", errs)
    value = port.get("port")
    if value is not None:
        _int_or_name(value, f"{p}.port", errs)
    end = port.get("endPort")
    if end is not None:
        if not isinstance(value, int) or isinstance(value, bool):
            errs.required(f"{p}.port", "must be a number when `endPort` is specified")
        elif isinstance(end, bool) or not isinstance(end, int) or not 1 <= end <= 65535:
            errs.invalid(f"{p}.endPort", end, "must be between 1 and 65535, inclusive")
        elif end < value:
            errs.invalid(f"{p}.endPort", end, "must be greater than or equal to `port`")


def _validate_peer(peer: Any, p: str, errs: _Errors) -> None:
    if not isinstance(peer, dict):
        errs.invalid(p, peer, "must be an object (podSelector, namespaceSelector or ipBlock)")
        return
    present = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if peer.get(k) is not None]
    if not present:
        errs.required(p, "must specify a peer")
        return
    if "ipBlock" in present and len(present) > 1:
        errs.forbidden(p, "may not specify both ipBlock and another peer")
        return
    for key in ("podSelector", "namespaceSelector"):
        if key in present:
            validate_label_selector(peer[key], f"{p}.{key}", errs)
    if "ipBlock" in present:
        block = peer["ipBlock"]
        if not isinstance(block, dict):
            errs.invalid(f"{p}.ipBlock", block, "must be an object (cidr, except)")
            return
        cidr_text = block.get("cidr")
        if not cidr_text:
            errs.required(f"{p}.ipBlock.cidr")
            return
        cidr = _cidr(cidr_text)
        if cidr is None:
            errs.invalid(f"{p}.ipBlock.cidr", cidr_text, "must be a valid CIDR (e.g. 10.0.0.0/16)")
            return
        for k, exc in enumerate(errs.sequence(block, "except", f"{p}.ipBlock.except")):
            net = _cidr(exc)
            field = f"{p}.ipBlock.except[{k}]"
            if net is None:
                errs.invalid(field, exc, "must be a valid CIDR")
            elif net.version != cidr.version or not net.subnet_of(cidr) or net == cidr:
                errs.invalid(field, exc, "must be a strict subset of `cidr`")


_VALIDATORS = {
    "Namespace": _validate_namespace,
    "Node": _validate_node,
    "Pod": _validate_pod,
    "Service": _validate_service,
    "EndpointSlice": _validate_endpointslice,
    "NetworkPolicy": _validate_networkpolicy,
}


# -- checks against the store ---------------------------------------------------------

def check_node_names(docs: list[Document], existing_nodes: set[str]) -> list[str]:
    """Pods must be bound to Nodes that exist (in the store or in the same apply).

    When there are no Nodes at all the check is skipped: nodes may register later."""
    nodes = set(existing_nodes) | {d.obj["metadata"]["name"] for d in docs if d.obj.get("kind") == "Node"}
    if not nodes:
        return []
    problems = []
    for doc in docs:
        if doc.obj.get("kind") != "Pod":
            continue
        node = (doc.obj.get("spec") or {}).get("nodeName")
        if node and node not in nodes:
            errs = _Errors(doc)
            errs.not_found("spec.nodeName", node, "no such Node (nodes: " + ", ".join(sorted(nodes)) + ")")
            problems.extend(errs.lines)
    return problems


# -- defaults ----------------------------------------------------------------------------

def normalize(obj: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    """A copy with the API server's defaults filled in (call on valid objects only)."""
    obj = copy.deepcopy(obj)
    info = KINDS[obj["kind"]]
    meta = obj["metadata"]
    if info.namespaced:
        meta["namespace"] = meta.get("namespace") or namespace or DEFAULT_NAMESPACE
    kind = obj["kind"]
    if kind == "Pod":
        spec = obj["spec"]
        for c in (spec.get("initContainers") or []) + spec["containers"]:
            for port in c.get("ports") or []:
                port.setdefault("protocol", "TCP")
    elif kind == "Service":
        spec = obj["spec"]
        spec.setdefault("type", "ClusterIP")
        if spec["type"] != "ExternalName":
            spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            if spec["type"] != "ExternalName":
                port.setdefault("targetPort", port["port"])
    elif kind == "EndpointSlice":
        for port in obj.get("ports") or []:
            port.setdefault("protocol", "TCP")
    elif kind == "NetworkPolicy":
        spec = obj["spec"]
        if spec.get("podSelector") is None:
            spec["podSelector"] = {}
        if not spec.get("policyTypes"):
            spec["policyTypes"] = ["Ingress"] + (["Egress"] if spec.get("egress") else [])
        for direction in ("ingress", "egress"):
            for rule in spec.get(direction) or []:
                for port in rule.get("ports") or []:
                    port.setdefault("protocol", "TCP")
    return obj


def prepare(docs: list[Document], namespace: str | None = None) -> list[dict[str, Any]]:
    """Validate ``docs`` and return them normalized; :class:`ManifestError` if any is bad."""
    problems = validate(docs, namespace)
    if problems:
        raise ManifestError(problems)
    return [normalize(d.obj, namespace) for d in docs]
