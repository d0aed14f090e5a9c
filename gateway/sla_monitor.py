"""SLA monitoring: each product's freshness, availability, completeness and quality, on its schedule.

Every queryable major of every product is monitored, each recorded under the name SQL gives it
(``domain.name`` for the newest major, ``domain.name@N`` for an older one), derived products
(``connector: mesh``) included: their connector (``gateway/derived_source.py``) reads their rows
through the gateway as the platform, so the probe is a ``LIMIT 1`` query of the derived product,
its freshness the oldest of its inputs' freshness and its quality rules run over its rows.

A check of one product (``measure``) asks its source, through the gateway's pooled connectors:

- **availability**: a probe query (``SELECT * FROM <relation> LIMIT 1``) answers. The
  availability ratio is the share of the product's probes that succeeded over the availability
  window (default 24 h), this one included.
- **freshness**: the age of the newest data (``Connector.freshness``): the newest value of
  ``sla.freshness_column``, else when the source's files last changed; unknown for a server
  source without a freshness column.
- **completeness** (only with ``sla.completeness``): the row count against the previous check's
  count of the same version, as a percentage capped at 100. A table that grows or stays is
  100 % complete; one that lost rows since the last check (a truncated or partial load) is less,
  once: the next check compares with the new count.
- **quality**: the contract's rules (``spec.quality`` and its column constraints), run at the
  source (``gateway/quality.py``); the score is ``quality.score``: the share of rules that
  passed, a rule the source cannot express (skipped) not counting. Each run is also recorded
  through ``Registry.record_quality``, beside the quality runs of publication.

Each check is recorded, in one transaction with what it is computed from (the availability
window, the previous row count), in the registry database's ``sla_checks`` table (``SlaStore``);
``latest(registry, product_id)`` reads the newest.  A condition of the product's SLA that a check
breaches and the previous check did not raises an alert, and one that recovers resolves it
(``gateway/alerts.py``: a log line, ``product_sla_*`` metrics and an optional webhook):
``freshness > sla.freshness``, ``availability < sla.availability``, ``completeness <
sla.completeness``, ``quality_score < sla.quality_threshold``.

``SlaMonitor`` runs checks in the background (``meshgate serve`` and ``demo``) or once
(``meshgate sla check``). Each check runs in a thread of its own with a timeout: a slow or dead
source is recorded as unavailable when its time is up and never delays the others' checks, and
nothing a check does can stop the monitor or the gateway.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from sqlglot import exp

from connectors.base import Connector
from gateway import metrics
from gateway import quality as gates
from gateway.alerts import Alert, AlertSink
from gateway.descriptor import Descriptor, Sla

log = logging.getLogger(__name__)

DEFAULT_CHECK_TIMEOUT = 30.0
DEFAULT_AVAILABILITY_WINDOW = 24 * 3600.0
HISTORY_DAYS = 30
"""Checks older than this are deleted as new ones are recorded."""
CONDITIONS = ("freshness", "availability", "completeness", "quality")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS sla_checks (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    product_id  TEXT NOT NULL,
    version     TEXT NOT NULL,
    checked_at  REAL NOT NULL,
    available   INTEGER NOT NULL,
    row_count   INTEGER,
    breaches    TEXT NOT NULL,
    status      TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sla_checks_by_product ON sla_checks (product_id, checked_at);
"""


@dataclass(frozen=True)
class Measurement:
    """What one check observed at the source, before it is judged against the SLA."""

    product_id: str
    version: str
    started_at: float  # Unix time (the monitor's clock)
    seconds: float  # how long the check took
    available: bool
    error: str | None = None  # why the probe failed
    probe_ms: float | None = None
    as_of: float | None = None  # Unix time of the newest data
    freshness_basis: str = "unknown"
    row_count: int | None = None
    quality: tuple[dict[str, Any], ...] = ()  # per rule, as ``RuleResult.to_json()``
    problems: tuple[str, ...] = ()  # measurements that failed although the probe answered


