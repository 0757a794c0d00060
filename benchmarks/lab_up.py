"""How long the lab takes: `podnet lab up` until every node is ready, and 60 pods spread over
3 nodes from `podnet apply` until all are Running with an address. Prints JSON.

    python benchmarks/lab_up.py [--backend vxlan] [--pods 60] [--reps 3]

Each repetition brings a lab up and down again (`lab down` runs in finally), so nothing is
left behind. Targets (issue 4): lab up ≤ 10 s; 60 pods Running ≤ 15 s.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PODNET = [sys.executable, "-m", "podnet"]


def podnet(*args: str) -> str:
    proc = subprocess.run([*PODNET, *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"podnet {' '.join(args)}: {proc.stderr.strip()}")
    return proc.stdout


def pods_manifest(count: int) -> str:
    """``count`` pods without a node: the runners spread them over the nodes."""
    docs = []
    for i in range(count):
        docs.append(f"""apiVersion: v1
kind: Pod
metadata:
  name: bench-{i:03d}
  labels: {{app: bench}}
spec:
  containers:
  - name: serve
    image: podnet/serve-hostname
    ports: [{{containerPort: 8080}}]
""")
    return "---\n".join(docs)


def one(backend: str, nodes: int, count: int, name: str) -> dict[str, float]:
    t0 = time.monotonic()
    try:
        podnet("lab", "up", "--name", name, "--nodes", str(nodes), "--backend", backend)
        up = time.monotonic() - t0
        with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
            f.write(pods_manifest(count))
        try:
            t1 = time.monotonic()
            podnet("--lab", name, "apply", "-f", f.name)
            while True:
                items = json.loads(podnet("--lab", name, "get", "pods", "-o", "json"))["items"]
                ready = [p for p in items if p.get("status", {}).get("phase") == "Running"
                         and p["status"].get("podIP")]
                if len(ready) == count:
                    break
                if time.monotonic() - t1 > 120:
                    raise RuntimeError(f"only {len(ready)}/{count} pods Running after 120 s")
                time.sleep(0.1)
            pods = time.monotonic() - t1
            per_node: dict[str, int] = {}
            for p in ready:
                per_node[p["spec"]["nodeName"]] = per_node.get(p["spec"]["nodeName"], 0) + 1
        finally:
            os.unlink(f.name)
        return {"lab_up_s": round(up, 2), "pods_running_s": round(pods, 2), "per_node": per_node}
    finally:
        subprocess.run([*PODNET, "lab", "down", "--name", name], capture_output=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="vxlan", choices=["vxlan", "udp", "host-gw"])
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--pods", type=int, default=60)
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    runs = [one(args.backend, args.nodes, args.pods, f"bench-{i}") for i in range(args.reps)]
    print(json.dumps({
        "backend": args.backend, "nodes": args.nodes, "pods": args.pods, "runs": runs,
        "lab_up_median_s": statistics.median(r["lab_up_s"] for r in runs),
        "pods_running_median_s": statistics.median(r["pods_running_s"] for r in runs),
        "targets": {"lab_up_s": 10, "pods_running_s": 15},
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
