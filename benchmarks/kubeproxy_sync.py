"""Sync benchmark for kube-proxy's iptables mode (issue 5): N Services × M endpoints applied
to one throwaway node namespace, for each iptables variant. Prints one JSON object.

    .venv/bin/python benchmarks/kubeproxy_sync.py [--services 10000] [--endpoints 5]
        [--variants nft,legacy] [--chunks 200] [--curve 100,250,500]

Per variant, beside the syncer's numbers, ``reference`` gives the tools' own cost in the same
run: the whole payload fed to the restore tool in one call, and one rule added to the loaded
table. Per variant: ``render_s`` (the renderer alone), ``full_sync_s`` (the first sync into an empty
namespace: render + restore), ``partial_sync_s`` (median of ``--partials`` syncs, each after
one endpoint of one Service changed), ``resync_s`` (a periodic full resync over the same
state). ``--curve`` repeats the first full sync on nft with other chunk sizes. Runs as root;
every namespace is deleted in ``finally``.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.kubeproxy_render import generate  # noqa: E402
from kubeproxy_py.iptables.apply import IptablesSyncer  # noqa: E402
from kubeproxy_py.iptables.render import render  # noqa: E402
from kubeproxy_py.model import Endpoint, ProxyOptions, parse_endpoint_slices, parse_services  # noqa: E402
from podnet import netns  # noqa: E402


def _rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _tool(ns: str, argv: list[str], stdin: str = "") -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(argv, input=stdin, text=True, capture_output=True,
                          preexec_fn=netns.preexec(ns))
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]}: {proc.stderr.strip()}")
    return time.perf_counter() - t0


def reference(variant: str, payload: str, loaded_ns: str) -> dict:
    """What the tools alone cost, the yardstick for the syncer's numbers: the whole payload
    fed straight to the restore tool in one call (a fresh namespace), and one rule added to
    the loaded table (restore with one ``-A``; for nft also plain ``nft add rule``)."""
    ns = f"kpref-{uuid.uuid4().hex[:8]}"
    netns.create(ns)
    try:
        out = {"bare_restore_full_s": round(_tool(ns, [f"iptables-{variant}-restore", "--noflush"],
                                                  payload), 3)}
    finally:
        netns.remove(ns)
    one = "*nat\n:KUBE-SEP-REFERENCEAAAAAAA - [0:0]\n-A KUBE-SEP-REFERENCEAAAAAAA -j RETURN\nCOMMIT\n"
    out["bare_restore_one_rule_s"] = round(_tool(loaded_ns, [f"iptables-{variant}-restore",
                                                             "--noflush"], one), 4)
    if variant == "nft":
        out["nft_add_one_rule_s"] = round(_tool(loaded_ns, ["nft", "add", "rule", "ip", "nat",
                                                            "KUBE-SEP-REFERENCEAAAAAAA", "return"]), 4)
    _tool(loaded_ns, [f"iptables-{variant}-restore", "--noflush"],
          "*nat\n:KUBE-SEP-REFERENCEAAAAAAA - [0:0]\n-X KUBE-SEP-REFERENCEAAAAAAA\nCOMMIT\n")
    return out


def one_run(variant: str, ports, eps, opts, chunk: int, partials: int) -> dict:
    ns = f"kpbench-{uuid.uuid4().hex[:8]}"
    netns.create(ns)
    try:
        syncer = IptablesSyncer(opts, netns=ns, variant=variant, chunk_services=chunk)
        t0 = time.perf_counter()
        first = syncer.sync(ports, eps)
        full_s = time.perf_counter() - t0
        out = {"full_sync_s": round(full_s, 3), "transactions": first.transactions,
               "rules": first.rules, "chains": first.chains}
        if partials:
            key = ports[len(ports) // 2].key
            original = list(eps[key])
            times = []
            for i in range(partials):
                e = original[0]
                moved = Endpoint.for_port(key, f"10.250.{i // 250}.{i % 250 + 1}", e.port,
                                          node_name=e.node_name)
                eps[key] = sorted([moved, *original[1:]], key=lambda x: x.text)
                t0 = time.perf_counter()
                r = syncer.sync(ports, eps)
                times.append(time.perf_counter() - t0)
                assert r.partial and r.services_written == 1 and r.deleted_chains == 1, r
            eps[key] = original
            out["partial_sync_s"] = round(statistics.median(times), 4)
            out["partial_sync_max_s"] = round(max(times), 4)
            t0 = time.perf_counter()
            syncer.sync(ports, eps, full=True)
            out["resync_s"] = round(time.perf_counter() - t0, 3)
            out["reference"] = reference(variant, syncer.dry_run(ports, eps), ns)
        return out
    finally:
        netns.remove(ns)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--variants", default="nft,legacy")
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--partials", type=int, default=5)
    ap.add_argument("--curve", default="", help="extra nft chunk sizes, e.g. 100,500,1000")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("needs root (creates a network namespace)", file=sys.stderr)
        return 2

    services, slices = generate(args.services, args.endpoints)
    ports = parse_services(services)
    eps = parse_endpoint_slices(slices)
    del services, slices
    gc.collect()
    opts = ProxyOptions(node_name="node0", cluster_cidr="10.128.0.0/10")
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        render(ports, eps, opts)
        times.append(time.perf_counter() - t0)
    result: dict = {"benchmark": "kubeproxy_sync", "services": args.services,
                    "endpoints_per_service": args.endpoints, "chunk_services": args.chunks,
                    "render_s": round(statistics.median(times), 3)}
    for variant in args.variants.split(","):
        result[variant] = one_run(variant, ports, eps, opts, args.chunks, args.partials)
    if args.curve:
        result["nft_chunk_curve"] = {
            int(c): one_run("nft", ports, eps, opts, int(c), 0)["full_sync_s"]
            for c in args.curve.split(",")}
    result["peak_rss_mb"] = _rss_mb()
    result["targets"] = {"full_sync_s": {"nft": 5.0, "legacy": 2.5}, "partial_sync_s_nft": 0.05,
                         "render_s": 0.5, "rss_mb": 300}
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