@dataclass(frozen=True)
class SlaStatus:
    """One recorded check of a product against its SLA."""

    product_id: str
    version: str
    checked_at: float  # Unix time
    duration_seconds: float
    available: bool
    error: str | None
    data_age_seconds: float | None
    as_of: float | None
    freshness_basis: str
    row_count: int | None
    completeness: float | None  # percent
    availability: float | None  # percent of probes that succeeded in the window
    probes: tuple[int, int]  # (succeeded, total) in the window
    quality_score: float | None
    quality: tuple[dict[str, Any], ...]
    problems: tuple[str, ...]
    targets: Sla
    breaches: dict[str, str] = field(default_factory=dict)  # condition -> what was observed

    @property
    def ok(self) -> bool:
        return not self.breaches

    def to_json(self) -> dict[str, Any]:
        """The REST and CLI shape: times as ISO 8601 UTC, the targets as declared."""
        body = asdict(self)
        body["targets"] = targets_json(self.targets)
        body["checked_at"] = _iso(self.checked_at)
        body["as_of"] = _iso(self.as_of) if self.as_of is not None else None
        body["probes"] = {"succeeded": self.probes[0], "total": self.probes[1]}
        body["ok"] = self.ok
        return body

    @classmethod
    def from_stored(cls, text: str) -> SlaStatus:
        body = json.loads(text)
        body["targets"] = Sla(**body["targets"])
        body["probes"] = tuple(body["probes"])
        body["quality"] = tuple(body["quality"])
        body["problems"] = tuple(body["problems"])
        return cls(**body)


# --- history in the registry database --------------------------------------------------------------


class SlaStore:
    """The ``sla_checks`` table of the registry database (a connection per thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._connect().executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            self._local.conn = conn
        return conn

    def record(self, measured: Measurement, targets: Sla, window: float) -> tuple[SlaStatus, SlaStatus | None]:
        """Judge ``measured`` against ``targets`` with the product's history (availability over
        ``window`` seconds, the previous row count), store it, prune old checks; all in one
        transaction. Returns (the new status, the previous one)."""
        conn = self._connect()
        conn.execute("BEGIN IMMEDIATE")
        try:
            previous = self._latest(conn, measured.product_id)
            succeeded, total = conn.execute(
                "SELECT coalesce(sum(available), 0), count(*) FROM sla_checks WHERE product_id = ? AND checked_at > ?",
                (measured.product_id, measured.started_at - window),
            ).fetchone()
            rows = conn.execute(
                "SELECT row_count FROM sla_checks WHERE product_id = ? AND version = ? AND row_count IS NOT NULL "
                "ORDER BY checked_at DESC, id DESC LIMIT 1",
                (measured.product_id, measured.version),
            ).fetchone()
            status = judge(measured, targets, (succeeded + measured.available, total + 1), rows[0] if rows else None)
            conn.execute(
                "INSERT INTO sla_checks (product_id, version, checked_at, available, row_count, breaches, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (status.product_id, status.version, status.checked_at, int(status.available), status.row_count,
                 ",".join(sorted(status.breaches)), json.dumps(asdict(status))),
            )
            conn.execute("DELETE FROM sla_checks WHERE product_id = ? AND checked_at < ?",
                         (status.product_id, status.checked_at - HISTORY_DAYS * 86400))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return status, previous

    def latest(self, product_id: str) -> SlaStatus | None:
        return self._latest(self._connect(), product_id)

    def newest_id(self) -> int | None:
        """The id of the newest check recorded: it changes whenever a check is (a cheap change test)."""
        return self._connect().execute("SELECT max(id) FROM sla_checks").fetchone()[0]

    def latest_all(self) -> dict[str, SlaStatus]:
        """The newest check of every product that has one."""
        rows = self._connect().execute(
            "SELECT status FROM sla_checks WHERE id IN (SELECT max(id) FROM sla_checks GROUP BY product_id)"
        ).fetchall()
        found = [SlaStatus.from_stored(text) for (text,) in rows]
        return {s.product_id: s for s in found}

    def history(self, product_id: str, limit: int = 20) -> list[SlaStatus]:
        """The product's newest ``limit`` checks, newest first."""
        rows = self._connect().execute(
            "SELECT status FROM sla_checks WHERE product_id = ? ORDER BY checked_at DESC, id DESC LIMIT ?",
            (product_id, limit),
        ).fetchall()
        return [SlaStatus.from_stored(text) for (text,) in rows]

    @staticmethod
    def _latest(conn: sqlite3.Connection, product_id: str) -> SlaStatus | None:
        row = conn.execute(
            "SELECT status FROM sla_checks WHERE product_id = ? ORDER BY checked_at DESC, id DESC LIMIT 1", (product_id,)
        ).fetchone()
        return SlaStatus.from_stored(row[0]) if row else None

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None


_stores: dict[Path, SlaStore] = {}
_stores_lock = threading.Lock()


