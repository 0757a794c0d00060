"""The one etcd layer: etcd v3 through its JSON gateway (etcd3gw), with fail-over and resync.

Everything podnet keeps in etcd goes through :class:`Store`.  It speaks the v3 gateway
(``/v3/kv/range``, ``/v3/kv/txn``, ``/v3/lease/...``, ``/v3/watch``) through etcd3gw's
client, which gives us URL discovery, TLS set-up and HTTP error mapping; the few things
etcd3gw hides (the header revision of a range, lease ids of keys, watch cancellation
and compaction) are read from the raw gateway responses here.

Errors are data: every failure leaves this module as :class:`Unavailable` (no endpoint
answered: retry), :class:`Compacted` (a watch or read asked for history that is gone:
re-list), :class:`LeaseNotFound`, or :class:`StoreError` (anything else).

:func:`list_and_watch` is the level-triggered loop every daemon uses: list, hand the
snapshot over, watch from the snapshot's revision + 1, and re-list whenever the watch is
compacted or every endpoint is gone for a while.
"""
from __future__ import annotations

import base64
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_TIMEOUT = 5.0
DEFAULT_WATCH_IDLE = 15.0

# gRPC status codes as the gateway reports them in {"code": N}.
_GRPC_NOT_FOUND = 5
_GRPC_OUT_OF_RANGE = 11
_GRPC_UNAVAILABLE = 14
_GRPC_DEADLINE = 4
_GRPC_CANCELED = 1
_TRANSIENT_CODES = (_GRPC_CANCELED, _GRPC_DEADLINE, _GRPC_UNAVAILABLE)
# Messages of errors that go away by themselves (a member stopping, an election).
_TRANSIENT_TEXT = ("connection is closing", "no leader", "leader changed", "timed out",
                   "server stopped", "too many requests", "not capable")


def _transient(code: int | None, msg: str) -> bool:
    return code in _TRANSIENT_CODES or any(t in msg for t in _TRANSIENT_TEXT)


class StoreError(Exception):
    """An etcd request failed for a reason retrying will not fix."""


class Unavailable(StoreError):
    """No endpoint answered (connection refused/reset, timeout, no leader). Retryable."""


class Compacted(StoreError):
    """The requested revision was compacted away; re-list and watch from the new revision."""

    def __init__(self, revision: int, message: str = "") -> None:
        super().__init__(message or f"revision compacted (compact revision {revision})")
        self.revision = revision


class LeaseNotFound(StoreError):
    """The etcd lease does not exist (expired or revoked)."""


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    mod_revision: int = 0
    create_revision: int = 0
    version: int = 0
    lease: int = 0          # 0: the key has no lease (never expires)

    @property
    def text(self) -> str:
        return self.value.decode()


@dataclass(frozen=True)
class Listing:
    items: list[KeyValue]
    revision: int           # the store revision the listing is consistent with


@dataclass(frozen=True)
class Grant:
    id: int
    ttl: int


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    key: str
    value: bytes
    revision: int           # mod revision of the change
    lease: int = 0


# ---------------------------------------------------------------------------------------
# backoff and retry

class Backoff:
    """Capped exponential backoff with jitter ("equal jitter": half fixed, half random)."""

    def __init__(self, base: float = 0.1, cap: float = 5.0,
                 rng: Callable[[], float] = random.random) -> None:
        self.base, self.cap, self._rng = base, cap, rng
        self._attempt = 0

    def next(self) -> float:
        ceiling = min(self.cap, self.base * (2 ** self._attempt))
        self._attempt = min(self._attempt + 1, 32)
        return ceiling / 2 + self._rng() * ceiling / 2

    def reset(self) -> None:
        self._attempt = 0


def retry(fn: Callable[[], T], *, retryable: tuple[type[BaseException], ...] = (Unavailable,),
          attempts: int | None = None, backoff: Backoff | None = None,
          sleep: Callable[[float], Any] = time.sleep,
          stop_event: threading.Event | None = None, what: str = "etcd request") -> T:
    """Call ``fn`` until it succeeds, sleeping with capped jittered backoff between tries.

    Only ``retryable`` exceptions are retried; ``attempts=None`` retries forever (until
    ``stop_event`` is set, when the last error is re-raised).
    """
    backoff = backoff or Backoff()
    n = 0
    while True:
        try:
            return fn()
        except retryable as exc:
            n += 1
            if (attempts is not None and n >= attempts) or (stop_event is not None and stop_event.is_set()):
                raise
            delay = backoff.next()
            log.warning("%s failed (%s); retrying in %.1fs", what, exc, delay)
            sleep(delay)


