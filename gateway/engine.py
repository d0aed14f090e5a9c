"""Runs a bound plan: fetch fragments concurrently, join them in DataFusion, stream the answer.

The engine sits behind this one class so that joins too big for one machine can later go to a
distributed engine without the planner or the protocol layers noticing.  Three things bound a
query: its deadline (fragments are cancelled at their sources when it passes), a memory limit
(fragment results count against it, and DataFusion gets it as a spilling memory pool), and the
client going away (checked between batches).
"""

from __future__ import annotations

import threading
import time
from contextlib import contextmanager
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
from datafusion import RuntimeEnvBuilder, SessionConfig, SessionContext
from sqlglot import exp

from connectors.base import Scan
from gateway import metrics
from gateway.errors import InvalidQuery, MeshError, QueryCancelled, QueryTimeout, ResourceExhausted, SourceUnavailable
from gateway.planner.bind import BoundFragment, BoundPlan
from gateway.planner.plan import RAW_TABLE, DynamicFilter

MAX_BATCH_BYTES = 4 * 1024 * 1024
"""Largest record batch sent to a client: well under ADBC's 16 MiB receive limit."""


FragmentCache = Callable[["BoundFragment", str, Callable[[], pa.Table]], pa.Table]
"""``(fragment, sql, load) -> rows``: the fragment's rows for ``sql`` (its SQL, or the SQL with a
dynamic filter), from a cache or from ``load()`` (the source).  The service provides it."""


@dataclass
class QueryControl:
    """A query's deadline and its client's liveness, checked wherever the engine waits."""

    deadline: float
    is_cancelled: Callable[[], bool]
    timeout_seconds: float
    sent: list[tuple[str, str]] = field(default_factory=list)  # (source, SQL) each source was sent: history, audit
    fragment_cache: FragmentCache | None = None  # where fragment results may come from instead of their source

    def check(self) -> None:
        if self.is_cancelled():
            raise QueryCancelled("the client cancelled the query or disconnected")
        if time.monotonic() > self.deadline:
            raise QueryTimeout(
                f"query exceeded its {self.timeout_seconds:g} s timeout (--query-timeout); its source work was cancelled"
            )