def store_for(registry: Any) -> SlaStore:
    """The store in ``registry``'s database (one per database file and process)."""
    path = Path(registry.path).resolve()
    with _stores_lock:
        if path not in _stores:
            _stores[path] = SlaStore(path)
        return _stores[path]


def latest(registry: Any, product_id: str) -> SlaStatus | None:
    """The product's most recent SLA check recorded in ``registry``'s database, None if never checked."""
    return store_for(registry).latest(product_id)


# --- one check ---------------------------------------------------------------------------------------


def measure(descriptor: Descriptor, connector: Connector, targets: Sla, clock: Callable[[], float] = time.time,
            product_id: str | None = None) -> Measurement:
    """Ask the product's source: the probe first; if it answers, freshness, the row count (when
    the SLA has a completeness target) and the quality rules. Never raises for a source's failure.
    ``product_id``: what the check is recorded under (default the product's id; ``domain.name@N``
    for an older major)."""
    started, t0 = clock(), time.perf_counter()
    base = dict(product_id=product_id or descriptor.product_id, version=descriptor.version, started_at=started)
    try:
        relation = connector.relation(descriptor.source.table, descriptor.source.query)
        scan = connector.scan(connector.render(exp.select("*").from_(relation).limit(1)))
        try:
            scan.reader.read_all()
        finally:
            scan.close()
    except Exception as err:  # noqa: BLE001 - whatever the source says, it did not answer
        return Measurement(**base, seconds=time.perf_counter() - t0, available=False, error=_message(err))
    probe_ms = round((time.perf_counter() - t0) * 1000, 3)
    problems: list[str] = []
    as_of, basis, row_count = None, "unknown", None
    try:
        freshness = connector.freshness(descriptor.source.table, descriptor.source.query, targets.freshness_column)
        as_of, basis = (freshness.as_of.timestamp() if freshness.as_of else None), freshness.basis
    except Exception as err:  # noqa: BLE001
        problems.append(f"freshness: {_message(err)}")
    if targets.completeness is not None:
        try:
            row_count = connector.row_count(descriptor.source.table, descriptor.source.query)
        except Exception as err:  # noqa: BLE001
            problems.append(f"row count: {_message(err)}")
    quality: tuple[dict[str, Any], ...] = ()
    if gates.rules(descriptor):
        try:
            quality = tuple(r.to_json() for r in gates.run_gates(descriptor, connector))
        except Exception as err:  # noqa: BLE001
            problems.append(f"quality: {_message(err)}")
    return Measurement(**base, seconds=time.perf_counter() - t0, available=True, probe_ms=probe_ms, as_of=as_of,
                       freshness_basis=basis, row_count=row_count, quality=quality, problems=tuple(problems))


def judge(measured: Measurement, targets: Sla, probes: tuple[int, int], previous_rows: int | None) -> SlaStatus:
    """The status of a measurement: its derived numbers and the conditions it breaches."""
    age = measured.started_at - measured.as_of if measured.as_of is not None else None
    availability = 100.0 * probes[0] / probes[1] if probes[1] else None
    completeness = None
    if measured.row_count is not None and previous_rows is not None:
        completeness = 100.0 if previous_rows == 0 else min(100.0, 100.0 * measured.row_count / previous_rows)
    checked = [q for q in measured.quality if not q.get("skipped")]  # skipped: the source cannot express the rule
    score = gates.score(checked) if checked else None
    breaches: dict[str, str] = {}
    if targets.freshness is not None and age is not None and age > targets.freshness:
        breaches["freshness"] = (f"data is {format_seconds(age)} old ({measured.freshness_basis} = "
                                 f"{_iso(measured.as_of)}); the SLA is {format_seconds(targets.freshness)}")
    if targets.availability is not None and availability is not None and availability < targets.availability:
        cause = f"; last probe failed: {measured.error}" if not measured.available else ""
        breaches["availability"] = (f"{availability:.2f}% of {probes[1]} probes succeeded in the window; "
                                    f"the SLA is {targets.availability:g}%{cause}")
    if targets.completeness is not None and completeness is not None and completeness < targets.completeness:
        breaches["completeness"] = (f"{measured.row_count} rows, {completeness:.2f}% of the previous check's "
                                    f"{previous_rows}; the SLA is {targets.completeness:g}%")
    if targets.quality_threshold is not None and score is not None and score < targets.quality_threshold:
        failed = ", ".join(q["name"] for q in checked if not q["passed"])
        breaches["quality"] = f"quality score {score:.3f} < {targets.quality_threshold:g} (failing: {failed})"
    return SlaStatus(
        product_id=measured.product_id, version=measured.version, checked_at=measured.started_at,
        duration_seconds=round(measured.seconds, 3), available=measured.available, error=measured.error,
        data_age_seconds=round(age, 3) if age is not None else None, as_of=measured.as_of,
        freshness_basis=measured.freshness_basis, row_count=measured.row_count,
        completeness=round(completeness, 3) if completeness is not None else None,
        availability=round(availability, 3) if availability is not None else None, probes=probes,
        quality_score=round(score, 4) if score is not None else None, quality=measured.quality,
        problems=measured.problems, targets=targets, breaches=breaches,
    )


