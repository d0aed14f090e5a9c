"""A live demo mesh for integration tests: sources, a gateway on a real socket, and the oracle.

The oracle is one PostgreSQL database holding every product as ``domain.product`` (a schema per
domain), so a test query runs unchanged on both and PostgreSQL's answer is the expected one.
The oracle database uses the C collation, the byte order DataFusion and DuckDB sort strings in.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import adbc_driver_postgresql.dbapi as pg_dbapi
import psycopg2
import pyarrow as pa
from sqlglot import exp

from gateway.audit import AuditLog
from gateway.demo_data import DemoMesh, generate_demo_mesh
from gateway.descriptor import Descriptor
from gateway.engine import conform
from gateway.flight.server import MeshFlightServer
from gateway.registry import Registry
from gateway.service import GatewayService, Settings
from gateway.source_roots import SourceRoots
from policies import ANONYMOUS, Principal
from policies.engine import PolicyEngine


def create_database(admin_uri: str, name: str) -> str:
    conn = psycopg2.connect(admin_uri)
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cur.execute(f"CREATE DATABASE \"{name}\" TEMPLATE template0 ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C'")
    conn.close()
    return urlsplit(admin_uri)._replace(path="/" + name).geturl()


@dataclass
class LiveMesh:
    mesh: DemoMesh
    registry: Registry
    service: GatewayService
    server: MeshFlightServer
    uri: str
    oracle_uri: str

    def close(self) -> None:
        self.server.shutdown()
        self.service.close()


OPEN_POLICIES = Path(__file__).parent / "policies" / "open"
"""Every principal reads every product unmasked: for tests of federation, not of governance."""


def start_gateway(
    registry: Registry,
    settings: Settings = Settings(),
    policies: Path = OPEN_POLICIES,
    principal: Principal = ANONYMOUS,
    source_roots: list[Path] = (),
) -> tuple[GatewayService, MeshFlightServer, str]:
    """A gateway on a free port; every caller is ``principal`` (authentication is tested apart).
    File sources may lie in the registry's folder, where the registered products' files are
    (``data_folders``) and in ``source_roots``."""
    audit = AuditLog(registry.path.parent / f"audit-{uuid.uuid4().hex[:8]}.log")
    roots = SourceRoots.of([registry.path.parent, *data_folders(registry), *source_roots])
    service = GatewayService(registry, settings, PolicyEngine.load(policies), audit, source_roots=roots)
    server = MeshFlightServer("grpc://127.0.0.1:0", service, principal_for=lambda _context: principal)
    return service, server, f"grpc://127.0.0.1:{server.port}"


def data_folders(registry: Registry) -> list[Path]:
    """The folders holding the file sources registered now: a test gateway's source roots."""
    from connectors.base import SourceConfig
    from gateway.source_roots import FILE_CONNECTORS

    return sorted({SourceConfig(d.source.connector, d.source.uri, d.base_dir).local_path().parent
                   for versions in registry.catalog(max_age=0).versions.values() for d in versions
                   if d.source.connector in FILE_CONNECTORS})


def build_live_mesh(tmp: Path, pg_uri: str, scale: float = 0.02) -> LiveMesh:
    shipping_uri = create_database(pg_uri, "demo_shipping")
    mesh = generate_demo_mesh(tmp / "demo", scale=scale, postgres_uri=shipping_uri, progress=False)
    registry = Registry(tmp / "registry.db")
    from gateway.cli import load_descriptors

    descriptors, errors = load_descriptors([mesh.products_dir])
    assert not errors, errors
    registry.register(descriptors)
    service, server, uri = start_gateway(registry)
    oracle_uri = create_database(pg_uri, "oracle")
    load_oracle(service, descriptors, oracle_uri)
    return LiveMesh(mesh, registry, service, server, uri, oracle_uri)


