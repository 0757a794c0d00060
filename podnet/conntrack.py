"""The one conntrack layer: delete stale flow entries with the ``conntrack`` tool.

kube-proxy needs this for UDP: a datagram flow keeps its DNAT decision as long as packets
keep coming, so when an endpoint goes away its entries must be deleted or the client keeps
sending into the void. Entries are selected the way upstream's ``conntrack.ClearEntries*``
select them: by original destination (the Service's IP or node port) and NAT destination
(the endpoint's IP). The tool runs inside ``netns`` when one is given.
"""
from __future__ import annotations

import logging
import shutil
import subprocess
from typing import Callable, Sequence

log = logging.getLogger(__name__)

Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


class Conntrack:
    def __init__(self, netns: str | None = None, *, runner: Runner | None = None,
                 binary: str = "conntrack") -> None:
        self.netns = netns
        self.binary = binary
        self._run = runner or self._subprocess
        self._missing_logged = False

    def _subprocess(self, argv: Sequence[str]) -> subprocess.CompletedProcess:
        preexec = None
        if self.netns:
            from podnet import netns
            preexec = netns.preexec(self.netns)
        return subprocess.run(list(argv), capture_output=True, text=True, preexec_fn=preexec)

    def _delete(self, args: list[str]) -> int:
        """Run ``conntrack -D args``; the number of entries deleted (0 when none matched)."""
        if self._run is self._subprocess and shutil.which(self.binary) is None:
            if not self._missing_logged:
                log.warning("%s not found: stale UDP flows are not flushed", self.binary)
                self._missing_logged = True
            return 0
        proc = self._run([self.binary, "-D", *args])
        # conntrack exits 1 with "0 flow entries have been deleted" when nothing matched.
        text = (proc.stderr or "") + (proc.stdout or "")
        for line in text.splitlines():
            if "flow entries have been deleted" in line:
                try:
                    return int(line.split()[-6])
                except (ValueError, IndexError):
                    return 0
        if proc.returncode not in (0, 1):
            log.warning("conntrack -D %s failed: %s", " ".join(args), text.strip())
        return 0

    def clear_service_ip(self, ip: str, protocol: str = "udp") -> int:
        """Every flow to ``ip`` (e.g. a Service that had no endpoints and now has some)."""
        return self._delete(["-p", protocol, "--orig-dst", ip])

    def clear_nat(self, orig_dst: str, endpoint_ip: str, protocol: str = "udp") -> int:
        """Flows to ``orig_dst`` that were DNATed to ``endpoint_ip``."""
        return self._delete(["-p", protocol, "--orig-dst", orig_dst, "--dst-nat", endpoint_ip])

    def clear_port_nat(self, port: int, endpoint_ip: str, protocol: str = "udp") -> int:
        """Flows to node port ``port`` (any local address) DNATed to ``endpoint_ip``."""
        return self._delete(["-p", protocol, "--dport", str(port), "--dst-nat", endpoint_ip])