# --- the monitor -----------------------------------------------------------------------------------------


@dataclass
class _Check:
    key: str  # what the check is recorded under: domain.name, or domain.name@N for an older major
    descriptor: Descriptor
    targets: Sla
    deadline: float  # time.monotonic()
    started_at: float  # the monitor's clock
    done: threading.Event = field(default_factory=threading.Event)
    result: Measurement | None = None
    reported: bool = False  # judged and recorded (on completion, or as a timeout)


class SlaMonitor:
    """Checks every product on its schedule, records each check and raises alerts.

    ``registry`` is the product registry (its database also holds the history); ``connector_for``
    gives a product's connector (the gateway's ``SourceManager.connector_for``, so checks use its
    pooled connections). ``clock`` (Unix seconds) is what schedules and ages are measured with.
    With ``usage`` (the audit log's ``UsageIndex``) it also keeps ``product_consumers`` current.
    """

    def __init__(
        self,
        registry: Any,
        connector_for: Callable[[Descriptor], Connector],
        alerts: AlertSink | None = None,
        clock: Callable[[], float] = time.time,
        check_timeout: float = DEFAULT_CHECK_TIMEOUT,
        max_concurrent: int = 4,
        availability_window: float = DEFAULT_AVAILABILITY_WINDOW,
        tick: float = 1.0,
        usage: Any = None,
    ) -> None:
        self.registry = registry
        self.store = store_for(registry)
        self.connector_for = connector_for
        self.alerts = alerts if alerts is not None else AlertSink()
        self.clock = clock
        self.check_timeout = check_timeout
        self.max_concurrent = max(1, max_concurrent)
        self.availability_window = availability_window
        self.tick = tick
        self.usage = usage
        self._usage_at = float("-inf")  # time.monotonic() of the last product_consumers update
        self.last_cycle: float | None = None  # the monitor's clock at its last scheduling pass
        self.cycle_error: str | None = None
        self._checks: dict[str, _Check] = {}  # product id -> its running (or timed-out, still running) check
        self._last_started: dict[str, tuple[float, str]] = {}  # product id -> (clock, version) of its last check
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- running ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Check in the background until ``stop()``."""
        self._thread = threading.Thread(target=self._run, name="sla-monitor", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.alerts.close(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.cycle()
            self._stop.wait(self.tick)

    def cycle(self) -> list[SlaStatus]:
        """One scheduling pass: record finished or timed-out checks, start the due ones.
        Returns the statuses recorded in this pass. Never raises."""
        try:
            recorded = self._reap()
            self._launch(self._due())
            self._export_consumers()
            self.last_cycle, self.cycle_error = self.clock(), None
            return recorded
        except Exception as err:  # noqa: BLE001 - the monitor must outlive any failure (the registry locked, ...)
            self.cycle_error = _message(err)
            log.exception("SLA monitor: scheduling pass failed; retrying")
            return []

    def check_now(self, product_ids: Iterable[str] | None = None, progress: Callable[[SlaStatus], None] | None = None) -> list[SlaStatus]:
        """Check the given products (default: every monitored product) now and wait for all of
        them (each at most ``check_timeout``); their statuses in the order given."""
        monitored = self.monitored()
        keys = list(monitored) if product_ids is None else [p for p in product_ids if p in monitored]
        pending = list(keys)
        found: dict[str, SlaStatus] = {}
        while pending or any(not c.reported for c in self._checks.values()):
            room = self.max_concurrent - sum(1 for c in self._checks.values() if not c.reported)
            ready = [key for key in pending if key not in self._checks][: max(0, room)]
            for key in ready:
                pending.remove(key)
            self._launch([(key, monitored[key]) for key in ready])
            for status in self._reap(wait=0.05):
                found[status.product_id] = status
                if progress is not None:
                    progress(status)
        return [found[key] for key in keys if key in found]

    def monitored(self) -> dict[str, Descriptor]:
        """Every queryable major of every product, derived ones included (``connector_for``
        gives their rows through the gateway, ``gateway/derived_source.py``), by the name SQL
        gives it and its checks are recorded under: ``domain.name`` for the newest major,
        ``domain.name@N`` for an older one consumers still read."""
        catalog = self.registry.catalog()
        found: dict[str, Descriptor] = {}
        for product_id in sorted(catalog.versions):
            for i, d in enumerate(catalog.majors(product_id)):
                found[product_id if i == 0 else f"{product_id}@{d.major}"] = d
        return found

    # --- scheduling ------------------------------------------------------------------------------

    def _due(self) -> list[tuple[str, Descriptor]]:
        now = self.clock()
        room = self.max_concurrent - sum(1 for c in self._checks.values() if not c.reported)
        due = []
        for key, d in self.monitored().items():
            if key in self._checks:
                continue
            if key not in self._last_started:
                last = self.store.latest(key)
                if last is not None:
                    self._last_started[key] = (last.checked_at, last.version)
            started, version = self._last_started.get(key, (None, None))
            if started is None or version != d.version or now - started >= d.sla.monitor_every:
                due.append((key, d))
        due.sort(key=lambda item: self._last_started.get(item[0], (0.0, ""))[0])  # the longest waiting first
        return due[: max(0, room)]

    def _export_consumers(self, every: float = 60.0) -> None:
        """``product_consumers`` from the audit log's usage, at most once a minute."""
        if self.usage is None or time.monotonic() - self._usage_at < every:
            return
        self._usage_at = time.monotonic()
        totals: dict[str, int] = {}  # products past the label limit add up under "other"
        for product_id, (_queries, consumers) in self.usage.counts().items():
            label = metrics.product_label(product_id)
            totals[label] = totals.get(label, 0) + consumers
        for label, consumers in totals.items():
            metrics.PRODUCT_CONSUMERS.labels(label).set(consumers)

    def _launch(self, products: Sequence[tuple[str, Descriptor]]) -> None:
        for key, d in products:
            check = _Check(key, d, d.sla, time.monotonic() + self.check_timeout, self.clock())
            with self._lock:
                self._checks[key] = check
            self._last_started[key] = (check.started_at, d.version)
            threading.Thread(target=self._measure, args=(check,), name=f"sla-check-{key}", daemon=True).start()

    def _measure(self, check: _Check) -> None:
        try:
            check.result = measure(check.descriptor, self.connector_for(check.descriptor), check.targets, self.clock,
                                   check.key)
        except Exception as err:  # noqa: BLE001 - e.g. the connector cannot be opened
            d = check.descriptor
            check.result = Measurement(check.key, d.version, check.started_at, 0.0, False, _message(err))
        finally:
            check.done.set()

    def _reap(self, wait: float = 0.0) -> list[SlaStatus]:
        """Record each check that finished, and each that ran out of time (as unavailable; its
        thread is left to finish, and the product is not checked again until it has)."""
        if wait:
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not any(
                c.done.is_set() or time.monotonic() > c.deadline for c in self._checks.values() if not c.reported
            ):
                time.sleep(0.01)
        recorded = []
        with self._lock:
            checks = list(self._checks.items())
        for product_id, check in checks:
            if check.done.is_set():
                with self._lock:
                    del self._checks[product_id]
                if check.reported:
                    continue
                measured = check.result
            elif not check.reported and time.monotonic() > check.deadline:
                d = check.descriptor
                measured = Measurement(check.key, d.version, check.started_at, self.check_timeout, False,
                                       f"no answer within {self.check_timeout:g} s (the check timed out)")
            else:
                continue
            check.reported = True
            assert measured is not None
            status = self._record(check.descriptor, measured, check.targets)
            if status is not None:
                recorded.append(status)
        return recorded

    # --- recording and alerting -------------------------------------------------------------------

    def _record(self, descriptor: Descriptor, measured: Measurement, targets: Sla) -> SlaStatus | None:
        try:
            status, previous = self.store.record(measured, targets, self.availability_window)
        except Exception:  # noqa: BLE001
            log.exception("SLA monitor: could not record the check of %s", measured.product_id)
            return None
        _export(status)
        if measured.quality:
            try:
                self.registry.record_quality(descriptor.product_id, status.version, measured.quality, status.checked_at)
            except Exception:  # noqa: BLE001
                log.exception("SLA monitor: could not record the quality run of %s", status.product_id)
        before = previous.breaches if previous is not None else {}  # a new version inherits its open alerts
        for condition in CONDITIONS:
            if condition in status.breaches and condition not in before:
                self.alerts.send(_alert("firing", status, condition, status.breaches[condition]))
            elif condition in before and condition not in status.breaches:
                self.alerts.send(_alert("resolved", status, condition, f"recovered: {_observed_text(status, condition)}"))
        return status

    def state(self) -> dict[str, Any]:
        """For ``/readyz``: is the monitor running, when it last ran, which products breach."""
        latest_all = self.store.latest_all()
        breaching = {pid: sorted(s.breaches) for pid, s in latest_all.items() if s.breaches}
        return {
            "running": self.running,
            "last_cycle": _iso(self.last_cycle) if self.last_cycle is not None else None,
            "error": self.cycle_error,
            "checks_running": sorted(p for p, c in self._checks.items() if not c.reported),
            "timed_out_still_running": sorted(p for p, c in self._checks.items() if c.reported),
            "products_checked": len(latest_all),
            "breaching": breaching,
        }