def load_oracle(service: GatewayService, descriptors: list[Descriptor], oracle_uri: str) -> None:
    """Copy every product, read straight from its source and typed by its contract, to PostgreSQL;
    a derived product becomes a view of its query (typed by its contract)."""
    with pg_dbapi.connect(oracle_uri) as conn:
        with conn.cursor() as cur:
            for d in sorted(descriptors, key=lambda d: d.derived):  # views after the tables they read
                if d.derived:
                    casts = ", ".join(f'CAST("{c.name}" AS {c.type.sql}) AS "{c.name}"' for c in d.columns)
                    cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{d.domain}"')
                    cur.execute(f'CREATE VIEW "{d.domain}"."{d.name}" AS SELECT {casts} FROM ({d.source.query}) AS q')
                    continue
                connector = service.sources.connector_for(d)
                relation = connector.relation(d.source.table, d.source.query)
                scan = connector.scan(connector.render(exp.select("*").from_(relation)))
                expected = pa.schema([(c.name, c.type.arrow) for c in d.columns])
                try:
                    table = pa.Table.from_batches([conform(b, expected) for b in scan.reader], schema=expected)
                finally:
                    scan.close()
                cur.execute(f'CREATE SCHEMA IF NOT EXISTS "{d.domain}"')
                cur.adbc_ingest(d.name, table, mode="replace", db_schema_name=d.domain)
        conn.commit()


# --- time, for the freshness-aware cache -----------------------------------------------------


class Clock:
    """A controllable wall clock (epoch seconds) for ``ResultCache(clock=...)``: tests move ``now``."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def demo_clock(registry: Registry, after: float = 3600.0) -> Clock:
    """A clock ``after`` seconds past the oldest of the newest freshness-column values of the
    registered products, so that cache ages in tests are exact whenever the data was generated;
    the real time when no product declares a freshness column."""
    from gateway.sources import SourceManager
    from gateway.watermarks import stalest_newest_data

    sources = SourceManager()
    try:
        newest = stalest_newest_data(registry.catalog().products(), sources.connector_for)
    finally:
        sources.close()
    return Clock(newest + after if newest is not None else time.time())


# --- comparing answers ------------------------------------------------------------------------

_PG_FAMILIES = {16: "bool", 20: "int", 21: "int", 23: "int", 700: "float", 701: "float", 1700: "numeric",
                25: "text", 1043: "text", 19: "text", 1082: "date", 1114: "timestamp", 1184: "timestamptz"}


def arrow_family(t: pa.DataType) -> str:
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_decimal(t):
        return "int" if t.scale == 0 and t.precision >= 38 else "numeric"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "text"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamptz" if t.tz else "timestamp"
    return str(t)


def families_match(pg: str, arrow: str) -> bool:
    """PostgreSQL's numeric covers avg() and sum(bigint), which DataFusion answers in float/int."""
    return pg == arrow or (pg == "numeric" and arrow in ("float", "int")) or (pg == "int" and arrow == "numeric")


def oracle_answer(oracle_uri: str, sql: str, params: tuple = ()) -> tuple[list[str], list[str], list[tuple]]:
    conn = psycopg2.connect(oracle_uri)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(sql.replace("?", "%s") if params else sql, params or None)
            names = [d.name for d in cur.description]
            families = [_PG_FAMILIES.get(d.type_code, str(d.type_code)) for d in cur.description]
            return names, families, [tuple(r) for r in cur.fetchall()]
    finally:
        conn.close()


def normalize(value: Any) -> Any:
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.timezone.utc)
    return value


def values_equal(a: Any, b: Any) -> bool:
    a, b = normalize(a), normalize(b)
    if isinstance(a, float) or isinstance(b, float):
        if a is None or b is None:
            return a is b
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)
    return a == b


def rows_equal(expected: list[tuple], actual: list[tuple], ordered: bool) -> str | None:
    """None when equal, else a description of the first difference."""
    if len(expected) != len(actual):
        return f"{len(actual)} rows, expected {len(expected)}"
    if not ordered:
        key = lambda row: tuple((v is None, str(normalize(v))) for v in row)  # noqa: E731
        expected, actual = sorted(expected, key=key), sorted(actual, key=key)
    for i, (e, a) in enumerate(zip(expected, actual)):
        if len(e) != len(a) or not all(values_equal(x, y) for x, y in zip(e, a)):
            return f"row {i}: got {a!r}, expected {e!r}"
    return None