# ---------------------------------------------------------------------------------------
# helpers for the gateway's JSON

def _b64(data: str | bytes) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode("ascii")


def _unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def prefix_end(prefix: str | bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    raw = bytearray(prefix.encode() if isinstance(prefix, str) else prefix)
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\0"


def _kv(d: dict[str, Any]) -> KeyValue:
    return KeyValue(
        key=_unb64(d.get("key")).decode("utf-8", "surrogateescape"),
        value=_unb64(d.get("value")),
        mod_revision=int(d.get("mod_revision", 0)),
        create_revision=int(d.get("create_revision", 0)),
        version=int(d.get("version", 0)),
        lease=int(d.get("lease", 0)),
    )


def _revision(resp: dict[str, Any]) -> int:
    return int(resp.get("header", {}).get("revision", 0))


def parse_endpoint(url: str) -> tuple[str, str, int]:
    """``http://10.0.0.1:2379`` → ("http", "10.0.0.1", 2379)."""
    parts = urlsplit(url if "://" in url else "http://" + url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"invalid etcd endpoint {url!r}: want http(s)://host:port")
    return parts.scheme, parts.hostname, parts.port or 2379


def _error_body(exc: Exception) -> tuple[int | None, str]:
    text = getattr(exc, "detail_text", None) or ""
    try:
        body = json.loads(text)
        return body.get("code"), body.get("message") or body.get("error") or text
    except (ValueError, AttributeError):
        return None, text or str(exc) or type(exc).__name__


# ---------------------------------------------------------------------------------------
# the store

class Store:
    """A connection to an etcd cluster through any of ``endpoints``, failing over in turn.

    Requests go to the endpoint that answered last; on a connection error, a timeout or
    "unavailable" (no leader) the next endpoint is tried, and :class:`Unavailable` is
    raised only when every endpoint failed.  Note that a write that timed out may still
    have been applied: callers make writes conditional (transactions) and re-read.
    """

    def __init__(self, endpoints: list[str] | str, *, ca: str | None = None,
                 cert: str | None = None, key: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, watch_idle: float = DEFAULT_WATCH_IDLE) -> None:
        if isinstance(endpoints, str):
            endpoints = [e for e in endpoints.split(",") if e]
        if not endpoints:
            raise ValueError("no etcd endpoints given")
        from etcd3gw.client import Etcd3Client  # heavy (requests, futurist): import lazily

        self.endpoints = list(endpoints)
        self.timeout = timeout
        self.watch_idle = watch_idle
        self._tls = (ca, cert, key)
        self._clients = []
        for url in self.endpoints:
            scheme, host, port = parse_endpoint(url)
            self._clients.append(Etcd3Client(host=host, port=port, protocol=scheme, ca_cert=ca,
                                             cert_key=key, cert_cert=cert, timeout=timeout,
                                             api_path="/v3/"))
        self._current = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Store({','.join(self.endpoints)})"

    @property
    def current_endpoint(self) -> str:
        return self.endpoints[self._current]

    # -- transport ---------------------------------------------------------------------

    def _call(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """POST ``payload`` to ``/v3/<path>``, failing over across endpoints."""
        import requests
        from etcd3gw import exceptions as gwexc

        with self._lock:
            start = self._current
        errors = []
        for i in range(len(self._clients)):
            idx = (start + i) % len(self._clients)
            client = self._clients[idx]
            try:
                resp = client.post(client.get_url(path), json=payload)
            except (gwexc.ConnectionFailedError, gwexc.ConnectionTimeoutError,
                    requests.RequestException, OSError) as exc:
                code, msg = _error_body(exc)
                errors.append(f"{self.endpoints[idx]}: {msg.strip() or type(exc).__name__}")
                continue
            except gwexc.Etcd3Exception as exc:
                code, msg = _error_body(exc)
                if _transient(code, msg):
                    errors.append(f"{self.endpoints[idx]}: {msg}")
                    continue
                raise self._translate(code, msg) from None
            if idx != start:
                log.info("etcd: now using endpoint %s", self.endpoints[idx])
                with self._lock:
                    self._current = idx
            return resp
        with self._lock:
            self._current = (start + 1) % len(self._clients)
        raise Unavailable("etcd unavailable: " + "; ".join(errors))

    @staticmethod
    def _translate(code: int | None, msg: str) -> StoreError:
        if code == _GRPC_NOT_FOUND and "lease" in msg:
            return LeaseNotFound(msg)
        if code == _GRPC_OUT_OF_RANGE and "compacted" in msg:
            return Compacted(0, msg)
        return StoreError(msg)

    # -- keys --------------------------------------------------------------------------

    def get(self, key: str) -> KeyValue | None:
        resp = self._call("kv/range", {"key": _b64(key)})
        kvs = resp.get("kvs") or []
        return _kv(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> Listing:
        resp = self._call("kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                       "sort_order": "ASCEND", "sort_target": "KEY"})
        return Listing([_kv(d) for d in resp.get("kvs") or []], _revision(resp))

    def revision(self) -> int:
        """The store's current revision."""
        resp = self._call("kv/range", {"key": _b64("\0"), "count_only": True})
        return _revision(resp)

    def put(self, key: str, value: str | bytes, lease: int = 0) -> int:
        """Write ``key`` unconditionally; returns the new revision."""
        payload: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            payload["lease"] = str(lease)
        return _revision(self._call("kv/put", payload))

    def delete(self, key: str) -> bool:
        resp = self._call("kv/deleterange", {"key": _b64(key)})
        return int(resp.get("deleted", 0)) > 0

    def delete_prefix(self, prefix: str) -> int:
        resp = self._call("kv/deleterange", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return int(resp.get("deleted", 0))

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]] | None = None) -> bool:
        """A raw transaction (gateway JSON); returns whether the comparisons held."""
        resp = self._call("kv/txn", {"compare": compare, "success": success, "failure": failure or []})
        return bool(resp.get("succeeded", False))

    def create(self, key: str, value: str | bytes, lease: int = 0) -> bool:
        """Write ``key`` only if it does not exist (``version == 0``); False when it does."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        return self.txn([{"key": _b64(key), "target": "VERSION", "result": "EQUAL", "version": "0"}],
                        [{"request_put": put}])

    def replace(self, key: str, new_value: str | bytes, *, old_value: str | bytes | None = None,
                old_mod_revision: int | None = None, lease: int = 0) -> bool:
        """Write ``key`` only if it still holds ``old_value`` / was last modified at
        ``old_mod_revision`` (give one or both); False when it changed or is gone."""
        compare = []
        if old_value is not None:
            compare.append({"key": _b64(key), "target": "VALUE", "result": "EQUAL",
                            "value": _b64(old_value)})
        if old_mod_revision is not None:
            compare.append({"key": _b64(key), "target": "MOD", "result": "EQUAL",
                            "mod_revision": str(old_mod_revision)})
        if not compare:
            raise ValueError("replace needs old_value or old_mod_revision")
        # A missing key never compares equal by value; by mod revision 0 it would, so guard.
        compare.append({"key": _b64(key), "target": "VERSION", "result": "GREATER", "version": "0"})
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(new_value)}
        if lease:
            put["lease"] = str(lease)
        return self.txn(compare, [{"request_put": put}])

    def compact(self, revision: int, physical: bool = True) -> None:
        self._call("kv/compaction", {"revision": str(revision), "physical": physical})

    # -- leases ------------------------------------------------------------------------

    def lease_grant(self, ttl: int) -> Grant:
        resp = self._call("lease/grant", {"TTL": str(int(ttl)), "ID": "0"})
        if resp.get("error"):
            raise StoreError(f"lease grant failed: {resp['error']}")
        return Grant(int(resp["ID"]), int(resp.get("TTL", ttl)))

    def lease_revoke(self, lease: int) -> bool:
        """Revoke ``lease`` (deleting its keys); False if it did not exist."""
        try:
            self._call("kv/lease/revoke", {"ID": str(lease)})
        except LeaseNotFound:
            return False
        return True

    def lease_refresh(self, lease: int) -> int:
        """Keep ``lease`` alive once; returns its new TTL, or -1 if it no longer exists."""
        resp = self._call("lease/keepalive", {"ID": str(lease)})
        return int(resp.get("result", resp).get("TTL", -1))

    def lease_ttl(self, lease: int) -> int:
        """Remaining TTL of ``lease`` in seconds, -1 if it does not exist."""
        resp = self._call("kv/lease/timetolive", {"ID": str(lease)})
        return int(resp.get("TTL", -1))

    # -- watch -------------------------------------------------------------------------

    def watch_prefix(self, prefix: str, start_revision: int) -> WatchStream:
        """Watch every key under ``prefix`` from ``start_revision`` (inclusive).

        Iterating the stream yields one list of events per watch response.
        """
        return WatchStream(self, prefix, start_revision)

    def _open_watch(self, prefix: str, start_revision: int):
        """Open a streaming watch on some endpoint; returns (response, endpoint index)."""
        import requests

        with self._lock:
            start = self._current
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix)),
                                   "start_revision": str(start_revision), "progress_notify": True}}
        errors = []
        ca, cert, key = self._tls
        for i in range(len(self._clients)):
            idx = (start + i) % len(self._clients)
            client = self._clients[idx]
            session = requests.Session()       # a watch owns its connection
            if ca:
                session.verify = ca
            if cert and key:
                session.cert = (cert, key)
            try:
                resp = session.post(client.get_url("watch"), json=body, stream=True,
                                    timeout=(self.timeout, self.watch_idle))
                if resp.status_code != 200:
                    code, msg = _error_body(type("E", (Exception,), {"detail_text": resp.text})())
                    resp.close()
                    session.close()
                    if resp.status_code in (503, 504, 408) or _transient(code, msg):
                        errors.append(f"{self.endpoints[idx]}: {msg}")
                        continue
                    raise self._translate(code, msg)
            except (requests.RequestException, OSError) as exc:
                session.close()
                errors.append(f"{self.endpoints[idx]}: {exc}")
                continue
            with self._lock:
                self._current = idx
            return resp, session
        with self._lock:
            self._current = (start + 1) % len(self._clients)
        raise Unavailable("etcd watch unavailable: " + "; ".join(errors))


class WatchStream:
    """An open watch.  Iterate for batches of :class:`WatchEvent`; ``close()`` from any thread.

    A stream that breaks or stays silent for ``watch_idle`` seconds is re-opened from the
    next revision, on any endpoint, without losing events; :class:`Unavailable` is raised
    when no endpoint takes the watch, :class:`Compacted` when ``next_revision`` is gone.
    """

    def __init__(self, store: Store, prefix: str, start_revision: int) -> None:
        self.store = store
        self.prefix = prefix
        self.next_revision = start_revision
        self._closed = threading.Event()
        self._resp = None
        self._session = None
        self._lock = threading.Lock()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            resp, self._resp = self._resp, None
            session, self._session = self._session, None
        if resp is not None:
            _shutdown_response(resp)
        if session is not None:
            session.close()

    @property
    def closed(self) -> bool:
        return self._closed.is_set()

    def _open(self) -> Any:
        resp, session = self.store._open_watch(self.prefix, self.next_revision)
        with self._lock:
            if self._closed.is_set():
                _shutdown_response(resp)
                session.close()
                return None
            self._resp, self._session = resp, session
        return resp

    def __iter__(self) -> Iterator[list[WatchEvent]]:
        import requests

        reopen = Backoff(0.05, 2.0)
        first = True
        while not self._closed.is_set():
            if not first and self._closed.wait(reopen.next()):
                return
            first = False
            resp = self._open()
            if resp is None:
                return
            try:
                for msg in _json_lines(resp):
                    reopen.reset()
                    batch = self._handle(msg)
                    if batch:
                        yield batch
                    if self._closed.is_set():
                        return
                log.info("etcd watch stream on %s ended; re-opening from revision %d",
                         self.store.current_endpoint, self.next_revision)
            except (requests.RequestException, OSError, ValueError) as exc:
                if self._closed.is_set():
                    return
                log.debug("etcd watch stream broke (%s); re-opening from revision %d",
                          exc, self.next_revision)
            finally:
                with self._lock:
                    mine = self._resp is resp
                    if mine:
                        self._resp = None
                        session, self._session = self._session, None
                if mine:
                    resp.close()
                    if session is not None:
                        session.close()

    def _handle(self, msg: dict[str, Any]) -> list[WatchEvent]:
        if "error" in msg and "result" not in msg:
            err = msg["error"]
            code, text = err.get("grpc_code", err.get("code")), err.get("message", str(err))
            if _transient(code, text):
                raise Unavailable(f"etcd watch failed: {text}")
            raise Store._translate(code, text)
        result = msg.get("result", {})
        if result.get("canceled"):
            compact = int(result.get("compact_revision", 0))
            if compact:
                raise Compacted(compact, f"watch of {self.prefix} from revision "
                                         f"{self.next_revision}: compacted at {compact}")
            reason = result.get("cancel_reason", "watch canceled by the server")
            raise Unavailable(f"etcd watch canceled: {reason}")
        events = result.get("events") or []
        if not events and not result.get("created"):
            # a progress notification: every change up to this revision has been sent
            rev = int(result.get("header", {}).get("revision", 0))
            self.next_revision = max(self.next_revision, rev + 1)
        batch = []
        for ev in events:
            kv = _kv(ev.get("kv", {}))
            batch.append(WatchEvent("DELETE" if ev.get("type") == "DELETE" else "PUT",
                                    kv.key, kv.value, kv.mod_revision, kv.lease))
            self.next_revision = max(self.next_revision, kv.mod_revision + 1)
        return batch


def _json_lines(resp: Any) -> Iterator[dict[str, Any]]:
    """The gateway streams one JSON object per line; chunks do not follow line ends."""
    pending = b""
    for chunk in resp.iter_content(chunk_size=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)


def _shutdown_response(resp: Any) -> None:
    """Wake a thread blocked reading ``resp`` (closing alone does not interrupt recv)."""
    try:
        fd = resp.raw._fp.fileno()
        s = socket.socket(fileno=socket.dup(fd))
        try:
            s.shutdown(socket.SHUT_RDWR)
        finally:
            s.close()
    except Exception:  # noqa: BLE001 - best effort: the read timeout bounds it anyway
        pass
    try:
        resp.close()
    except Exception:  # noqa: BLE001
        pass


# ---------------------------------------------------------------------------------------
# list and watch

Handler = Callable[..., None]


def list_and_watch(store: Any, prefix: str, handler: Handler, *,
                   stop_event: threading.Event, batch_end: Callable[[], None] | None = None,
                   backoff: Backoff | None = None,
                   sleep: Callable[[float], Any] | None = None) -> None:
    """Keep ``handler`` in step with the keys under ``prefix`` until ``stop_event`` is set.

    ``handler("snapshot", items)`` with the full list first and after every resync, then
    ``handler("put", key, value, event)`` / ``handler("delete", key, value, event)`` per
    change (``event`` is the :class:`WatchEvent`, with revision and lease id);
    ``batch_end()`` after each snapshot and each watch response.  A compacted watch or an
    unreachable store leads to a fresh list (with capped backoff while it fails).
    """
    backoff = backoff or Backoff(0.1, 5.0)
    wait = sleep or stop_event.wait
    current: list[WatchStream] = []

    done = threading.Event()

    def closer() -> None:
        while not done.is_set():
            if stop_event.wait(1.0):
                for w in list(current):
                    w.close()
                return

    threading.Thread(target=closer, name=f"watch-stop:{prefix}", daemon=True).start()
    try:
        _list_and_watch_loop(store, prefix, handler, stop_event, batch_end, backoff, wait, current)
    finally:
        done.set()
    log.debug("watch of %s stopped", prefix)


def _list_and_watch_loop(store: Any, prefix: str, handler: Handler, stop_event: threading.Event,
                         batch_end: Callable[[], None] | None, backoff: Backoff,
                         wait: Callable[[float], Any], current: list[Any]) -> None:
    def pause(what: str, exc: Exception) -> None:
        delay = backoff.next()
        log.warning("%s %s failed (%s); re-listing in %.1fs", what, prefix, exc, delay)
        wait(delay)

    while not stop_event.is_set():
        try:
            listing = store.get_prefix(prefix)
        except StoreError as exc:
            pause("list of", exc)
            continue
        handler("snapshot", listing.items)
        if batch_end:
            batch_end()
        try:
            stream = store.watch_prefix(prefix, listing.revision + 1)
        except StoreError as exc:
            pause("watch of", exc)
            continue
        current[:] = [stream]
        if stop_event.is_set():
            stream.close()
        batches = iter(stream)
        try:
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except Compacted as exc:
                    log.warning("watch of %s fell behind compaction (%s); re-listing", prefix, exc)
                    break
                except StoreError as exc:
                    pause("watch of", exc)
                    break
                backoff.reset()
                for ev in batch:   # handler errors are the caller's: they propagate
                    handler("put" if ev.type == "PUT" else "delete", ev.key, ev.value, ev)
                if batch_end:
                    batch_end()
        finally:
            stream.close()
            current.clear()
