"""``podnet apply``, ``podnet get`` and ``podnet delete``: objects in the store, as kubectl
shows them.

Handlers return the exit status; problems are raised (``podnet.cli.main`` prints them as
one line each, with a traceback under ``-v``).  Everything that goes to the store goes
through :func:`podnet.cluster.connect`, so ``--lab`` works from any namespace.
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from podnet import cluster
from podnet.store import KINDS, RESOURCES

SUBNETS = "subnets"


class CommandError(Exception):
    """A user-facing failure of a command (printed as one line)."""


def _aliases() -> dict[str, str]:
    names: dict[str, str] = {}
    for info in KINDS.values():
        for alias in (info.resource, info.singular, info.kind.lower(), *info.short_names):
            names[alias] = info.resource
    names.update({"subnets": SUBNETS, "subnet": SUBNETS})
    return names


ALIASES = _aliases()


def resolve_kind(text: str) -> str:
    """``po`` / ``pod`` / ``Pod`` / ``pods`` → ``pods``; CommandError if unknown."""
    resource = ALIASES.get(text.lower())
    if resource is None:
        known = ", ".join(sorted({*RESOURCES, SUBNETS}))
        raise CommandError(f'the server doesn\'t have a resource type "{text}" (known: {known})')
    return resource


def register(sub: Any) -> None:
    """Add apply/get/delete to the ``podnet`` subcommand parser."""
    p = sub.add_parser("apply", help="create or update objects from manifests (all or nothing)")
    p.add_argument("-f", "--filename", action="append", required=True, metavar="FILE|DIR|-",
                   help="manifest file, directory of manifests, or - for stdin (repeatable)")
    p.add_argument("-n", "--namespace", help="namespace of objects that name none")
    p.add_argument("--dry-run", action="store_true", help="validate and print, store nothing")
    cluster.add_cluster_options(p, suppress=True)
    p.set_defaults(func=cmd_apply)

    g = sub.add_parser("get", help="show objects (kubectl-like tables, -o wide|json|yaml)")
    g.add_argument("kind", metavar="KIND",
                   help="nodes subnets namespaces pods services endpointslices networkpolicies")
    g.add_argument("names", nargs="*", metavar="NAME")
    _namespace_options(g)
    g.add_argument("-o", "--output", choices=("wide", "json", "yaml"))
    cluster.add_cluster_options(g, suppress=True)
    g.set_defaults(func=cmd_get)

    d = sub.add_parser("delete", help="delete objects by file or by kind and name")
    d.add_argument("kind", nargs="?", metavar="KIND")
    d.add_argument("names", nargs="*", metavar="NAME")
    d.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-")
    d.add_argument("-n", "--namespace")
    d.add_argument("--ignore-not-found", action="store_true")
    cluster.add_cluster_options(d, suppress=True)
    d.set_defaults(func=cmd_delete)


def _namespace_options(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("-n", "--namespace")
    group.add_argument("-A", "--all-namespaces", action="store_true")


# -- apply --------------------------------------------------------------------------------

def cmd_apply(args: argparse.Namespace, stdin: Any = None, out: Any = None) -> int:
    from podnet import manifests

    out = out or sys.stdout
    docs = manifests.load(args.filename, stdin)
    if not docs:
        raise CommandError("no objects passed to apply")
    objs = manifests.prepare(docs, args.namespace)
    store, _ = cluster.connect(args)
    if any(o["kind"] == "Pod" and (o.get("spec") or {}).get("nodeName") for o in objs):
        nodes, _rev = store.list("nodes")
        problems = manifests.check_node_names(docs, {n["metadata"]["name"] for n in nodes})
        if problems:
            raise manifests.ManifestError(problems)
    if args.dry_run:
        for obj in objs:
            print(f"{KINDS[obj['kind']].singular}/{obj['metadata']['name']} valid (dry run)", file=out)
        return 0
    for applied in store.apply_report(objs):
        obj = applied.obj
        print(f"{KINDS[obj['kind']].singular}/{obj['metadata']['name']} {applied.action}", file=out)
    return 0


# -- get ----------------------------------------------------------------------------------

def cmd_get(args: argparse.Namespace, out: Any = None, err: Any = None) -> int:
    from podnet import printers

    out, err = out or sys.stdout, err or sys.stderr
    resource = resolve_kind(args.kind)
    store, _ = cluster.connect(args)
    if resource == SUBNETS:
        return _get_subnets(store, args, out, err)
    info = RESOURCES[resource]
    all_ns = bool(args.all_namespaces) and info.namespaced
    namespace = None if all_ns else (args.namespace or "default")
    status = 0
    if args.names:
        objs = []
        for name in args.names:
            obj = store.get(resource, namespace, name)
            if obj is None:
                print(f'Error from server (NotFound): {resource} "{name}" not found', file=err)
                status = 1
            else:
                objs.append(obj)
    else:
        objs, _rev = store.list(resource, namespace if info.namespaced else None)
    if args.output in ("json", "yaml"):
        data: Any = objs[0] if len(args.names) == 1 and objs else printers.as_list(objs)
        if objs or not args.names:
            out.write(printers.render(data, args.output))
        return status
    if not objs:
        if not args.names:
            where = "" if all_ns or not info.namespaced else f" in {namespace} namespace"
            print(f"No resources found{where}.", file=err)
        return status
    leases = _lease_ips(store) if resource == "nodes" and args.output == "wide" else None
    out.write(printers.object_table(resource, objs, time.time(), wide=args.output == "wide",
                                    all_namespaces=all_ns, leases=leases))
    return status


def _lease_ips(store: Any) -> dict[str, str]:
    from flannel_py.subnet.registry import SubnetRegistry

    leases, _rev = SubnetRegistry(store.etcd).list_leases()
    return {str(le.attrs.public_ip): str(le.subnet) for le in leases}


def _get_subnets(store: Any, args: argparse.Namespace, out: Any, err: Any) -> int:
    from flannel_py.subnet.registry import SubnetRegistry
    from podnet import printers

    leases, _rev = SubnetRegistry(store.etcd).list_leases()
    if args.names:
        wanted = {n.replace("-", "/") for n in args.names}
        leases = [le for le in leases if str(le.subnet) in wanted]
    ttls = {le.lease_id: store.etcd.lease_ttl(le.lease_id) for le in leases if le.lease_id}
    rows = printers.subnet_rows(leases, ttls)
    if args.output in ("json", "yaml"):
        out.write(printers.render(rows, args.output))
        return 0
    if not rows:
        print("No resources found.", file=err)
        return 1 if args.names else 0
    out.write(printers.subnet_table(rows))
    return 0


# -- delete -------------------------------------------------------------------------------

def cmd_delete(args: argparse.Namespace, stdin: Any = None, out: Any = None, err: Any = None) -> int:
    out, err = out or sys.stdout, err or sys.stderr
    targets = _delete_targets(args, stdin)
    store, _ = cluster.connect(args)
    status = 0
    for resource, namespace, name in targets:
        if store.delete(resource, namespace, name):
            print(f'{RESOURCES[resource].singular} "{name}" deleted', file=out)
        elif not args.ignore_not_found:
            print(f'Error from server (NotFound): {resource} "{name}" not found', file=err)
            status = 1
    return status


def _delete_targets(args: argparse.Namespace, stdin: Any) -> list[tuple[str, str | None, str]]:
    from podnet import manifests

    if args.filename:
        if args.kind or args.names:
            raise CommandError("delete: give either -f FILE or KIND NAME, not both")
        docs = manifests.load(args.filename, stdin)
        problems = []
        targets = []
        for doc in docs:
            obj = doc.obj if isinstance(doc.obj, dict) else {}
            name = (obj.get("metadata") or {}).get("name") if isinstance(obj.get("metadata"), dict) else None
            if obj.get("kind") not in KINDS:
                problems.append(f"{doc.source}: {doc.label} : kind: Unsupported value: "
                                f"{obj.get('kind')!r}")
            elif not isinstance(name, str) or not name:
                problems.append(f"{doc.source}: {doc.label} : metadata.name: Required value")
            else:
                info = KINDS[obj["kind"]]
                ns = (obj["metadata"].get("namespace") or args.namespace or "default") \
                    if info.namespaced else None
                targets.append((info.resource, ns, name))
        if problems:
            raise manifests.ManifestError(problems)
        return targets
    if not args.kind or not args.names:
        raise CommandError("delete: give -f FILE, or KIND and NAME")
    resource = resolve_kind(args.kind)
    if resource == SUBNETS:
        raise CommandError("delete: subnets are flannel's leases; they are not deleted here")
    return [(resource, args.namespace or "default", name) for name in args.names]
