"""The audit log: one JSON line per query, durable before the query's answer leaves the gateway.

Every query, allowed or denied, gets a *begin* record (who, from where, the query text and its
hash, the products and versions read, the decision with its reasons, the policies, masks and row
filters applied, the exact SQL pushed to each source) and, when its stream ends, a *complete*
record (rows returned, duration, status) with the same ``id``:

```json
{"type": "query", "id": "...", "time": "2026-01-01T12:00:00.123456Z", "principal": "alice", ...}
{"type": "complete", "id": "...", "time": "...", "rows": 42, "duration_ms": 12.5, "status": "ok"}
```

``begin`` returns only once its line is on stable storage (``fsync``), so a gateway killed at
any point after answering has a record of the answer. Concurrent writers share fsyncs (group
commit): one thread syncs while others append, and one sync covers every line written before
it. The file rotates by size (``audit.jsonl`` -> ``audit.jsonl.1`` ... ``.N``); a process writes
its own file (replicas each get one under their own ``$MESHGATE_HOME``).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

DEFAULT_FILE_NAME = "audit.jsonl"
DEFAULT_MAX_BYTES = 100 * 1024 * 1024
DEFAULT_BACKUPS = 10


class AuditLog:
    """Append-only, size-rotated JSON-lines audit log; safe to share between threads."""

    def __init__(self, path: Path, max_bytes: int = DEFAULT_MAX_BYTES, backups: int = DEFAULT_BACKUPS) -> None:
        if max_bytes <= 0:
            raise ValueError("max_bytes must be positive")
        if backups < 0:
            raise ValueError("backups must be 0 or more")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.backups = backups
        self._cond = threading.Condition(threading.Lock())
        self._written = 0  # lines appended so far (sequence numbers)
        self._synced = 0  # lines known to be on stable storage
        self._syncing = False
        self._started: dict[str, float] = {}  # record id -> monotonic start, until completed
        self._fd: int | None = None
        self._size = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()

    # --- public API ----------------------------------------------------------------------------

    def begin(
        self,
        principal: Any,
        query: str,
        *,
        client: str | None = None,
        products: Iterable[Any] = (),
        decisions: Mapping[str, Any] | None = None,
        fragments: Iterable[Any] = (),
        allowed: bool | None = None,
        reasons: Iterable[str] | None = None,
        status: str | None = None,
        error: str | None = None,
        extra: Mapping[str, Any] | None = None,
        record_id: str | None = None,
    ) -> str:
        """Record a query and return its record id once the line is durable.

        - ``principal``: a ``Principal`` (name and roles are recorded) or a name;
        - ``products``: ``(product_id, version)`` pairs or descriptors (``product_id``, ``version``);
        - ``decisions``: product id -> ``policies.decision.Decision``; the record gets the overall
          decision (``allowed`` unless some product was denied), every reason, and the policies,
          masks and row filters (with their bound values) applied;
        - ``fragments``: ``(source, sql)`` pairs or objects with ``source``/``sql`` attributes:
          the exact SQL sent to each source;
        - ``allowed`` / ``reasons``: override what the decisions say (a query rejected before
          any decision, e.g. a parse error, passes ``allowed=False`` and ``error``);
        - ``status``: ``running`` (default for allowed queries), ``denied`` (default otherwise),
          or ``error``;
        - ``record_id``: the id to record under (the query history's own), else a new one.
        """
        record_id = record_id or secrets.token_hex(12)
        decisions = dict(decisions or {})
        if allowed is None:
            allowed = all(bool(getattr(d, "allowed", False)) for d in decisions.values()) and error is None
        all_reasons = list(reasons) if reasons is not None else [r for d in decisions.values() for r in getattr(d, "reasons", ())]
        query_text = query or ""
        record: dict[str, Any] = {
            "type": "query",
            "id": record_id,
            "time": _now(),
            "principal": _principal(principal),
            "client": client,
            "query_sha256": hashlib.sha256(query_text.encode("utf-8")).hexdigest(),
            "query": query_text,
            "products": [_product(p) for p in products],
            "decision": {"allowed": bool(allowed), "reasons": all_reasons},
            "policies": sorted({p for d in decisions.values() for p in getattr(d, "policies", ())}),
            "masks": [
                {"product": pid, "column": m.column, "mask": m.kind, "policy": m.policy}
                for pid, d in decisions.items()
                for m in getattr(d, "masks", ())
            ],
            "row_filters": [
                {"product": pid, "filter": f.sql, "bindings": dict(f.bindings), "policy": f.policy}
                for pid, d in decisions.items()
                for f in getattr(d, "row_filters", ())
            ],
            "min_group_size": {
                pid: d.min_group_size for pid, d in decisions.items() if getattr(d, "min_group_size", None)
            },
            "fragments": [_fragment(f) for f in fragments],
            "status": status or ("running" if allowed else "denied"),
        }
        if error is not None:
            record["error"] = error
        if extra:
            record.update({k: v for k, v in extra.items() if k not in record})
        with self._cond:
            self._started[record_id] = time.monotonic()
            if len(self._started) > 100_000:  # never completed (a caller bug): do not grow forever
                self._started.pop(next(iter(self._started)))
        self._append(record, durable=True)
        return record_id

    def complete(
        self,
        record_id: str,
        *,
        rows: int | None = None,
        status: str = "ok",
        error: str | None = None,
        bytes_out: int | None = None,
        duration_ms: float | None = None,
        durable: bool = True,
    ) -> None:
        """Append the completion of ``record_id``: rows returned, duration, status (``ok``,
        ``error``, ``cancelled``). ``durable=False`` returns before the fsync (the next fsync,
        or ``close``, covers it)."""
        with self._cond:
            started = self._started.pop(record_id, None)
        if duration_ms is None and started is not None:
            duration_ms = round((time.monotonic() - started) * 1000, 3)
        record: dict[str, Any] = {
            "type": "complete",
            "id": record_id,
            "time": _now(),
            "rows": rows,
            "duration_ms": duration_ms,
            "status": status,
        }
        if bytes_out is not None:
            record["bytes"] = bytes_out
        if error is not None:
            record["error"] = error
        self._append(record, durable=durable)

    def flush(self) -> None:
        """Make every line written so far durable."""
        with self._cond:
            target = self._written
        self._wait_durable(target)

    def close(self) -> None:
        self.flush()
        with self._cond:
            while self._syncing:
                self._cond.wait()
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def __enter__(self) -> AuditLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- writing -------------------------------------------------------------------------------

    def _append(self, record: dict[str, Any], durable: bool) -> None:
        line = (json.dumps(record, ensure_ascii=False, default=str, separators=(",", ":")) + "\n").encode("utf-8")
        with self._cond:
            while True:
                if self._fd is None:
                    raise ValueError(f"audit log {self.path} is closed")
                if not (self._size and self._size + len(line) > self.max_bytes):
                    break
                if self._syncing:  # never close the file under a running fsync; re-check after
                    self._cond.wait()
                    continue
                self._rotate()
            _write_all(self._fd, line)
            self._size += len(line)
            self._written += 1
            sequence = self._written
        if durable:
            self._wait_durable(sequence)

    def _wait_durable(self, sequence: int) -> None:
        """Return once line ``sequence`` is synced; the first waiter syncs for everyone."""
        with self._cond:
            while self._synced < sequence:
                if self._syncing:
                    self._cond.wait()
                    continue
                self._syncing = True
                target, fd = self._written, self._fd
                self._cond.release()
                try:
                    if fd is not None:
                        os.fsync(fd)
                finally:
                    self._cond.acquire()
                    self._syncing = False
                    self._cond.notify_all()
                self._synced = max(self._synced, target)

    def _rotate(self) -> None:
        """Called with the lock held and no fsync running: sync and close the current file,
        shift the backups, open a new file."""
        assert self._fd is not None and not self._syncing
        os.fsync(self._fd)
        os.close(self._fd)
        self._fd = None
        self._synced = self._written
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            for n in range(self.backups - 1, 0, -1):
                older = self._backup(n)
                if older.exists():
                    os.replace(older, self._backup(n + 1))
            os.replace(self.path, self._backup(1))
        self._open()

    def _backup(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        self._size = os.fstat(self._fd).st_size
        _sync_directory(self.path.parent)  # the file's name is durable too, not only its data


def read_queries(path: Path, backups: int = DEFAULT_BACKUPS, since: datetime | None = None) -> list[dict[str, Any]]:
    """Every query recorded in the log at ``path`` and its rotated files, oldest first, each its
    *begin* record with its *complete* record's fields merged in (``rows``, ``duration_ms``,
    ``status``, ``bytes``, ``error``; a query still running keeps ``status: running``).

    What usage statistics, catalog popularity, impact analysis and query history are built from.
    ``since`` (aware UTC) skips older queries. A torn last line (a crash mid-write) is skipped.
    """
    files = [path.with_name(f"{path.name}.{n}") for n in range(backups, 0, -1)] + [path]
    cutoff = since.strftime("%Y-%m-%dT%H:%M:%S.%fZ") if since is not None else None
    queries: dict[str, dict[str, Any]] = {}
    for file in files:
        try:
            lines = file.read_bytes().splitlines()
        except FileNotFoundError:
            continue
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            kind, record_id = record.get("type"), record.get("id")
            if kind == "query" and (cutoff is None or record.get("time", "") >= cutoff):
                queries[record_id] = record
            elif kind == "complete" and record_id in queries:
                done = queries[record_id]
                done.update({k: v for k, v in record.items() if k not in ("type", "id", "time")})
                done["completed"] = record.get("time")
    return list(queries.values())


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems cannot sync a directory; the data itself is still synced
    finally:
        os.close(fd)


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _principal(principal: Any) -> dict[str, Any]:
    if isinstance(principal, str):
        return {"name": principal}
    return {"name": getattr(principal, "name", str(principal)), "roles": sorted(getattr(principal, "roles", ()))}


def _product(product: Any) -> dict[str, Any]:
    if isinstance(product, (tuple, list)) and len(product) == 2:
        return {"id": product[0], "version": product[1]}
    if isinstance(product, Mapping):
        return {"id": product.get("id"), "version": product.get("version")}
    return {"id": getattr(product, "product_id", str(product)), "version": getattr(product, "version", None)}


def _fragment(fragment: Any) -> dict[str, Any]:
    if isinstance(fragment, (tuple, list)) and len(fragment) == 2:
        return {"source": fragment[0], "sql": fragment[1]}
    if isinstance(fragment, Mapping):
        return dict(fragment)
    return {"source": getattr(fragment, "source", None), "sql": getattr(fragment, "sql", str(fragment))}