class Engine:
    """Executes bound plans; one instance per gateway, shared by all queries."""

    def __init__(self, memory_limit: int, fetch_threads: int = 16, target_partitions: int = 2) -> None:
        self.memory_limit = memory_limit
        self.target_partitions = target_partitions
        self._pool = ThreadPoolExecutor(max_workers=fetch_threads, thread_name_prefix="fragment")

    def execute(
        self, plan: BoundPlan, control: QueryControl, estimates: dict[str, int | None] | None = None
    ) -> pa.RecordBatchReader:
        """Run ``plan``; ``estimates`` (rows per fragment, from the sources' statistics) let the
        engine fetch a small fragment first and filter a large one by its join keys."""
        if plan.passthrough is not None:
            return self._stream_fragment(plan.passthrough, plan.output_names, control)
        probes = choose_dynamic_filters(
            plan.dynamic_filters,
            estimates or {},
            exact=frozenset(f.name for f in plan.fragments if f.unfiltered),
            key_limits={f.name: f.connector.capabilities.max_in_list for f in plan.fragments if f.connector},
        )
        tables = self._fetch_all([f for f in plan.fragments if not f.stage], probes, control)
        for stage in (f for f in plan.fragments if f.stage):
            control.check()
            tables[stage.name] = self._run_stage(tables, stage.post_sql)  # type: ignore[arg-type]
        return self._run_residual(plan, tables, control)

    def result_schema(self, plan: BoundPlan, fragment_schemas: dict[str, pa.Schema]) -> pa.Schema:
        """The answer's schema without running anything: the residual over empty fragments."""
        if plan.passthrough is not None:
            return _rename(fragment_schemas[plan.passthrough.name], plan.output_names)
        ctx = self._context()
        for name, schema in fragment_schemas.items():
            ctx.from_arrow(schema.empty_table(), name=name)
        try:
            schema = ctx.sql(plan.residual_sql).schema()
        except Exception as err:  # noqa: BLE001 - DataFusion raises plain exceptions
            raise _engine_error(err) from err
        return _rename(schema, plan.output_names)

    # --- fragments ----------------------------------------------------------------------------

    def _stream_fragment(self, fragment: BoundFragment, names: list[str], control: QueryControl) -> pa.RecordBatchReader:
        """A single-source answer streams straight from the source, batch by batch."""
        if fragment.local is not None:
            table = fragment.local.rows()
            return pa.RecordBatchReader.from_batches(_rename(table.schema, names), iter(_rename_batches(table.to_batches(), names)))
        scan = self._open(fragment, control)
        watchdog = _Watchdog(scan, control)
        try:
            with naming_products(fragment):
                schema = _rename(conform_schema(_source_schema(scan, control), fragment.expected), names)
        except BaseException:
            watchdog.stop()
            scan.close()
            raise

        def batches() -> Iterator[pa.RecordBatch]:
            try:
                with _measured(fragment), naming_products(fragment):
                    for batch in _read(scan, control):
                        _scanned(fragment, batch.nbytes)
                        yield from _slices(_rename_batch(conform(batch, fragment.expected), schema))
            finally:
                watchdog.stop()
                scan.close()

        return pa.RecordBatchReader.from_batches(schema, batches())

    def _fetch_all(
        self, fragments: list[BoundFragment], probes: dict[str, list[DynamicFilter]], control: QueryControl
    ) -> dict[str, pa.Table]:
        """Fetch every fragment concurrently; a probe waits for its builds' keys, then starts."""
        budget = _MemoryBudget(self.memory_limit)
        scans: list[Scan] = []
        lock = threading.Lock()

        def fetch(fragment: BoundFragment, sql: str | None = None) -> pa.Table:
            if fragment.local is not None:
                return fragment.local.rows()
            assert fragment.sql is not None
            text = sql or fragment.sql
            if control.fragment_cache is not None:
                return control.fragment_cache(fragment, text, lambda: load(fragment, text))
            return load(fragment, text)

        def load(fragment: BoundFragment, sql: str) -> pa.Table:
            with _measured(fragment):
                scan = self._open(fragment, control, sql)
                with lock:
                    scans.append(scan)
                watchdog = _Watchdog(scan, control)
                try:
                    with naming_products(fragment):
                        schema = conform_schema(_source_schema(scan, control), fragment.expected)
                        batches = []
                        for batch in _read(scan, control):
                            budget.take(batch.nbytes)
                            _scanned(fragment, batch.nbytes)
                            batches.append(conform(batch, fragment.expected))
                    table = pa.Table.from_batches(batches, schema=schema)
                finally:
                    watchdog.stop()
                    scan.close()
            return self._post_process(table, fragment.post_sql) if fragment.post_sql else table

        by_name = {f.name: f for f in fragments}
        futures: dict[str, Future[pa.Table]] = {
            f.name: self._pool.submit(fetch, f) for f in fragments if f.name not in probes
        }
        try:
            while len(futures) < len(fragments) or not all(f.done() for f in futures.values()):
                for probe, filters in probes.items():
                    if probe not in futures and all(futures[f.build].done() for f in filters):
                        builds = {f.build: futures[f.build].result() for f in filters}
                        futures[probe] = self._pool.submit(fetch, by_name[probe], filtered_sql(by_name[probe], filters, builds))
                pending = [f for f in futures.values() if not f.done()]
                if pending:
                    done, _ = wait(pending, timeout=0.05, return_when=FIRST_COMPLETED)
                    for future in done:
                        future.result()  # re-raise the first failure
                control.check()
        except BaseException:
            for future in futures.values():
                future.cancel()
            with lock:
                for scan in scans:
                    scan.cancel()
            raise
        return {name: future.result() for name, future in futures.items()}

    def _open(self, fragment: BoundFragment, control: QueryControl, sql: str | None = None) -> Scan:
        control.check()
        assert fragment.connector is not None and fragment.sql is not None
        text = sql or fragment.sql
        control.sent.append((fragment.connector.display_name, text))
        with naming_products(fragment):
            return fragment.connector.scan(text)

    def _post_process(self, raw: pa.Table, post_sql: str) -> pa.Table:
        """Apply a fragment's governance (masks, row filters) in the engine, before the query
        sees any of its rows."""
        ctx = self._context()
        ctx.from_arrow(raw, name=RAW_TABLE)
        try:
            return ctx.sql(post_sql).to_arrow_table()
        except Exception as err:  # noqa: BLE001 - DataFusion raises plain exceptions
            raise _engine_error(err) from err

    def post_schema(self, raw: pa.Schema, post_sql: str) -> pa.Schema:
        """The schema a fragment has after its post-processing, without running it."""
        return self._post_process(raw.empty_table(), post_sql).schema

    def _run_stage(self, tables: dict[str, pa.Table], sql: str) -> pa.Table:
        """A governed derived product over several sources, computed whole from its fragments
        before the query sees any of its rows (so no predicate of the query's runs on a row its
        row filters remove)."""
        ctx = self._context()
        for name, table in tables.items():
            ctx.from_arrow(table, name=name)
        try:
            return ctx.sql(sql).to_arrow_table()
        except Exception as err:  # noqa: BLE001 - DataFusion raises plain exceptions
            raise _engine_error(err) from err

    def stage_schema(self, schemas: dict[str, pa.Schema], sql: str) -> pa.Schema:
        """The schema of a stage over fragments of ``schemas``, without running it."""
        return self._run_stage({name: schema.empty_table() for name, schema in schemas.items()}, sql).schema

    # --- residual -----------------------------------------------------------------------------

    def _context(self) -> SessionContext:
        runtime = RuntimeEnvBuilder().with_fair_spill_pool(self.memory_limit).with_disk_manager_os()
        # Casts to TEXT make plain strings, as the sources' strings are: a result's schema must
        # not depend on whether a value came from a literal or a cast (Utf8 vs Utf8View).
        config = (
            SessionConfig()
            .with_target_partitions(self.target_partitions)
            .with_information_schema(False)
            .set("datafusion.sql_parser.map_string_types_to_utf8view", "false")
        )
        return SessionContext(config, runtime)

    def _run_residual(self, plan: BoundPlan, tables: dict[str, pa.Table], control: QueryControl) -> pa.RecordBatchReader:
        ctx = self._context()
        for name, table in tables.items():
            ctx.from_arrow(table, name=name)
        try:
            frame = ctx.sql(plan.residual_sql)
            schema = _rename(frame.schema(), plan.output_names)
            stream = frame.execute_stream()
        except Exception as err:  # noqa: BLE001
            raise _engine_error(err) from err

        def batches() -> Iterator[pa.RecordBatch]:
            iterator = iter(stream)
            while True:
                control.check()
                try:
                    batch = next(iterator)
                except StopIteration:
                    return
                except Exception as err:  # noqa: BLE001
                    raise _engine_error(err) from err
                yield from _slices(_rename_batch(batch.to_pyarrow(), schema))

        return pa.RecordBatchReader.from_batches(schema, batches())

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