def _export(status: SlaStatus) -> None:
    """The status's gauges and counters (``product_*``)."""
    product = metrics.product_label(status.product_id)
    metrics.PRODUCT_SLA_LAST_CHECK.labels(product).set(status.checked_at)
    metrics.SLA_CHECK_SECONDS.observe(status.duration_seconds)
    if status.data_age_seconds is not None:
        metrics.PRODUCT_DATA_AGE.labels(product).set(status.data_age_seconds)
    if status.availability is not None:
        metrics.PRODUCT_AVAILABILITY.labels(product).set(status.availability / 100)
    if status.completeness is not None:
        metrics.PRODUCT_COMPLETENESS.labels(product).set(status.completeness / 100)
    if status.quality_score is not None:
        metrics.PRODUCT_QUALITY_SCORE.labels(product).set(status.quality_score)
    for q in status.quality:
        if not q["passed"] and not q.get("skipped"):
            metrics.PRODUCT_VALIDATION_FAILURES.labels(product, q["name"]).inc()
    for condition in CONDITIONS:
        metrics.PRODUCT_SLA_BREACHED.labels(product, condition).set(1 if condition in status.breaches else 0)


def _alert(state: str, status: SlaStatus, condition: str, message: str) -> Alert:
    observed, threshold = {
        "freshness": (status.data_age_seconds, status.targets.freshness),
        "availability": (status.availability, status.targets.availability),
        "completeness": (status.completeness, status.targets.completeness),
        "quality": (status.quality_score, status.targets.quality_threshold),
    }[condition]
    return Alert(state, status.product_id, status.version, condition, message, observed, threshold, status.checked_at)


