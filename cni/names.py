"""Names shared with the Go plugins: hashed chain names and rule comments (pkg/utils)."""
from __future__ import annotations

MAX_CHAIN_LENGTH = 28
CHAIN_PREFIX = "CNI-"


def hash_with_prefix(length: int, prefix: str, to_hash: str) -> str:
    if len(prefix) >= length or length > 128:
        raise ValueError("invalid length")
    import hashlib  # lazily: OpenSSL's start-up cost is paid only when a chain is named
    return (prefix + hashlib.sha512(to_hash.encode()).hexdigest())[:length]


def chain_name(network: str, container_id: str, prefix: str = "") -> str:
    """utils.FormatChainName / MustFormatChainNameWithPrefix: ``CNI-<prefix><sha512>``[:28]."""
    return hash_with_prefix(MAX_CHAIN_LENGTH, CHAIN_PREFIX + prefix, network + container_id)


def _go_quote(s: str) -> str:
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ord(ch) < 0x20:
            out.append(f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def comment(network: str, container_id: str) -> str:
    """utils.FormatComment: ``name: "<net>" id: "<id>"`` (Go %q quoting)."""
    return f"name: {_go_quote(network)} id: {_go_quote(container_id)}"