MAX_FILTER_KEYS = 100_000
"""Most distinct keys any dynamic filter sends; each source's ``max_in_list`` may lower it."""

MIN_PROBE_RATIO = 4
"""A fragment is filtered by another's keys only if its source holds this many times more rows."""


def choose_dynamic_filters(
    filters: list[DynamicFilter],
    estimates: dict[str, int | None],
    exact: frozenset[str] = frozenset(),
    key_limits: dict[str, int] | None = None,
) -> dict[str, list[DynamicFilter]]:
    """Which candidate filters to use.

    A probe waits for its build, so a filter is only worth it when it will most likely be used:
    the probe side's sources hold at least ``MIN_PROBE_RATIO`` times the build side's rows, and
    the build side will likely return no more keys than the probe's source takes
    (``key_limits``, default ``MAX_FILTER_KEYS``): its estimate is at most twice that, or at
    most that when the estimate is ``exact`` (a fragment with no predicates returns every row).
    No fragment both waits for keys and provides them (no chains of waiting).
    """
    limits = key_limits or {}
    chosen: dict[str, list[DynamicFilter]] = {}
    builds: set[str] = set()
    for f in sorted(filters, key=lambda f: estimates.get(f.build) or 0):
        build, probe = estimates.get(f.build), estimates.get(f.probe)
        if build is None or probe is None or probe < MIN_PROBE_RATIO * max(build, 1):
            continue
        limit = min(MAX_FILTER_KEYS, limits.get(f.probe, MAX_FILTER_KEYS))
        if build > (limit if f.build in exact else 2 * limit):
            continue
        if f.build in chosen or f.probe in builds:
            continue
        chosen.setdefault(f.probe, []).append(f)
        builds.add(f.build)
    return chosen


