"""kubectl-like output: tables (default and ``-o wide``), ``-o json`` and ``-o yaml``.

Every function is pure: objects (and the current time) in, text out.  Columns and cell
formats follow kubectl's printers (``k8s.io/kubernetes/pkg/printers/internalversion``);
the table layout is Go's tabwriter as kubectl configures it (3 spaces of padding).
"""
from __future__ import annotations

import datetime
import json
from collections.abc import Callable, Sequence
from typing import Any

NONE = "<none>"
UNSET = "<unset>"


# -- cells -------------------------------------------------------------------------------

def human_duration(seconds: float) -> str:
    """kubectl's ``duration.HumanDuration``: 45s, 3m20s, 14m, 5h3m, 20h, 3d4h, 40d, 2y10d."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        return f"{minutes}m" if s % 60 == 0 else f"{minutes}m{s % 60}s"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        return f"{hours}h" if minutes % 60 == 0 else f"{hours}h{minutes % 60}m"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        return f"{hours // 24}d" if hours % 24 == 0 else f"{hours // 24}d{hours % 24}h"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        years, days = hours // 24 // 365, (hours // 24) % 365
        return f"{years}y" if days == 0 else f"{years}y{days}d"
    return f"{hours // 24 // 365}y"


def parse_time(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
    except ValueError:
        return None


def age(obj: dict[str, Any], now: float) -> str:
    created = parse_time((obj.get("metadata") or {}).get("creationTimestamp"))
    return "<unknown>" if created is None else human_duration(now - created)


def format_label_selector(sel: dict[str, Any] | None) -> str:
    """metav1.FormatLabelSelector: ``app=web,tier in (a,b),!canary``; ``<none>`` if empty."""
    if not sel:
        return NONE
    parts = [f"{k}={v}" for k, v in sorted((sel.get("matchLabels") or {}).items())]
    for expr in sel.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In":
            parts.append(f"{key} in ({','.join(values)})")
        elif op == "NotIn":
            parts.append(f"{key} notin ({','.join(values)})")
        elif op == "Exists":
            parts.append(key)
        elif op == "DoesNotExist":
            parts.append(f"!{key}")
    return ",".join(parts) if parts else NONE


def format_labels(labels: dict[str, str] | None) -> str:
    if not labels:
        return NONE
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def _more(items: list[str], limit: int = 3) -> str:
    if len(items) <= limit:
        return ",".join(items)
    return ",".join(items[:limit]) + f" + {len(items) - limit} more..."


# -- tables ------------------------------------------------------------------------------

def render_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns, three spaces apart; the last column is not padded."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in [list(headers), *rows]:
        cells = [c.ljust(widths[i] + 3) for i, c in enumerate(row[:-1])] + [row[-1]]
        lines.append("".join(cells).rstrip())
    return "\n".join(lines) + "\n"


Row = Callable[[dict[str, Any], float, bool], list[str]]


def _pod_row(pod: dict[str, Any], now: float, wide: bool) -> list[str]:
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    total = len(spec.get("containers") or [])
    statuses = status.get("containerStatuses") or []
    ready = sum(1 for s in statuses if s.get("ready"))
    restarts = sum(int(s.get("restartCount") or 0) for s in statuses)
    phase = status.get("reason") or status.get("phase") or "Pending"
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        phase = "Terminating"
    row = [pod["metadata"]["name"], f"{ready}/{total}", phase, str(restarts), age(pod, now)]
    if wide:
        row += [status.get("podIP") or NONE, spec.get("nodeName") or NONE]
    return row


def _service_ports(spec: dict[str, Any]) -> str:
    ports = []
    for p in spec.get("ports") or []:
        proto = p.get("protocol") or "TCP"
        if p.get("nodePort"):
            ports.append(f"{p.get('port')}:{p['nodePort']}/{proto}")
        else:
            ports.append(f"{p.get('port')}/{proto}")
    return ",".join(ports) or NONE


def _service_external(svc: dict[str, Any]) -> str:
    spec = svc.get("spec") or {}
    stype = spec.get("type") or "ClusterIP"
    external = list(spec.get("externalIPs") or [])
    if stype == "ExternalName":
        return spec.get("externalName") or NONE
    if stype == "LoadBalancer":
        ingress = ((svc.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        ips = [i.get("ip") or i.get("hostname") for i in ingress if i.get("ip") or i.get("hostname")]
        return ",".join(ips + external) or "<pending>"
    return ",".join(external) or NONE


def _service_row(svc: dict[str, Any], now: float, wide: bool) -> list[str]:
    spec = svc.get("spec") or {}
    row = [svc["metadata"]["name"], spec.get("type") or "ClusterIP", spec.get("clusterIP") or NONE,
           _service_external(svc), _service_ports(spec), age(svc, now)]
    if wide:
        row.append(format_labels(spec.get("selector")))
    return row


def node_internal_ip(node: dict[str, Any]) -> str | None:
    for addr in (node.get("status") or {}).get("addresses") or []:
        if addr.get("type") == "InternalIP":
            return addr.get("address")
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    return annotations.get("flannel.alpha.coreos.com/public-ip")


def node_pod_cidr(node: dict[str, Any], leases: dict[str, str] | None = None) -> str | None:
    """spec.podCIDR, else the ``podnet.io/pod-cidr`` annotation, else the flannel lease
    whose public IP is the node's InternalIP (``leases``: public IP → subnet)."""
    spec = node.get("spec") or {}
    if spec.get("podCIDR"):
        return spec["podCIDR"]
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    if annotations.get("podnet.io/pod-cidr"):
        return annotations["podnet.io/pod-cidr"]
    ip = node_internal_ip(node)
    return (leases or {}).get(ip) if ip else None


