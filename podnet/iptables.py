"""The one iptables layer: render restore payloads, apply them atomically, read tables back.

Everything in podnet that programs iptables goes through here; no other module runs an
iptables binary. The layer

* detects the variant (``nft`` or ``legacy``) the namespace already uses, as kube-proxy's
  iptables-wrapper does, and then only ever runs that variant's tools;
* feeds whole payloads to ``iptables-restore --noflush --wait`` in one call each, so a change
  is all-or-nothing;
* on failure, raises :class:`IptablesError` quoting the numbered payload lines around the
  line the kernel refused, and retries only when another process held the xtables lock.

``render`` is the pure half: data in, deterministic restore text out (tables and chains
sorted, rule order within a chain kept, because order is meaning there).
"""
from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import random
import re
import shlex
import subprocess
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, Mapping, Sequence

log = logging.getLogger(__name__)

VARIANTS = ("nft", "legacy")
BUILTIN_CHAINS = {
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
    "raw": ("PREROUTING", "OUTPUT"),
    "security": ("INPUT", "FORWARD", "OUTPUT"),
}
_ALL_BUILTINS = frozenset(c for chains in BUILTIN_CHAINS.values() for c in chains)
MAX_CHAIN_NAME = 28

LOCK_PATH = "/run/podnet/iptables.lock"
# How long iptables itself waits for the xtables lock per attempt (seconds), and our retries.
XTABLES_WAIT = 5
MAX_ATTEMPTS = 6
BACKOFF_BASE = 0.05
BACKOFF_CAP = 1.0

_LINE_RE = re.compile(r"line:?\s+(\d+)")
_MISSING_RE = re.compile(r"does not exist|Couldn't load target|No chain/target/match")
_LOCK_RE = re.compile(r"xtables lock|holding the xtables", re.IGNORECASE)