def _observed_text(status: SlaStatus, condition: str) -> str:
    if condition == "freshness":
        return f"data is {format_seconds(status.data_age_seconds or 0)} old"
    if condition == "availability":
        return f"{status.availability:.2f}% of probes succeeded" if status.availability is not None else "probes answer"
    if condition == "completeness":
        return f"{status.completeness:.2f}% complete" if status.completeness is not None else "row count steady"
    return f"quality score {status.quality_score}"


def format_seconds(seconds: float) -> str:
    """``3725`` -> ``1h 2m``: durations as people read them."""
    seconds = abs(seconds)
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            parts.append(f"{int(seconds // size)}{unit}")
            seconds %= size
    return " ".join(parts[:2])


MONITORED = ("freshness", "freshness_column", "availability", "completeness", "quality_threshold", "monitor_every")
"""The ``spec.sla`` keys the monitor judges or schedules by (``stale_while_revalidate`` is the cache's)."""


def targets_json(sla: Sla) -> dict[str, Any]:
    """What the monitor holds a product to, as REST and the CLI show it."""
    return {key: getattr(sla, key) for key in MONITORED}


def _iso(unix: float | None) -> str | None:
    if unix is None:
        return None
    return datetime.fromtimestamp(unix, timezone.utc).isoformat().replace("+00:00", "Z")


def _message(err: BaseException) -> str:
    text = getattr(err, "message", None) or str(err) or type(err).__name__
    return text.splitlines()[0][:500]


__all__ = ["CONDITIONS", "Measurement", "SlaMonitor", "SlaStatus", "SlaStore", "judge", "latest",
           "measure", "store_for"]
