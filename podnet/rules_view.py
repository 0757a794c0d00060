"""What a node's kernel holds, printed the way ``ip`` and ``bridge`` print it (pure formatters)
plus the reader behind ``podnet rules --node``."""
from __future__ import annotations

from typing import Iterable

from podnet import rtnl

NUD_PERMANENT = 0x80
WHAT = ("routes", "neigh", "fdb", "iptables", "ipset", "ipvs")


def _dev(index: int | None, names: dict[int, str]) -> str:
    return names.get(index or 0, f"if{index}")


def format_route(r: rtnl.Route, names: dict[int, str]) -> str:
    dst = "default" if r.dst in ("0.0.0.0/0", "::/0") else r.dst
    parts = [dst]
    if r.gateway:
        parts += ["via", r.gateway]
    if r.oif:
        parts += ["dev", _dev(r.oif, names)]
    if r.prefsrc:
        parts += ["src", r.prefsrc]
    if r.onlink:
        parts.append("onlink")
    return " ".join(parts)


def format_neigh(n: rtnl.Neigh, names: dict[int, str]) -> str:
    parts = [n.address or "?", "dev", _dev(n.index, names)]
    if n.mac:
        parts += ["lladdr", n.mac]
    if n.state & NUD_PERMANENT:
        parts.append("PERMANENT")
    return " ".join(parts)


def format_fdb(n: rtnl.Neigh, names: dict[int, str]) -> str:
    parts = [n.mac or "?", "dev", _dev(n.index, names)]
    if n.dst:
        parts += ["dst", n.dst]
    if n.state & NUD_PERMANENT:
        parts.append("permanent")
    return " ".join(parts)


def section(title: str, lines: Iterable[str]) -> str:
    body = list(lines)
    return f"== {title} ==\n" + ("\n".join(body) if body else "(none)") + "\n"


def read(netns_name: str, what: str = "all") -> str:
    """The node's state as text; ``what`` is one of WHAT or ``all``."""
    wanted = WHAT if what == "all" else (what,)
    out = []
    with rtnl.RTNL(netns=netns_name) as h:
        links = h.links()
        names = {l.index: l.name for l in links}
        if "routes" in wanted:
            routes = sorted(h.routes(), key=lambda r: (r.family, r.dst))
            out.append(section("routes", (format_route(r, names) for r in routes
                                          if not r.dst.startswith(("fe80", "ff00")))))
        if "neigh" in wanted:
            neigh = [n for n in h.neighs() if n.state & NUD_PERMANENT]
            out.append(section("neighbours (permanent)", (format_neigh(n, names) for n in neigh)))
        if "fdb" in wanted:
            fdb = []
            for link in links:
                if link.kind == "vxlan":
                    fdb += [format_fdb(n, names) for n in h.fdbs(link.index) if n.dst]
            out.append(section("fdb (vxlan)", fdb))
    if "iptables" in wanted:
        from podnet import iptables
        for table in ("nat", "filter"):
            text = iptables.save(table, netns=netns_name)
            rules = [l for l in text.splitlines() if l.startswith(("-A", ":")) and not l.startswith(
                (":INPUT", ":OUTPUT", ":FORWARD", ":PREROUTING", ":POSTROUTING"))]
            out.append(section(f"iptables -t {table}", rules))
    if "ipset" in wanted:
        out.append(section("ipset", ["(no NetworkPolicy agent in this lab yet)"]))
    if "ipvs" in wanted:
        out.append(section("ipvs", ["(IPVS is not available on this kernel; see DESIGN.md)"]))
    return "\n".join(out)
