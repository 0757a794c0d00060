"""Render benchmark for kube-proxy's iptables layout (issue 5): N Services × M endpoints,
generated in memory as API dicts, parsed, then rendered. Prints one JSON object.

    .venv/bin/python benchmarks/kubeproxy_render.py [--services 10000] [--endpoints 5]

``render_s`` is the median of ``--repeat`` renders of the parsed model (the part a sync pays
every time); ``parse_s`` is parsing the dicts once (paid when objects arrive, as upstream
pays it in its change trackers). Apply/sync timings come with the applier.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kubeproxy_py.iptables.render import render  # noqa: E402
from kubeproxy_py.model import ProxyOptions, parse_endpoint_slices, parse_services  # noqa: E402


def generate(n_services: int, n_endpoints: int, nodes: int = 3) -> tuple[list[dict], list[dict]]:
    services, slices = [], []
    for i in range(n_services):
        ns, name = f"ns{i % 50}", f"svc{i}"
        services.append({
            "metadata": {"namespace": ns, "name": name},
            "spec": {"type": "ClusterIP", "clusterIP": f"10.96.{i // 256 % 256}.{i % 256}",
                     "ports": [{"name": "http", "port": 80, "protocol": "TCP"}]},
        })
        eps = []
        for j in range(n_endpoints):
            k = i * n_endpoints + j
            eps.append({"addresses": [f"10.{128 + k // 65536 % 64}.{k // 256 % 256}.{k % 256}"],
                        "conditions": {"ready": True}, "nodeName": f"node{k % nodes}"})
        slices.append({
            "metadata": {"namespace": ns, "name": f"{name}-abcde",
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4", "endpoints": eps,
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        })
    return services, slices


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--services", type=int, default=10000)
    ap.add_argument("--endpoints", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="print a cProfile of one render")
    args = ap.parse_args(argv)

    services, slices = generate(args.services, args.endpoints)
    t0 = time.perf_counter()
    ports = parse_services(services)
    eps = parse_endpoint_slices(slices)
    parse_s = time.perf_counter() - t0
    del services, slices
    opts = ProxyOptions(node_name="node0", cluster_cidr="10.128.0.0/10")
    times = []
    result = None
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        result = render(ports, eps, opts)
        times.append(time.perf_counter() - t0)
    assert result is not None
    if args.profile:
        import cProfile
        import pstats
        cProfile.runctx("render(ports, eps, opts)", globals(), locals(), "/tmp/kp_render.prof")
        pstats.Stats("/tmp/kp_render.prof", stream=sys.stderr).sort_stats("tottime").print_stats(12)
    nat_chains = result.text.split("*nat", 1)[1].count("\n:")
    print(json.dumps({
        "benchmark": "kubeproxy_render",
        "services": args.services,
        "endpoints_per_service": args.endpoints,
        "parse_s": round(parse_s, 3),
        "render_s": round(statistics.median(times), 3),
        "render_min_s": round(min(times), 3),
        "rules_filter": result.filter_rules,
        "rules_nat": result.nat_rules,
        "nat_chains": nat_chains,
        "payload_bytes": len(result.text),
        "large_cluster_mode": result.large_cluster,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "target_render_s": 0.5,
        "target_rss_mb": 300,
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
