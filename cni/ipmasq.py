"""bridge's ip-masq rules: the Go plugin's chain layout, rendered as iptables-restore text.

Per container: a nat chain ``CNI-<sha512(network+containerID)>`` that ACCEPTs traffic to the
pod's own network and MASQUERADEs the rest (multicast excepted), jumped to from POSTROUTING
for the pod's address. Set-up and teardown are each one atomic restore.
"""
from __future__ import annotations

import ipaddress

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable

from cni.names import chain_name, comment

MULTICAST = {4: "224.0.0.0/4", 6: "ff00::/8"}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_setup(network: str, container_id: str, addresses: Iterable[str], family: int) -> str:
    """Restore payload (nat table) masquerading the pod's ``addresses`` of one IP family."""
    chain = chain_name(network, container_id)
    note = _quote(comment(network, container_id))
    host_bits = 32 if family == 4 else 128
    lines = ["*nat", f":{chain} - [0:0]"]
    nets, hosts = [], []
    for cidr in addresses:
        iface = ipaddress.ip_interface(cidr)
        if iface.version != family:
            continue
        nets.append(str(iface.network))
        hosts.append(f"{iface.ip}/{host_bits}")
    for net in dict.fromkeys(nets):
        lines.append(f"-A {chain} -d {net} -m comment --comment {note} -j ACCEPT")
    lines.append(f"-A {chain} ! -d {MULTICAST[family]} -m comment --comment {note} -j MASQUERADE")
    for host in hosts:
        lines.append(f"-A POSTROUTING -s {host} -m comment --comment {note} -j {chain}")
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"


def render_teardown(network: str, container_id: str, nat_save: str) -> str | None:
    """Restore payload deleting the pod's chain and every jump to it found in ``nat_save``.

    ``nat_save`` is ``iptables-save -t nat`` output; reading it is needed because DEL may come
    after the pod's netns (and so its address) is gone. None when there is nothing to remove.
    """
    import re
    chain = chain_name(network, container_id)
    jump = re.compile(rf"^-A (\S+) (.* )?-j {re.escape(chain)}( |$)")
    has_chain = any(line.startswith(f":{chain} ") for line in nat_save.splitlines())
    deletes = ["-D" + line[2:] for line in nat_save.splitlines() if jump.match(line)]
    if not has_chain and not deletes:
        return None
    lines = ["*nat", *deletes]
    if has_chain:
        lines += [f"-F {chain}", f"-X {chain}"]
    lines.append("COMMIT")
    return "\n".join(lines) + "\n"
