#!/usr/bin/env bash
# Set up podnet on a fresh Debian 12 machine: system packages, a virtualenv in .venv, and
# podnet installed into it in editable mode with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
APT_PACKAGES=(
    iproute2 iptables nftables ipset iputils-ping conntrack procps kmod
    etcd-server etcd-client
    golang-go golang-github-appc-cni-dev containernetworking-plugins
    iperf3 ruby
    python3 python3-venv python3-dev gcc
)
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    missing=()
    for p in "${APT_PACKAGES[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "setup: installing ${missing[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
fi
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
.venv/bin/pip install -q --upgrade pip >/dev/null
.venv/bin/pip install -q -e '.[test]'
echo "setup: done (.venv/bin/podnet, .venv/bin/flanneld)"
