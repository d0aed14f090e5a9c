"""SHOW, DESCRIBE, information_schema and Flight SQL metadata answer from the registry."""

from __future__ import annotations

import adbc_driver_flightsql.dbapi as flightsql
import pytest

from tests.mesh import LiveMesh

pytestmark = pytest.mark.postgres


def rows(live: LiveMesh, sql: str) -> list[dict]:
    with flightsql.connect(live.uri) as conn, conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetch_arrow_table().to_pylist()


def test_show_schemas_lists_every_domain(live_mesh: LiveMesh) -> None:
    names = [r["schema_name"] for r in rows(live_mesh, "SHOW SCHEMAS")]
    assert {"customers", "orders", "payments", "shipping", "information_schema"} <= set(names)


def test_show_tables_lists_products_and_pinned_majors(live_mesh: LiveMesh) -> None:
    tables = {(r["table_schema"], r["table_name"]) for r in rows(live_mesh, "SHOW TABLES")}
    assert ("orders", "orders") in tables and ("orders", "orders@1") in tables
    assert ("shipping", "carriers") in tables


def test_describe_gives_contract_columns_in_order(live_mesh: LiveMesh) -> None:
    described = rows(live_mesh, "DESCRIBE orders.orders")
    assert [r["column_name"] for r in described] == ["order_id", "customer_id", "order_ts", "status", "total_amount", "currency"]
    assert described[2]["data_type"] == "timestamptz" and described[4]["data_type"] == "numeric(12,2)"
    assert described[0]["is_nullable"] == "NO"


def test_describe_unknown_product_is_not_found(live_mesh: LiveMesh) -> None:
    with pytest.raises(flightsql.Error, match="unknown data product 'orders.order'"):
        rows(live_mesh, "DESCRIBE orders.order")


def test_information_schema_is_queryable_like_any_table(live_mesh: LiveMesh) -> None:
    result = rows(
        live_mesh,
        "SELECT table_schema, count(*) AS columns FROM information_schema.columns "
        "WHERE table_name NOT LIKE '%@%' GROUP BY table_schema ORDER BY table_schema",
    )
    assert {r["table_schema"]: r["columns"] for r in result}["orders"] == 16  # orders (6), order_items (5), revenue_by_country (5)


def test_adbc_metadata_calls_against_the_live_mesh(live_mesh: LiveMesh) -> None:
    with flightsql.connect(live_mesh.uri) as conn:
        objects = conn.adbc_get_objects(depth="all", db_schema_filter="orders").read_all().to_pylist()
        catalog = objects[0]
        assert catalog["catalog_name"] == "mesh"
        schema = catalog["catalog_db_schemas"][0]
        assert schema["db_schema_name"] == "orders"
        tables = {t["table_name"]: t for t in schema["db_schema_tables"]}
        assert [c["column_name"] for c in tables["orders"]["table_columns"]][:2] == ["order_id", "customer_id"]
        arrow_schema = conn.adbc_get_table_schema("order_items", db_schema_filter="orders")
        assert arrow_schema.names == ["order_id", "line_no", "product_sku", "quantity", "unit_price"]
        assert str(arrow_schema.field("unit_price").type) == "decimal128(10, 2)"
        assert "TABLE" in conn.adbc_get_table_types()
        info = conn.adbc_get_info()
        assert info["vendor_name"] == "meshgate"


def test_result_columns_carry_decimal_precision_for_jdbc(live_mesh: LiveMesh) -> None:
    """JDBC's ResultSetMetaData reads precision and scale from the announced result schema."""
    import pyarrow.flight as flight

    from gateway.flight import FlightSql_pb2 as pb
    from gateway.flight.server import pack

    client = flight.FlightClient(live_mesh.uri)
    command = pb.CommandStatementQuery(query="SELECT order_id, total_amount FROM orders.orders LIMIT 1")
    info = client.get_flight_info(flight.FlightDescriptor.for_command(pack(command)))
    metadata = info.schema.field("total_amount").metadata
    assert metadata[b"ARROW:FLIGHT:SQL:PRECISION"] == b"12" and metadata[b"ARROW:FLIGHT:SQL:SCALE"] == b"2"
    assert metadata[b"ARROW:FLIGHT:SQL:TYPE_NAME"] == b"numeric"
    client.close()
