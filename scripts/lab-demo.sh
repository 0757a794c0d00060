#!/usr/bin/env bash
# The main job: a 3-node lab, a pod on every node, every pod pair probed over TCP and UDP,
# the backend's routes shown — then everything removed again.
#   bash scripts/lab-demo.sh [vxlan|udp|host-gw]
set -euo pipefail
cd "$(dirname "$0")/.."
PODNET=.venv/bin/podnet
BACKEND=${1:-vxlan}
LAB=demo
trap '$PODNET lab down --name $LAB' EXIT
$PODNET lab up --name $LAB --nodes 3 --backend "$BACKEND"
$PODNET --lab $LAB apply -f examples/pods-on-nodes.yaml
for _ in $(seq 1 150); do
    running=$($PODNET --lab $LAB get pods 2>/dev/null | grep -c Running || true)
    [ "$running" -ge 3 ] && break
    sleep 0.2
done
$PODNET --lab $LAB get pods -o wide
for target in pod-2 pod-3; do   # ping from node-1's pod to the pods on the other nodes
    ip=$($PODNET --lab $LAB get pod $target -o json | .venv/bin/python -c 'import json,sys; print(json.load(sys.stdin)["status"]["podIP"])')
    $PODNET --lab $LAB exec pod-1 -- ping -c 2 -W 1 "$ip"
done
$PODNET --lab $LAB probe-matrix --port 8080
$PODNET --lab $LAB probe-matrix --port 8080 --protocol UDP
$PODNET --lab $LAB rules --node node-1 --what routes