def _node_status(node: dict[str, Any]) -> str:
    conditions = (node.get("status") or {}).get("conditions") or []
    ready = next((c for c in conditions if c.get("type") == "Ready"), None)
    if ready is None:
        status = "Unknown"
    else:
        status = "Ready" if ready.get("status") == "True" else "NotReady"
    if (node.get("spec") or {}).get("unschedulable"):
        status += ",SchedulingDisabled"
    return status


def _node_roles(node: dict[str, Any]) -> str:
    labels = (node.get("metadata") or {}).get("labels") or {}
    roles = set()
    for key, value in labels.items():
        if key.startswith("node-role.kubernetes.io/"):
            role = key.split("/", 1)[1]
            if role:
                roles.add(role)
        elif key == "kubernetes.io/role" and value:
            roles.add(value)
    return ",".join(sorted(roles)) or NONE


def _node_row_factory(leases: dict[str, str] | None) -> Row:
    def row(node: dict[str, Any], now: float, wide: bool) -> list[str]:
        info = (node.get("status") or {}).get("nodeInfo") or {}
        cells = [node["metadata"]["name"], _node_status(node), _node_roles(node), age(node, now),
                 info.get("kubeletVersion") or ""]
        if wide:
            cells += [node_internal_ip(node) or NONE, node_pod_cidr(node, leases) or NONE]
        return cells
    return row


def _namespace_row(ns: dict[str, Any], now: float, wide: bool) -> list[str]:
    return [ns["metadata"]["name"], (ns.get("status") or {}).get("phase") or "Active", age(ns, now)]


def _endpointslice_row(es: dict[str, Any], now: float, wide: bool) -> list[str]:
    ports = [str(p["port"]) for p in es.get("ports") or [] if p.get("port") is not None]
    addrs = [a for ep in es.get("endpoints") or [] for a in ep.get("addresses") or []]
    return [es["metadata"]["name"], es.get("addressType") or "", _more(ports) or UNSET,
            _more(addrs) or UNSET, age(es, now)]


def _netpol_row(np: dict[str, Any], now: float, wide: bool) -> list[str]:
    return [np["metadata"]["name"], format_label_selector((np.get("spec") or {}).get("podSelector")),
            age(np, now)]


