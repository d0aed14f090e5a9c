"""The shared cache tier: entries in Redis, so several gateway replicas answer from one cache.

``meshgate serve --cache redis://host:port/db`` adds it behind each process's own cache
(``gateway.cache.ResultCache``): a lookup that misses in memory asks Redis, and every entry a
replica fetches is written there too.  A value is the entry's freshness record (JSON: when it was
fetched, when each product's data was current, the watermarks) followed by its rows as an Arrow
IPC stream; it expires when no caller may be served it any more (TTL = the entry's remaining
freshness).  Keys are ``meshgate:cache:v1:<level>:<sha256>``: namespaced, hashed, never SQL.

Redis is an optimisation, never a dependency: any Redis error is logged (once per outage),
counted in ``gateway_cache_errors_total{tier="redis"}`` and the query goes on with the
in-process cache; after a failure Redis is left alone for ``retry_after`` seconds so an outage
costs no query a connection timeout.

Entries hold governed rows (masks and row filters already applied, keyed by entitlements):
protect the Redis server like the sources (bind it to a private network, ``requirepass``/ACLs,
``rediss://`` for TLS).
"""

from __future__ import annotations

import json
import logging
import struct
import threading
import time
from urllib.parse import urlsplit

import pyarrow as pa

from connectors.base import redact_uri
from gateway import metrics
from gateway.cache import REDIS, Entry

log = logging.getLogger(__name__)

PREFIX = "meshgate:cache:v1"
_MAGIC = b"MGC1"


def check_uri(uri: str) -> str:
    """``uri`` when it is a Redis URI (``redis://`` or ``rediss://``, optional ``/db`` number);
    raises ValueError saying what is wrong."""
    parts = urlsplit(uri)
    if parts.scheme not in ("redis", "rediss"):
        raise ValueError(f"--cache {redact_uri(uri)}: not a Redis URI (write redis://HOST:PORT/DB)")
    if not parts.hostname:
        raise ValueError(f"--cache {redact_uri(uri)}: no host (write redis://HOST:PORT/DB)")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ValueError(f"--cache {redact_uri(uri)}: the port is not a number") from None
    db = parts.path.strip("/")
    if db and not db.isdigit():
        raise ValueError(f"--cache {redact_uri(uri)}: the database '{db}' is not a number")
    return uri


class RedisTier:
    """A ``gateway.cache.SharedTier`` on one Redis database; see the module docstring."""

    def __init__(self, uri: str, connect_timeout: float = 0.5, timeout: float = 3.0, retry_after: float = 5.0) -> None:
        import redis

        self.uri = redact_uri(check_uri(uri))
        self.retry_after = retry_after
        self.errors = 0
        self._client = redis.Redis.from_url(uri, socket_timeout=timeout, socket_connect_timeout=connect_timeout)
        self._redis_error = redis.RedisError
        self._down_since: float | None = None
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def get(self, level: str, key: str) -> Entry | None:
        if not self._available():
            return None
        try:
            data = self._client.get(_name(level, key))
        except self._redis_error as err:
            self._failed(err)
            return None
        self._succeeded()
        if data is None:
            return None
        try:
            return decode(data)
        except Exception as err:  # noqa: BLE001 - a value we cannot read is a miss, not a failed query
            log.warning("ignoring an unreadable cache entry in Redis (%s): %s", self.uri, err)
            return None

    def put(self, level: str, key: str, entry: Entry, ttl: float) -> None:
        if ttl < 0.001 or not self._available():
            return
        try:
            self._client.set(_name(level, key), encode(entry), px=max(1, int(ttl * 1000)))
        except self._redis_error as err:
            self._failed(err)
            return
        self._succeeded()

    def ping(self) -> bool:
        """Whether Redis answers now (for start-up messages and readiness)."""
        try:
            return bool(self._client.ping())
        except self._redis_error:
            return False

    def close(self) -> None:
        self._client.close()

    def _available(self) -> bool:
        return self._down_since is None or time.monotonic() >= self._retry_at

    def _failed(self, err: BaseException) -> None:
        metrics.CACHE_ERRORS.labels(REDIS).inc()
        with self._lock:
            self.errors += 1
            first = self._down_since is None
            if first:
                self._down_since = time.monotonic()
            self._retry_at = time.monotonic() + self.retry_after
        if first:
            log.warning("Redis cache tier %s failed (%s): serving from this process's cache only, retrying every %g s",
                        self.uri, str(err).splitlines()[0][:200] if str(err) else type(err).__name__, self.retry_after)

    def _succeeded(self) -> None:
        if self._down_since is None:
            return
        with self._lock:
            down, self._down_since = self._down_since, None
        if down is not None:
            log.warning("Redis cache tier %s is back after %.0f s", self.uri, time.monotonic() - down)


def _name(level: str, key: str) -> str:
    return f"{PREFIX}:{level}:{key}"


def encode(entry: Entry) -> bytes:
    """``MGC1``, the header's length (4 bytes, big-endian), the JSON header, the Arrow IPC stream."""
    header = json.dumps({"fetched_at": entry.fetched_at, "as_of": dict(entry.as_of),
                         "watermarks": dict(entry.watermarks), "nbytes": entry.nbytes}).encode()
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, entry.table.schema) as writer:
        writer.write_table(entry.table)
    return _MAGIC + struct.pack(">I", len(header)) + header + sink.getvalue().to_pybytes()


def decode(data: bytes) -> Entry:
    if data[:4] != _MAGIC:
        raise ValueError("not a meshgate cache entry")
    (length,) = struct.unpack(">I", data[4:8])
    header = json.loads(data[8 : 8 + length])
    table = pa.ipc.open_stream(pa.py_buffer(data[8 + length :])).read_all()
    return Entry(table, float(header["fetched_at"]), header["as_of"], header["watermarks"], int(header["nbytes"]))
