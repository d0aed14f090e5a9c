"""Parquet files, read by an in-process, in-memory DuckDB.

``uri`` is a file, a directory (every ``*.parquet`` below it, at any depth) or a glob, relative
to the descriptor's folder. All parquet products share the source id ``parquet``: any of these
connectors can read any product's files, so the planner may push a join or an aggregate over
several parquet products into one DuckDB fragment.

A product may give ``query:`` (DuckDB SQL) instead of reading the files as they are; in it the
table name ``files`` stands for the product's files, e.g.
``SELECT * FROM files WHERE status <> 'test'``.
"""

from __future__ import annotations

import glob
from datetime import datetime
from pathlib import Path
from typing import ClassVar

import duckdb
import sqlglot
from sqlglot import exp

from connectors.base import files_modified_at, parse_query
from connectors.duckdb import DUCKDB_SETTINGS, DuckDBEngineConnector
from gateway.errors import InvalidQuery, SourceUnavailable

#: The table name that stands for the product's files in a parquet product's ``query:``.
FILES_TABLE = "files"


class ParquetConnector(DuckDBEngineConnector):
    kind: ClassVar[str] = "parquet"

    @property
    def source_id(self) -> str:
        return "parquet"

    def _open_database(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB; with ``allowed_directories`` (the gateway's source roots) it may
        read files under them only, whatever a fragment asks for (checked after symlinks by
        DuckDB; the setting cannot be undone by a later statement)."""
        conn = duckdb.connect(":memory:", config=dict(DUCKDB_SETTINGS))
        if self.config.allowed_directories:
            folders = [d.rstrip("/") + "/" for d in self.config.allowed_directories]
            conn.execute("SET allowed_directories = " + exp.Array(expressions=[exp.Literal.string(f) for f in folders]).sql("duckdb"))
            conn.execute("SET enable_external_access = false")
        return conn

    def relation(self, table: str | None, query: str | None) -> exp.Expression:
        if table is not None:
            raise InvalidQuery(
                f"source {self.display_name}: a parquet source reads the files at its uri and takes no "
                f"table; remove spec.source.table, or filter in spec.source.query using the table name "
                f"'{FILES_TABLE}'"
            )
        files = self._read_parquet()
        if query is None:
            return files
        parsed = parse_query(query, self.dialect, self.display_name)
        named = {FILES_TABLE} | {cte.alias for cte in parsed.find_all(exp.CTE)}
        others = sorted({ref.sql(self.dialect) for ref in parsed.find_all(exp.Table)
                         if ref.name not in named or ref.db or ref.catalog or not isinstance(ref.this, exp.Identifier)})
        if others:
            raise InvalidQuery(
                f"source {self.display_name}: a parquet product's query reads only its own files, as table "
                f"'{FILES_TABLE}'; it references {', '.join(others)}"
            )
        for ref in list(parsed.find_all(exp.Table)):
            if ref.name == FILES_TABLE and not ref.db and not ref.catalog:
                alias = ref.alias or FILES_TABLE  # keep `files.col` references valid
                ref.replace(files.copy().as_(alias))
        return parsed.subquery("_src")

    def modified_at(self) -> datetime | None:
        """The newest of the product's files (a file added to a directory counts too)."""
        return files_modified_at([Path(f) for f in glob.iglob(self._pattern(), recursive=True)])

    def _pattern(self) -> str:
        path = self.config.local_path()
        return str(path / "**" / "*.parquet") if path.is_dir() else str(path)

    def _read_parquet(self) -> exp.Expression:
        """``read_parquet('<pattern>')``: DuckDB expands the pattern when the fragment runs, so
        files added since planning are read too."""
        pattern = self._pattern()
        if next(glob.iglob(pattern, recursive=True), None) is None:
            raise SourceUnavailable(
                f"source {self.display_name}: no parquet files at {pattern}; check spec.source.uri "
                "(a .parquet file, a directory holding them, or a glob)"
            )
        item = f"read_parquet({exp.Literal.string(pattern).sql(self.dialect)})"
        select = sqlglot.parse_one(f"SELECT * FROM {item}", read=self.dialect)
        from_ = select.find(exp.From)
        assert from_ is not None
        return from_.this
