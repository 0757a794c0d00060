#!/usr/bin/env bash
# Provision one podnet node:  provision.sh NODE_NAME NODE_IP
#
# Runs as root on a Debian 12 VM with the repository at /podnet (see vagrant/Vagrantfile):
#   1. packages and the virtualenv        scripts/setup.sh
#   2. on the etcd node (node-1)          podnet node etcd-unit   → podnet-etcd.service
#                                         podnet node init-network (/coreos.com/network/config)
#   3. on every node                      podnet node setup       → /opt/cni/bin,
#        /etc/cni/net.d/10-flannel.conflist, podnet-cni, flanneld and podnet-runner units
# Step 3 is the bootstrap `podnet lab up` runs for each of its nodes (podnet/node.py).
#
# Environment (defaults for the Vagrant VMs):
#   ETCD_NAME=node-1  ETCD_IP=192.168.56.11  IFACE=eth1  BACKEND=vxlan  PODNET_REPO=/podnet
#   PODNET=$PODNET_REPO/.venv/bin/podnet   the podnet command
#   PODNET_ROOT=DIR      stage every file under DIR and run no systemctl (for tests)
#   PODNET_SKIP_SETUP=1  skip step 1 (podnet already installed)
set -euo pipefail

NODE_NAME=${1:?usage: provision.sh NODE_NAME NODE_IP}
NODE_IP=${2:?usage: provision.sh NODE_NAME NODE_IP}
REPO=${PODNET_REPO:-/podnet}
ETCD_NAME=${ETCD_NAME:-node-1}
ETCD_IP=${ETCD_IP:-192.168.56.11}
ETCD_ENDPOINTS=${ETCD_ENDPOINTS:-http://$ETCD_IP:2379}
IFACE=${IFACE:-eth1}
BACKEND=${BACKEND:-vxlan}
ROOT=${PODNET_ROOT:-}
PODNET=${PODNET:-$REPO/.venv/bin/podnet}

step() { echo "==> $NODE_NAME: $*"; }

root_args=()
if [ -n "$ROOT" ]; then
    root_args=(--root "$ROOT")
fi

if [ -z "${PODNET_SKIP_SETUP:-}" ]; then
    step "packages and the virtualenv (scripts/setup.sh)"
    bash "$REPO/scripts/setup.sh"
fi

if [ -z "$ROOT" ]; then
    # Debian's etcd-server package starts its own etcd on localhost; podnet runs its own
    # member (podnet-etcd.service) on node-1 and none elsewhere.
    systemctl disable --now etcd.service >/dev/null 2>&1 || true
    ln -sf "$PODNET" /usr/local/bin/podnet
    echo "export PODNET_ETCD_ENDPOINTS=$ETCD_ENDPOINTS" >/etc/profile.d/podnet.sh
fi

if [ "$NODE_NAME" = "$ETCD_NAME" ]; then
    step "etcd on $NODE_IP (podnet-etcd.service)"
    "$PODNET" node etcd-unit --name "$NODE_NAME" --ip "$NODE_IP" "${root_args[@]}"
    step "flannel network config ($BACKEND) into etcd"
    "$PODNET" node init-network --etcd-endpoints "$ETCD_ENDPOINTS" --backend "$BACKEND"
fi

step "CNI plugins, conflist, flanneld, CNI daemon and pod runner (--iface $IFACE)"
"$PODNET" node setup --name "$NODE_NAME" --etcd-endpoints "$ETCD_ENDPOINTS" \
    --iface "$IFACE" --ip "$NODE_IP" "${root_args[@]}"
step "done"