class IptablesError(Exception):
    """An iptables tool failed. ``line`` is the failing payload line (1-based), if known."""

    def __init__(self, message: str, *, returncode: int = 1, stderr: str = "",
                 line: int | None = None, context: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr
        self.line = line
        self.context = context


@dataclass
class Completed:
    """What a runner returns (the subset of ``subprocess.CompletedProcess`` used here)."""

    returncode: int
    stdout: str = ""
    stderr: str = ""


# A runner executes argv (optionally feeding ``input`` on stdin) and returns a Completed.
Runner = Callable[[Sequence[str], "str | None"], Completed]


# --- pure helpers ------------------------------------------------------------------------


def quote_arg(arg: str) -> str:
    """Quote one argument the way iptables-save does, so iptables-restore reads it back."""
    if arg and not re.search(r"[\s\"'\\#]", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def join_rule(args: Sequence[str]) -> str:
    """Turn an argument list (as for the iptables command) into one restore-line tail."""
    return " ".join(quote_arg(a) for a in args)


@dataclass(frozen=True)
class Rule:
    """A rule placed into a chain this payload does not rewrite whole (e.g. a built-in).

    ``position`` is ``"append"``, ``"insert"`` (at the top) or an int (1-based slot).
    """

    table: str
    chain: str
    spec: str
    position: str | int = "append"

    def line(self) -> str:
        if self.position == "append":
            return f"-A {self.chain} {self.spec}"
        if self.position == "insert":
            return f"-I {self.chain} 1 {self.spec}"
        if isinstance(self.position, int) and self.position > 0:
            return f"-I {self.chain} {self.position} {self.spec}"
        raise ValueError(f"bad rule position {self.position!r}")


def _check_chain_name(chain: str) -> None:
    if not chain or len(chain) > MAX_CHAIN_NAME or any(c.isspace() for c in chain):
        raise ValueError(f"invalid chain name {chain!r}")


def render(tables: Mapping[str, Mapping[str, Sequence[str]]], *,
           flush_chains: Iterable[tuple[str, str]] = (),
           delete_chains: Iterable[tuple[str, str]] = (),
           builtin_jumps: Iterable[Rule] = (),
           delete_rules: Iterable[tuple[str, str, str]] = ()) -> str:
    """Render a ``--noflush`` restore payload.

    * ``tables[table][chain]`` — chains owned whole: declared (which creates or flushes
      them) and then filled with ``-A chain <rule>`` in the given order.
    * ``flush_chains`` — ``(table, chain)`` declared with no rules: created if missing,
      emptied if present.
    * ``delete_chains`` — ``(table, chain)`` declared then ``-X``-ed: gone afterwards
      whether or not it existed (kube-proxy's idiom). References must be removed too.
    * ``delete_rules`` — ``(table, chain, spec)`` emitted as ``-D chain spec`` before the
      deletions; the rule must exist, or the whole payload fails.
    * ``builtin_jumps`` — :class:`Rule` objects added to chains not owned whole (built-in
      or shared chains); emitted last, in the given order, duplicates dropped.

    Output is sorted by table, then chain, so equal input gives byte-equal text.
    """
    declared: dict[str, set[str]] = {}
    owned: dict[str, dict[str, Sequence[str]]] = {}
    for table, chains in tables.items():
        for chain, rules in chains.items():
            if chain in _ALL_BUILTINS:
                raise ValueError(f"built-in chain {chain} cannot be owned whole; use builtin_jumps")
            _check_chain_name(chain)
            owned.setdefault(table, {})[chain] = rules
            declared.setdefault(table, set()).add(chain)
    for table, chain in flush_chains:
        _check_chain_name(chain)
        declared.setdefault(table, set()).add(chain)
    deleted: dict[str, set[str]] = {}
    for table, chain in delete_chains:
        _check_chain_name(chain)
        declared.setdefault(table, set()).add(chain)
        deleted.setdefault(table, set()).add(chain)
    dels: dict[str, list[str]] = {}
    for table, chain, spec in delete_rules:
        line = f"-D {chain} {spec}"
        if line not in dels.setdefault(table, []):
            dels[table].append(line)
    jumps: dict[str, list[str]] = {}
    for rule in builtin_jumps:
        line = rule.line()
        if line not in jumps.setdefault(rule.table, []):
            jumps[rule.table].append(line)
    for table in deleted:
        clash = deleted[table] & set(owned.get(table, {}))
        if clash:
            raise ValueError(f"chains both written and deleted in {table}: {sorted(clash)}")

    out: list[str] = []
    for table in sorted(set(declared) | set(dels) | set(jumps)):
        out.append(f"*{table}")
        for chain in sorted(declared.get(table, ())):
            out.append(f":{chain} - [0:0]")
        out.extend(dels.get(table, ()))
        for chain in sorted(deleted.get(table, ())):
            out.append(f"-X {chain}")
        for chain in sorted(owned.get(table, {})):
            out.extend(f"-A {chain} {rule}" for rule in owned[table][chain])
        out.extend(jumps.get(table, ()))
        out.append("COMMIT")
    return "\n".join(out) + "\n" if out else ""


def jump_rules_to(save_text: str, target: str) -> list[tuple[str, str]]:
    """``(chain, spec)`` of every rule in ``iptables-save`` text that jumps or goes to
    ``target``. The spec is save's canonical text, so ``-D chain spec`` removes exactly it.
    """
    found = []
    for line in save_text.splitlines():
        if not line.startswith("-A "):
            continue
        _, chain, spec = line.split(" ", 2)
        words = spec.split()
        for i, word in enumerate(words[:-1]):
            if word in ("-j", "-g", "--jump", "--goto") and words[i + 1] == target:
                found.append((chain, spec))
                break
    return found


def chains_in(save_text: str) -> set[str]:
    """Names of the chains (built-in and user) declared in ``iptables-save`` text."""
    return {line[1:].split(" ", 1)[0] for line in save_text.splitlines() if line.startswith(":")}


def has_own_content(save_text: str) -> bool:
    """True when a save output shows anything beyond empty built-in chains."""
    for line in save_text.splitlines():
        if line.startswith("-"):
            return True
        if line.startswith(":") and line[1:].split(" ", 1)[0] not in _ALL_BUILTINS:
            return True
    return False


def failing_line(stderr: str) -> int | None:
    """The payload line iptables-restore blamed ("line N failed", "Error occurred at line: N")."""
    m = _LINE_RE.search(stderr)
    return int(m.group(1)) if m else None


def format_context(payload: str, line: int, radius: int = 3) -> str:
    """The numbered payload lines around ``line``, the failing one marked with ``>``."""
    lines = payload.splitlines()
    lo, hi = max(1, line - radius), min(len(lines), line + radius)
    width = len(str(hi))
    return "\n".join(
        f"{'>' if n == line else ' '} {n:>{width}} | {lines[n - 1]}" for n in range(lo, hi + 1)
    )


def is_lock_error(stderr: str) -> bool:
    return bool(_LOCK_RE.search(stderr))


# --- running the tools --------------------------------------------------------------------


def netns_path(netns: str | None) -> str | None:
    """A netns given by name (``ip netns``) or path, as a path."""
    if not netns:
        return None
    from podnet import netns as _netns
    return _netns.path(netns)


def _netns_key(path: str | None) -> tuple[int, int, int]:
    st = os.stat(path or "/proc/thread-self/ns/net")
    return (os.getpid(), st.st_dev, st.st_ino)


# Larger payloads go to the tool through a memory file rather than a pipe: subprocess feeds a
# pipe 4 KiB per poll() round, which for kube-proxy's 17 MB payload cost 0.9 s on its own.
_PIPE_LIMIT = 1 << 16


def _stdin_file(data: str):
    f = os.fdopen(os.memfd_create("podnet-restore", os.MFD_CLOEXEC), "w+b")
    f.write(data.encode())
    f.seek(0)
    return f


def subprocess_runner(netns: str | None = None) -> Runner:
    """The real runner; with ``netns`` the child starts inside that network namespace
    (the calling thread enters it just around the fork, so the child inherits it)."""
    path = netns_path(netns)

    def run(argv: Sequence[str], input: str | None = None) -> Completed:
        ctx: contextlib.AbstractContextManager = contextlib.nullcontext()
        if path:
            from podnet import netns as _netns  # lazy: only when a namespace is asked for
            ctx = _netns.entered(path)
        try:
            with ctx:
                if input is not None and len(input) > _PIPE_LIMIT:
                    with _stdin_file(input) as stdin:
                        proc = subprocess.run(list(argv), stdin=stdin, capture_output=True,
                                              text=True, check=False)
                else:
                    proc = subprocess.run(list(argv), input=input, capture_output=True,
                                          text=True, check=False)
        except FileNotFoundError as e:
            raise IptablesError(f"{argv[0]}: not installed ({e})", returncode=127) from None
        return Completed(proc.returncode, proc.stdout, proc.stderr)

    return run


def _binary(variant: str, family: int, tool: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown iptables variant {variant!r}")
    if family not in (4, 6):
        raise ValueError(f"bad family {family!r}")
    base = "iptables" if family == 4 else "ip6tables"
    return f"{base}-{variant}{'-' + tool if tool else ''}"


_variant_cache: dict[tuple[int, int, int], str] = {}


def detect_variant(netns: str | None = None, *, runner: Runner | None = None) -> str:
    """``"legacy"`` if only the legacy tables hold rules or chains here, else ``"nft"``.

    Cached per process and namespace: a host does not switch variant under a running
    process, and the check costs four subprocess calls.
    """
    key = _netns_key(netns_path(netns))
    if key in _variant_cache:
        return _variant_cache[key]
    run = runner or subprocess_runner(netns)
    content = {}
    for variant in VARIANTS:
        text = ""
        for family in (4, 6):
            try:
                text += run([_binary(variant, family, "save")], None).stdout
            except IptablesError:
                continue
        content[variant] = has_own_content(text)
    variant = "legacy" if content["legacy"] and not content["nft"] else "nft"
    log.debug("iptables variant for %s: %s", netns or "this namespace", variant)
    _variant_cache[key] = variant
    return variant


@dataclass
class Restorer:
    """iptables access for one family in one namespace, bound to one variant."""

    family: int = 4
    variant: str | None = None
    netns: str | None = None
    runner: Runner | None = None
    sleep: Callable[[float], None] = time.sleep
    lock_path: str = LOCK_PATH
    _run: Runner = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.family not in (4, 6):
            raise ValueError(f"bad family {self.family!r}")
        self._run = self.runner or subprocess_runner(self.netns)
        if self.variant is None:
            self.variant = detect_variant(self.netns, runner=self._run)
        elif self.variant not in VARIANTS:
            raise ValueError(f"unknown iptables variant {self.variant!r}")

    def _tool(self, tool: str = "") -> str:
        assert self.variant is not None
        return _binary(self.variant, self.family, tool)

    def _with_lock_retry(self, argv: list[str], input: str | None) -> Completed:
        delay = BACKOFF_BASE
        for attempt in range(1, MAX_ATTEMPTS + 1):
            res = self._run(argv, input)
            if res.returncode == 0 or not is_lock_error(res.stderr) or attempt == MAX_ATTEMPTS:
                return res
            pause = random.uniform(delay / 2, delay)
            log.info("%s: xtables lock busy (attempt %d), retrying in %.2fs", argv[0], attempt, pause)
            self.sleep(pause)
            delay = min(delay * 2, BACKOFF_CAP)
        raise AssertionError("unreachable")

    def apply(self, payload: str, *, noflush: bool = True) -> None:
        """Feed ``payload`` to iptables-restore in one call (one atomic transaction per table)."""
        if not payload.strip():
            return
        argv = [self._tool("restore"), "--wait", str(XTABLES_WAIT)]
        if noflush:
            argv.insert(1, "--noflush")
        res = self._with_lock_retry(argv, payload)
        if res.returncode == 0:
            return
        stderr = res.stderr.strip()
        line = failing_line(stderr)
        context = format_context(payload, line) if line else ""
        message = f"{argv[0]} failed (exit {res.returncode}): {stderr}"
        if context:
            message += f"\npayload around line {line}:\n{context}"
        log.error("%s", message)
        raise IptablesError(message, returncode=res.returncode, stderr=stderr, line=line,
                            context=context)

    def save(self, table: str | None = None) -> str:
        argv = [self._tool("save")]
        if table:
            argv += ["-t", table]
        res = self._with_lock_retry(argv, None)
        if res.returncode != 0:
            raise IptablesError(f"{argv[0]} failed (exit {res.returncode}): {res.stderr.strip()}",
                                returncode=res.returncode, stderr=res.stderr)
        return res.stdout

    def chain_exists(self, table: str, chain: str) -> bool:
        return chain in chains_in(self.save(table))

    def rule_exists(self, table: str, chain: str, args: Sequence[str] | str) -> bool:
        """``iptables -C``: True if present; False if the rule or chain is missing."""
        rule = shlex.split(args) if isinstance(args, str) else list(args)
        argv = [self._tool(), "-w", str(XTABLES_WAIT), "-t", table, "-C", chain, *rule]
        res = self._with_lock_retry(argv, None)
        if res.returncode == 0:
            return True
        if res.returncode == 1 or _MISSING_RE.search(res.stderr):
            return False  # no such rule, or its chain or jump target does not exist
        raise IptablesError(f"{argv[0]} -C failed (exit {res.returncode}): {res.stderr.strip()}",
                            returncode=res.returncode, stderr=res.stderr)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Serialise check-then-apply sequences between podnet processes and threads on
        this machine (an flock on a fresh open file; not reentrant: don't nest it)."""
        try:
            os.makedirs(os.path.dirname(self.lock_path), exist_ok=True)
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            log.warning("cannot open %s (%s); continuing unlocked", self.lock_path, e)
            yield
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def ensure_jump(self, table: str, from_chain: str, to_chain: str, match: str = "",
                    position: str | int = "insert") -> bool:
        """Make sure ``-A from_chain <match> -j to_chain`` exists exactly once; True if added.

        ``to_chain`` must exist already (or be created in the same moment by the caller).
        """
        spec = f"{match} -j {to_chain}".strip()
        with self.locked():
            if self.rule_exists(table, from_chain, spec):
                return False
            self.apply(render({}, builtin_jumps=[Rule(table, from_chain, spec, position)]))
            return True

    def delete_chains(self, table: str, chains: Iterable[str]) -> bool:
        """Remove chains and every rule that jumps to them, in one restore; idempotent.
        Returns True if anything was there to remove."""
        with self.locked():
            text = self.save(table)
            present = chains_in(text)
            wanted = [c for c in chains if c in present]
            # Rules inside chains being deleted vanish with them (declaring flushes).
            refs = [(table, ch, spec) for c in wanted for ch, spec in jump_rules_to(text, c)
                    if ch not in wanted]
            if not wanted:
                return False
            self.apply(render({}, delete_chains=[(table, c) for c in wanted], delete_rules=refs))
            return True


def apply(payload: str, *, family: int = 4, noflush: bool = True, variant: str | None = None,
          netns: str | None = None) -> None:
    """Apply one restore payload (see :meth:`Restorer.apply`)."""
    Restorer(family=family, variant=variant, netns=netns).apply(payload, noflush=noflush)


def save(table: str | None = None, *, family: int = 4, variant: str | None = None,
         netns: str | None = None) -> str:
    return Restorer(family=family, variant=variant, netns=netns).save(table)


def chain_exists(table: str, chain: str, *, family: int = 4, variant: str | None = None,
                 netns: str | None = None) -> bool:
    return Restorer(family=family, variant=variant, netns=netns).chain_exists(table, chain)


def ensure_jump(table: str, from_chain: str, to_chain: str, match: str = "",
                position: str | int = "insert", *, family: int = 4, variant: str | None = None,
                netns: str | None = None) -> bool:
    return Restorer(family=family, variant=variant, netns=netns).ensure_jump(
        table, from_chain, to_chain, match, position)
