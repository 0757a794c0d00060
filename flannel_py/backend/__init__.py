"""flanneld's backends: how a node's pod subnet is connected to the other nodes' subnets.

Every backend is level-triggered (DESIGN "Reconcile, don't replay"): the daemon hands it the
complete set of *remote* leases whenever that set changes (and on a periodic resync), and the
backend converges the kernel to the state those leases imply. Desired state is computed by
pure functions (golden-tested); a small applier diffs it against what it last applied and
against the kernel, and changes only what differs.
"""
from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any, Protocol, Sequence

from flannel_py.config import Config
from flannel_py.subnet.registry import Lease


@dataclass(frozen=True)
class ExternalInterface:
    """The node's underlay interface (``--iface``) and the addresses flanneld uses on it."""
    name: str
    index: int
    iface_addr: IPv4Address      # the address on the interface (bind/encap source)
    public_ip: IPv4Address       # what other nodes reach us at (``--public-ip``, default iface_addr)
    mtu: int


class Backend(Protocol):
    """What the daemon needs from a backend. Created per daemon run, in the node's netns."""

    type: str                    # "udp" | "vxlan" | "host-gw" (the lease's BackendType)

    def backend_data(self) -> Any:
        """JSON-able ``BackendData`` for our own lease (e.g. ``{"VNI": 1, "VtepMAC": "…"}``),
        or None. Called before the lease is acquired (vxlan creates its device first)."""

    def mtu(self) -> int:
        """``FLANNEL_MTU`` for subnet.env (e.g. link MTU − 50 for vxlan, − 28 for udp)."""

    def start(self, own: Lease, config: Config) -> None:
        """Bring up the local side for our lease (devices, addresses, loops). Idempotent:
        a restarted flanneld must adopt compatible existing state without disruption."""

    def reconcile(self, remote: Sequence[Lease]) -> None:
        """Converge routes/neighbours/FDB (and the udp route table) to exactly ``remote``:
        add what is missing, replace what changed, remove what no lease needs any more."""

    def stop(self) -> None:
        """Stop threads/loops. Leaves kernel state in place (a restart must not disrupt)."""