COLUMNS: dict[str, tuple[list[str], list[str]]] = {
    "pods": (["NAME", "READY", "STATUS", "RESTARTS", "AGE"], ["IP", "NODE"]),
    "services": (["NAME", "TYPE", "CLUSTER-IP", "EXTERNAL-IP", "PORT(S)", "AGE"], ["SELECTOR"]),
    "nodes": (["NAME", "STATUS", "ROLES", "AGE", "VERSION"], ["INTERNAL-IP", "POD-CIDR"]),
    "namespaces": (["NAME", "STATUS", "AGE"], []),
    "endpointslices": (["NAME", "ADDRESSTYPE", "PORTS", "ENDPOINTS", "AGE"], []),
    "networkpolicies": (["NAME", "POD-SELECTOR", "AGE"], []),
}
_ROWS: dict[str, Row] = {
    "pods": _pod_row, "services": _service_row, "namespaces": _namespace_row,
    "endpointslices": _endpointslice_row, "networkpolicies": _netpol_row,
}


def object_table(resource: str, objs: list[dict[str, Any]], now: float, *, wide: bool = False,
                 all_namespaces: bool = False, leases: dict[str, str] | None = None) -> str:
    """The table ``podnet get <resource>`` prints (with NAMESPACE first under ``-A``)."""
    base, extra = COLUMNS[resource]
    headers = base + (extra if wide else [])
    row_fn = _node_row_factory(leases) if resource == "nodes" else _ROWS[resource]
    rows = [row_fn(o, now, wide) for o in objs]
    if all_namespaces and resource not in ("nodes", "namespaces"):
        headers = ["NAMESPACE", *headers]
        rows = [[(o.get("metadata") or {}).get("namespace") or "", *r] for o, r in zip(objs, rows)]
    return render_table(headers, rows)


# -- subnets (flannel leases) --------------------------------------------------------------

SUBNET_COLUMNS = ["SUBNET", "PUBLIC-IP", "BACKEND", "BACKEND-DATA", "TTL"]


def backend_data_cell(data: Any) -> str:
    """vxlan's ``{"VNI":1,"VtepMAC":"…"}`` → ``VNI=1,VtepMAC=…``; other JSON compact."""
    if data is None or data == {}:
        return NONE
    if isinstance(data, dict) and all(not isinstance(v, (dict, list)) for v in data.values()):
        return ",".join(f"{k}={v}" for k, v in data.items())
    return json.dumps(data, separators=(",", ":"))


def subnet_rows(leases: list[Any], ttls: dict[int, int]) -> list[dict[str, Any]]:
    """Leases (flannel_py.subnet.registry.Lease) as plain dicts: the -o json/yaml form.
    ``ttls``: etcd lease id → remaining seconds (-1 when the lease is gone)."""
    out = []
    for lease in sorted(leases, key=lambda le: (int(le.subnet.network_address), le.subnet.prefixlen)):
        out.append({
            "subnet": str(lease.subnet),
            "publicIP": str(lease.attrs.public_ip),
            "backendType": lease.attrs.backend_type,
            "backendData": lease.attrs.backend_data,
            "ttl": None if lease.lease_id == 0 else ttls.get(lease.lease_id, -1),
        })
    return out


def subnet_table(rows: list[dict[str, Any]]) -> str:
    cells = []
    for r in rows:
        ttl = r["ttl"]
        ttl_cell = NONE if ttl is None else ("<expired>" if ttl < 0 else human_duration(ttl))
        cells.append([r["subnet"], r["publicIP"], r["backendType"] or NONE,
                      backend_data_cell(r["backendData"]), ttl_cell])
    return render_table(SUBNET_COLUMNS, cells)


# -- json / yaml ---------------------------------------------------------------------------

def as_list(items: list[Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "items": items, "kind": "List", "metadata": {"resourceVersion": ""}}


def to_json(data: Any) -> str:
    return json.dumps(data, indent=4, ensure_ascii=False) + "\n"


def to_yaml(data: Any) -> str:
    import yaml
    return yaml.safe_dump(data, default_flow_style=False, sort_keys=False, allow_unicode=True)


def render(data: Any, output: str) -> str:
    return to_json(data) if output == "json" else to_yaml(data)