def filtered_sql(fragment: BoundFragment, filters: list[DynamicFilter], builds: dict[str, pa.Table]) -> str | None:
    """The probe fragment's SQL restricted to the build sides' keys, or None to run it as is.

    Keys are integers or strings (strings quoted with doubled quotes, standard SQL in every
    dialect here); any other key type, or too many keys, leaves that filter out.
    """
    assert fragment.connector is not None and fragment.sql is not None
    dialect = fragment.connector.dialect
    limit = min(MAX_FILTER_KEYS, fragment.connector.capabilities.max_in_list)
    conditions = []
    for f in filters:
        keys = pc.unique(builds[f.build].column(f.build_column).drop_null())
        if len(keys) > limit:
            continue
        column = exp.column(f.probe_column, table="_dynamic", quoted=True).sql(dialect=dialect)
        if len(keys) == 0:
            conditions.append("1 = 0")
        elif pa.types.is_integer(keys.type):
            conditions.append(f"{column} IN ({', '.join(str(int(k)) for k in keys.to_pylist())})")
        elif pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type):
            quoted = ", ".join("'" + k.replace("'", "''") + "'" for k in keys.to_pylist())
            conditions.append(f"{column} IN ({quoted})")
    if not conditions:
        return None
    return f"SELECT * FROM ({fragment.sql}) AS _dynamic WHERE {' AND '.join(conditions)}"


class _MemoryBudget:
    """Bytes of fragment results one query may hold; exceeding it fails the query, not the process."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._lock = threading.Lock()

    def take(self, nbytes: int) -> None:
        with self._lock:
            self.used += nbytes
            if self.used > self.limit:
                raise ResourceExhausted(
                    f"query needs more than the gateway's memory limit of {self.limit // (1024 * 1024)} MiB "
                    "(--memory-limit) for its source results; add filters or aggregate closer to the sources"
                )


@contextmanager
def _measured(fragment: BoundFragment) -> Iterator[None]:
    """``connector_fragment_seconds`` and ``connector_errors_total`` of one fragment's fetch
    (a cancelled or timed-out fetch is not a source error)."""
    kind = fragment.connector.kind if fragment.connector is not None else "local"
    started = time.perf_counter()
    try:
        yield
    except (QueryCancelled, QueryTimeout, ResourceExhausted, GeneratorExit):
        raise
    except BaseException:
        metrics.CONNECTOR_ERRORS.labels(kind).inc()
        raise
    metrics.CONNECTOR_FRAGMENT_SECONDS.labels(kind).observe(time.perf_counter() - started)


def _scanned(fragment: BoundFragment, nbytes: int) -> None:
    """``product_bytes_scanned_total``: a batch fetched from the source counts to each product it read."""
    for product in fragment.products:
        metrics.PRODUCT_BYTES_SCANNED.labels(metrics.product_label(product.rsplit("@", 1)[0])).inc(nbytes)


@contextmanager
def naming_products(fragment: BoundFragment) -> Iterator[None]:
    """A source failure names the products the fragment was reading, not only the source."""
    try:
        yield
    except SourceUnavailable as err:
        raise SourceUnavailable(f"{err.message} (while reading {', '.join(fragment.products)})") from err


class _Watchdog:
    """Cancels a scan at its source the moment the query's deadline passes or its client leaves,
    even while the source is still computing (an aggregate returns nothing until it is done)."""

    def __init__(self, scan: Scan, control: QueryControl) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, args=(scan, control), daemon=True)
        self._thread.start()

    def _watch(self, scan: Scan, control: QueryControl) -> None:
        while not self._stop.wait(0.05):
            if control.is_cancelled() or time.monotonic() > control.deadline:
                scan.cancel()
                return

    def stop(self) -> None:
        self._stop.set()


def _source_schema(scan: Scan, control: QueryControl) -> pa.Schema:
    """The scan's schema; touching the reader starts the source query, which may be cancelled."""
    try:
        return scan.reader.schema
    except MeshError:
        control.check()  # report a timeout or cancel as such, not as the driver's symptom
        raise


