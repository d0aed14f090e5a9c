"""Choosing and writing dynamic filters (the engine's side; the planner's is in test_pushdown)."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from connectors.base import SourceConfig
from connectors.duckdb import DuckDBConnector
from gateway.engine import MAX_FILTER_KEYS, choose_dynamic_filters, filtered_sql
from gateway.planner.bind import BoundFragment
from gateway.planner.plan import DynamicFilter

F = DynamicFilter("f0", "id", "f1", "ref")
BACK = DynamicFilter("f1", "ref", "f0", "id")


def test_small_side_filters_the_large_side_only() -> None:
    assert choose_dynamic_filters([F, BACK], {"f0": 1_000, "f1": 1_000_000}) == {"f1": [F]}
    assert choose_dynamic_filters([F, BACK], {"f0": 1_000_000, "f1": 1_000}) == {"f0": [BACK]}


def test_no_filter_when_sizes_are_close_unknown_or_the_build_is_too_big() -> None:
    assert choose_dynamic_filters([F, BACK], {"f0": 1_000, "f1": 3_000}) == {}
    assert choose_dynamic_filters([F, BACK], {"f0": None, "f1": 3_000_000}) == {}
    assert choose_dynamic_filters([F], {"f0": 2 * MAX_FILTER_KEYS + 1, "f1": 10**9}) == {}


def test_an_unfiltered_build_that_returns_too_many_keys_is_not_waited_for() -> None:
    estimates = {"f0": 150_000, "f1": 6_000_000}
    assert choose_dynamic_filters([F], estimates, key_limits={"f1": 100_000}) == {"f1": [F]}  # predicates may cut it
    assert choose_dynamic_filters([F], estimates, exact=frozenset({"f0"}), key_limits={"f1": 100_000}) == {}
    assert choose_dynamic_filters([F], estimates, key_limits={"f1": 5_000}) == {}  # the probe's source takes few keys


def test_no_chains_of_waiting() -> None:
    second = DynamicFilter("f1", "x", "f2", "x")
    chosen = choose_dynamic_filters([F, second], {"f0": 10, "f1": 1_000, "f2": 1_000_000})
    assert chosen == {"f1": [F]}  # f1 waits for f0, so it provides no keys to f2


def _fragment(tmp_path) -> BoundFragment:  # noqa: ANN001
    path = tmp_path / "d.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE t AS SELECT i AS ref, 'name ' || i AS name FROM range(10) r(i)")
    con.execute("CREATE TABLE s AS SELECT 'it''s' AS name UNION ALL SELECT 'plain'")
    con.close()
    connector = DuckDBConnector(SourceConfig("duckdb", str(path)))
    return BoundFragment("f1", connector, 'SELECT "t"."ref", "t"."name" FROM t AS "t"', None, ())


def _run(fragment: BoundFragment, sql: str) -> pa.Table:
    scan = fragment.connector.scan(sql)  # type: ignore[union-attr]
    try:
        return scan.reader.read_all()
    finally:
        scan.close()


def test_integer_keys_filter_at_the_source(tmp_path) -> None:  # noqa: ANN001
    fragment = _fragment(tmp_path)
    sql = filtered_sql(fragment, [F], {"f0": pa.table({"id": [3, 5, 5, None]})})
    assert sql is not None and "IN (3, 5)" in sql
    assert sorted(_run(fragment, sql).column("ref").to_pylist()) == [3, 5]


def test_empty_build_side_means_no_rows(tmp_path) -> None:  # noqa: ANN001
    fragment = _fragment(tmp_path)
    sql = filtered_sql(fragment, [F], {"f0": pa.table({"id": pa.array([], pa.int64())})})
    assert sql is not None and _run(fragment, sql).num_rows == 0


def test_string_keys_are_quoted_safely(tmp_path) -> None:  # noqa: ANN001
    fragment = _fragment(tmp_path)
    fragment = BoundFragment("f1", fragment.connector, 'SELECT "s"."name" AS "ref" FROM s AS "s"', None, ())
    hostile = "x') OR 1=1 --"
    sql = filtered_sql(fragment, [F], {"f0": pa.table({"id": ["it's", hostile]})})
    assert sql is not None
    assert _run(fragment, sql).column("ref").to_pylist() == ["it's"]


def test_too_many_keys_or_other_types_leave_the_fragment_unfiltered(tmp_path) -> None:  # noqa: ANN001
    fragment = _fragment(tmp_path)
    many = pa.table({"id": pa.array(range(MAX_FILTER_KEYS + 1), pa.int64())})
    assert filtered_sql(fragment, [F], {"f0": many}) is None
    assert filtered_sql(fragment, [F], {"f0": pa.table({"id": [1.5, 2.5]})}) is None
