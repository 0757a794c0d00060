"""``macspoofchk``: drop frames from the pod's port whose source MAC is not the pod's.

The Go plugin's nftables layout (pkg/link/spoofcheck.go): table ``bridge nat``, base chain
``PREROUTING`` (filter hook, priority -300), a per-attachment chain
``cni-br-iface-<containerID>-<ifname>`` jumped to on ``iifname``, and ``…-mac`` that returns
for the pod's MAC and drops the rest. Rendered as one ``nft -f`` script, applied atomically.
"""
from __future__ import annotations

import json

from cni import spec
from cni.spec import CNIError

TABLE = "nat"
BASE_CHAIN = "PREROUTING"


def _names(ref: str) -> tuple[str, str, str]:
    iface_chain = "cni-br-iface-" + ref
    return iface_chain, iface_chain + "-mac", "macspoofchk-" + ref


def render_setup(host_iface: str, mac: str, ref: str) -> str:
    iface_chain, mac_chain, comment = _names(ref)
    q = json.dumps
    return "\n".join([
        f"add table bridge {TABLE}",
        f"add chain bridge {TABLE} {BASE_CHAIN} "
        "{ type filter hook prerouting priority -300 ; policy accept ; }",
        f"add chain bridge {TABLE} {iface_chain}",
        f"add chain bridge {TABLE} {mac_chain}",
        f"flush chain bridge {TABLE} {iface_chain}",
        f"flush chain bridge {TABLE} {mac_chain}",
        f"add rule bridge {TABLE} {BASE_CHAIN} iifname {q(host_iface)} jump {iface_chain} "
        f"comment {q(comment)}",
        f"add rule bridge {TABLE} {iface_chain} jump {mac_chain} comment {q(comment)}",
        f"add rule bridge {TABLE} {mac_chain} ether saddr {mac} return comment {q(comment)}",
        f"add rule bridge {TABLE} {mac_chain} drop comment {q(comment)}",
    ]) + "\n"


def _nft(args: list[str], script: str | None = None):
    import subprocess
    try:
        return subprocess.run(["nft", *args], input=script, capture_output=True, text=True)
    except OSError as e:
        raise CNIError(spec.INTERNAL, f"failed to run nft: {e}") from None


def setup(host_iface: str, mac: str, ref: str) -> None:
    proc = _nft(["-f", "-"], render_setup(host_iface, mac, ref))
    if proc.returncode != 0:
        raise CNIError(spec.INTERNAL, f"failed to setup spoof-check: {proc.stderr.strip()}")


def teardown(ref: str) -> None:
    """Delete the jump rule (found by its comment and handle) and both chains, if present."""
    iface_chain, mac_chain, comment = _names(ref)
    listing = _nft(["-a", "list", "chain", "bridge", TABLE, BASE_CHAIN])
    lines = []
    if listing.returncode == 0:
        for line in listing.stdout.splitlines():
            if f"jump {iface_chain} " in line + " " and "# handle " in line:
                handle = line.rsplit("# handle ", 1)[1].strip()
                lines.append(f"delete rule bridge {TABLE} {BASE_CHAIN} handle {handle}")
    chains = _nft(["list", "table", "bridge", TABLE])
    if chains.returncode == 0:
        for chain in (iface_chain, mac_chain):
            if f"chain {chain} " in chains.stdout:
                lines.append(f"delete chain bridge {TABLE} {chain}")
    if lines:
        proc = _nft(["-f", "-"], "\n".join(lines) + "\n")
        if proc.returncode != 0:
            raise CNIError(spec.INTERNAL, f"failed to teardown spoof-check: {proc.stderr.strip()}")