def _read(scan: Scan, control: QueryControl) -> Iterator[pa.RecordBatch]:
    """A scan's batches, checking the deadline and the client between them."""
    while True:
        control.check()
        try:
            batch = scan.reader.read_next_batch()
        except StopIteration:
            return
        except MeshError:
            control.check()
            raise
        except Exception as err:  # noqa: BLE001 - driver errors mid-stream
            control.check()  # a cancel we asked for surfaces as a driver error: report the cause
            raise SourceUnavailable(f"source failed while streaming: {str(err).splitlines()[0][:300]}") from err
        yield batch


def _engine_error(err: Exception) -> MeshError:
    message = str(err).strip()
    if "Resources exhausted" in message or "ResourcesExhausted" in message:
        return ResourceExhausted(
            f"query exceeded the gateway's memory limit (--memory-limit) in the engine: {message.splitlines()[0][:400]}"
        )
    return InvalidQuery(f"query failed in the engine: {message.splitlines()[0][:600]}")


# --- type conformance: values come back in the contract's types ----------------------------------


def conform_schema(schema: pa.Schema, expected: pa.Schema | None) -> pa.Schema:
    if expected is None:
        return schema
    fields = [
        pa.field(f.name, expected.field(f.name).type) if f.name in expected.names else f for f in schema
    ]
    return pa.schema(fields)


def conform(batch: pa.RecordBatch, expected: pa.Schema | None) -> pa.RecordBatch:
    """Cast a source's batch to the contract types (a SQLite TEXT date becomes a date)."""
    if expected is None:
        return batch
    columns = []
    changed = False
    for name, column in zip(batch.schema.names, batch.columns):
        target = expected.field(name).type if name in expected.names else column.type
        if column.type != target:
            column = cast_column(column, target)
            changed = True
        columns.append(column)
    if not changed:
        return batch
    return pa.RecordBatch.from_arrays(columns, schema=conform_schema(batch.schema, expected))


def cast_column(column: pa.Array, target: pa.DataType) -> pa.Array:
    """Cast with the conversions sources need: text to dates/timestamps, floats to decimals."""
    source = column.type
    if pa.types.is_dictionary(source):
        column, source = column.dictionary_decode(), source.value_type
    if pa.types.is_decimal(target) and pa.types.is_floating(source):
        return pc.cast(pc.round(column, target.scale), target, safe=False)
    if pa.types.is_timestamp(target) and (pa.types.is_string(source) or pa.types.is_large_string(source)):
        parsed = pc.cast(pc.replace_substring_regex(column, r"(\+00(:?00)?|Z)$", ""), pa.timestamp(target.unit))
        return pc.cast(parsed, target) if target.tz is None else parsed.cast(pa.timestamp(target.unit, tz="UTC")).cast(target)
    if pa.types.is_timestamp(target) and pa.types.is_timestamp(source) and source.tz is None and target.tz:
        return pc.assume_timezone(column, "UTC").cast(target)
    return pc.cast(column, target)


# --- naming and batch size ------------------------------------------------------------------------


def _rename(schema: pa.Schema, names: list[str]) -> pa.Schema:
    if len(names) != len(schema):
        return schema
    return pa.schema([f.with_name(n) for f, n in zip(schema, names)], metadata=schema.metadata)


def _rename_batch(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    if batch.schema.names == schema.names and batch.schema == schema:
        return batch
    columns = [c if c.type == f.type else pc.cast(c, f.type) for c, f in zip(batch.columns, schema)]
    return pa.RecordBatch.from_arrays(columns, schema=schema)


def _rename_batches(batches: list[pa.RecordBatch], names: list[str]) -> Iterator[pa.RecordBatch]:
    for batch in batches:
        yield _rename_batch(batch, _rename(batch.schema, names))


def _slices(batch: pa.RecordBatch) -> Iterator[pa.RecordBatch]:
    """Split a batch so no message exceeds ``MAX_BATCH_BYTES``."""
    if batch.num_rows == 0:
        return
    if batch.nbytes <= MAX_BATCH_BYTES:
        yield batch
        return
    rows = max(1, int(batch.num_rows * MAX_BATCH_BYTES / batch.nbytes))
    for start in range(0, batch.num_rows, rows):
        yield batch.slice(start, rows)
