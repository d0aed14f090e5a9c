"""Flight SQL metadata and session calls against the live demo mesh: keys from the contracts,
column comments and product descriptions, session options, CancelFlightInfo stopping a query at
its PostgreSQL source, and GetSqlInfo answering every id.

Clients: the ADBC Flight SQL driver where it issues the call (session options, table schemas),
pyarrow.flight for the commands ADBC does not send (keys, CancelFlightInfo).
"""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import adbc_driver_flightsql.dbapi as flightsql
import psycopg2
import pyarrow as pa
import pyarrow.flight as flight
import pytest
from adbc_driver_flightsql import ConnectionOptions

from gateway.auth import Authenticator
from gateway.flight import FlightSql_pb2 as pb
from gateway.flight.server import FOREIGN_KEYS_SCHEMA, PRIMARY_KEYS_SCHEMA, MeshFlightServer, pack
from gateway.flight.sessions import COOKIE
from gateway.flight.sql_info import SQL_INFO_SCHEMA
from gateway.users import UsersFile, add_user
from tests.mesh import LiveMesh

pytestmark = pytest.mark.postgres

REMARKS = b"ARROW:FLIGHT:SQL:REMARKS"
WITH_COOKIES = {"adbc.flight.sql.rpc.with_cookie_middleware": "true"}
SESSION_OPTION = ConnectionOptions.OPTION_SESSION_OPTION_PREFIX.value
ERASE_SESSION_OPTION = ConnectionOptions.OPTION_ERASE_SESSION_OPTION_PREFIX.value


@pytest.fixture
def client(live_mesh: LiveMesh) -> Iterator[flight.FlightClient]:
    with flight.connect(live_mesh.uri) as connected:
        yield connected


def fetch(client: flight.FlightClient, command: Any) -> pa.Table:
    info = client.get_flight_info(flight.FlightDescriptor.for_command(pack(command)))
    table = client.do_get(info.endpoints[0].ticket).read_all()
    assert table.schema.equals(info.schema)
    return table


# --- keys from the contracts ------------------------------------------------------------------


def test_primary_keys_come_from_the_contract(client: flight.FlightClient) -> None:
    table = fetch(client, pb.CommandGetPrimaryKeys(db_schema="orders", table="order_items"))
    assert table.schema.equals(PRIMARY_KEYS_SCHEMA)
    assert table.to_pylist() == [
        {"catalog_name": "mesh", "db_schema_name": "orders", "table_name": "order_items", "column_name": column,
         "key_sequence": position, "key_name": "order_items_pkey"}
        for position, column in ((1, "order_id"), (2, "line_no"))  # composite, in contract order
    ]
    single = fetch(client, pb.CommandGetPrimaryKeys(catalog="mesh", table="customers"))
    assert [(r["db_schema_name"], r["column_name"]) for r in single.to_pylist()] == [("customers", "customer_id")]
    assert fetch(client, pb.CommandGetPrimaryKeys(catalog="", table="customers")).num_rows == 0  # '' is no catalog
    assert fetch(client, pb.CommandGetPrimaryKeys(db_schema="orders", table="nope")).num_rows == 0


def test_imported_keys_are_the_references_of_a_table(client: flight.FlightClient) -> None:
    table = fetch(client, pb.CommandGetImportedKeys(db_schema="shipping", table="shipments"))
    assert table.schema.equals(FOREIGN_KEYS_SCHEMA)
    rows = table.to_pylist()
    # ordered by the referenced table: orders.orders, then shipping.carriers
    assert [(r["pk_db_schema_name"], r["pk_table_name"], r["pk_column_name"], r["fk_column_name"]) for r in rows] == [
        ("orders", "orders", "order_id", "order_id"),
        ("shipping", "carriers", "carrier_id", "carrier_id"),
    ]
    first = rows[0]
    assert (first["pk_catalog_name"], first["fk_catalog_name"], first["fk_db_schema_name"], first["fk_table_name"]) == (
        "mesh", "mesh", "shipping", "shipments")
    assert (first["key_sequence"], first["fk_key_name"], first["pk_key_name"]) == (1, "shipments_order_id_fkey", "orders_pkey")
    assert {(r["update_rule"], r["delete_rule"]) for r in rows} == {(pb.NO_ACTION, pb.NO_ACTION)}  # read-only


def test_exported_keys_are_the_references_to_a_table(client: flight.FlightClient) -> None:
    rows = fetch(client, pb.CommandGetExportedKeys(catalog="mesh", db_schema="orders", table="orders")).to_pylist()
    referencing = [(r["fk_db_schema_name"], r["fk_table_name"], r["fk_column_name"]) for r in rows]
    assert referencing == sorted(referencing)  # ordered by the referencing table
    # every listed name of a referencing product (the pinned majors too, as GetTables lists them)
    assert {(s, t) for s, t, _ in referencing} == {
        ("orders", "order_items"), ("orders", "order_items@1"), ("payments", "payments"), ("payments", "payments@1"),
        ("shipping", "shipments"), ("shipping", "shipments@1"),
    }
    assert {(r["pk_table_name"], r["pk_column_name"], r["pk_key_name"]) for r in rows} == {("orders", "order_id", "orders_pkey")}


def test_cross_reference_names_one_pair_of_tables(client: flight.FlightClient) -> None:
    command = pb.CommandGetCrossReference(pk_db_schema="customers", pk_table="segments", fk_db_schema="customers", fk_table="customers")
    (row,) = fetch(client, command).to_pylist()
    assert (row["pk_column_name"], row["fk_column_name"], row["fk_key_name"]) == ("segment", "segment", "customers_segment_fkey")
    unrelated = pb.CommandGetCrossReference(pk_table="carriers", fk_table="customers")
    assert fetch(client, unrelated).num_rows == 0


# --- descriptions -----------------------------------------------------------------------------


def test_column_comments_and_product_description_travel_with_the_schema(live_mesh: LiveMesh) -> None:
    with flightsql.connect(live_mesh.uri, autocommit=True) as conn:
        schema = conn.adbc_get_table_schema("customers", db_schema_filter="customers", catalog_filter="mesh")
    assert schema.field("customer_id").metadata[REMARKS] == b"Stable customer id"
    assert schema.field("email").metadata[REMARKS].startswith(b"Contact address")
    assert schema.metadata[REMARKS].startswith(b"Every customer with contact details")


def test_get_tables_schema_carries_the_remarks(client: flight.FlightClient) -> None:
    command = pb.CommandGetTables(db_schema_filter_pattern="shipping", table_name_filter_pattern="carriers", include_schema=True)
    (row,) = fetch(client, command).to_pylist()
    schema = pa.ipc.read_schema(pa.py_buffer(row["table_schema"]))
    assert schema.field("promised_days").metadata[REMARKS] == b"Promised days from hand-over to delivery"
    assert REMARKS in schema.metadata


# --- session options --------------------------------------------------------------------------


def test_session_options_through_adbc(live_mesh: LiveMesh) -> None:
    with flightsql.connect(live_mesh.uri, db_kwargs=WITH_COOKIES, autocommit=True) as conn:
        assert conn.adbc_current_catalog == "mesh"
        conn.adbc_current_db_schema = "orders"
        assert conn.adbc_current_db_schema == "orders"
        conn.adbc_connection.set_options(**{SESSION_OPTION + "max_staleness": "5m"})
        assert conn.adbc_connection.get_option(SESSION_OPTION + "max_staleness") == "5m"
        for name, value, message in (("schema", "no_such_domain", "'schema' (invalid value)"),
                                     ("catalog", "other", "'catalog' (invalid value)"),
                                     ("max_staleness", "soon", "'max_staleness' (invalid value)"),
                                     ("colour", "blue", "'colour' (invalid name)")):
            with pytest.raises(flightsql.ProgrammingError, match=re.escape(message)):
                conn.adbc_connection.set_options(**{SESSION_OPTION + name: value})
        assert conn.adbc_current_db_schema == "orders"  # refused values change nothing
        conn.adbc_connection.set_options(**{ERASE_SESSION_OPTION + "max_staleness": ""})
        with pytest.raises(flightsql.Error):
            conn.adbc_connection.get_option(SESSION_OPTION + "max_staleness")
        with conn.cursor() as cur:  # queries still run in a session
            cur.execute("SELECT count(*) AS n FROM orders.orders")
            qualified = cur.fetch_arrow_table().column("n")[0].as_py()
            assert qualified > 0
            cur.execute("SELECT count(*) AS n FROM orders")  # the session's schema resolves it
            assert cur.fetch_arrow_table().column("n")[0].as_py() == qualified
            conn.adbc_current_db_schema = "customers"
            cur.execute("SELECT count(*) AS n FROM segments")
            assert cur.fetch_arrow_table().column("n")[0].as_py() == 5
    with flightsql.connect(live_mesh.uri, db_kwargs=WITH_COOKIES, autocommit=True) as other:
        with pytest.raises(flightsql.Error, match="current schema"):
            other.adbc_current_db_schema  # another connection, another session  # noqa: B018


class CookieJar(flight.ClientMiddlewareFactory):
    """A client that keeps the session cookie, as JDBC does."""

    def __init__(self, cookie: str | None = None) -> None:
        self.cookie = cookie

    def start_call(self, info: flight.CallInfo) -> flight.ClientMiddleware:
        return _JarCall(self)


class _JarCall(flight.ClientMiddleware):
    def __init__(self, jar: CookieJar) -> None:
        self.jar = jar

    def sending_headers(self) -> dict[str, str]:
        return {"cookie": f"{COOKIE}={self.jar.cookie}"} if self.jar.cookie else {}

    def received_headers(self, headers: dict[str, list[str]]) -> None:
        for value in headers.get("set-cookie", []):
            name, _, rest = value.partition("=")
            if name == COOKIE:
                self.jar.cookie = rest.split(";")[0]


def _action(client: flight.FlightClient, kind: str, request: Any, token: str) -> bytes:
    options = flight.FlightCallOptions(headers=[(b"authorization", token.encode())])
    (result,) = client.do_action(flight.Action(kind, request.SerializeToString()), options)
    return result.body.to_pybytes()


def test_a_session_belongs_to_its_principal_and_close_forgets_it(live_mesh: LiveMesh, tmp_path: Path) -> None:
    users = tmp_path / "users.yaml"
    add_user(users, "alice", "a-pw", ["analyst"], {})
    add_user(users, "bob", "b-pw", ["analyst"], {})
    with MeshFlightServer("grpc://127.0.0.1:0", live_mesh.service, authenticator=Authenticator(UsersFile(users))) as server:
        uri = f"grpc://127.0.0.1:{server.port}"
        jar = CookieJar()
        with flight.connect(uri, middleware=[jar]) as alice:
            token = alice.authenticate_basic_token("alice", "a-pw")[1].decode()
            schema = pb.SetSessionOptionsRequest(session_options={"schema": pb.SessionOptionValue(string_value="orders")})
            assert not pb.SetSessionOptionsResult.FromString(_action(alice, "SetSessionOptions", schema, token)).errors
            options = pb.GetSessionOptionsResult.FromString(_action(alice, "GetSessionOptions", pb.GetSessionOptionsRequest(), token))
            assert options.session_options["schema"].string_value == "orders"
            assert jar.cookie
        with flight.connect(uri, middleware=[CookieJar(jar.cookie)]) as bob:  # alice's cookie, bob's login
            token = bob.authenticate_basic_token("bob", "b-pw")[1].decode()
            options = pb.GetSessionOptionsResult.FromString(_action(bob, "GetSessionOptions", pb.GetSessionOptionsRequest(), token))
            assert "schema" not in options.session_options
            with pytest.raises(pa.ArrowKeyError, match="session not found"):
                _action(bob, "SetSessionOptions", schema, token)
        with flight.connect(uri, middleware=[jar]) as alice:
            token = alice.authenticate_basic_token("alice", "a-pw")[1].decode()
            closed = pb.CloseSessionResult.FromString(_action(alice, "CloseSession", pb.CloseSessionRequest(), token))
            assert closed.status == pb.CloseSessionResult.CLOSED
            options = pb.GetSessionOptionsResult.FromString(_action(alice, "GetSessionOptions", pb.GetSessionOptionsRequest(), token))
            assert dict(options.session_options) == {"catalog": pb.SessionOptionValue(string_value="mesh")}


# --- cancellation -----------------------------------------------------------------------------

SLEEP = "pg_sleep(19)"  # a marker no other test uses


def _sleeping(pg_uri: str) -> int:
    conn = psycopg2.connect(pg_uri)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE %s AND state = 'active' AND pid <> pg_backend_pid()",
                        (f"%{SLEEP}%",))
            return cur.fetchone()[0]
    finally:
        conn.close()


def _wait_for(condition: Any, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_cancel_flight_info_stops_the_query_at_its_postgresql_source(live_mesh: LiveMesh, pg_uri: str) -> None:
    command = pb.CommandStatementQuery(query=f"SELECT {SLEEP} AS slept, k.name FROM shipping.carriers k")
    outcome: dict[str, BaseException] = {}
    with flight.connect(live_mesh.uri) as reader_client, flight.connect(live_mesh.uri) as control:
        info = control.get_flight_info(flight.FlightDescriptor.for_command(pack(command)))

        def read() -> None:
            try:
                stream = reader_client.do_get(info.endpoints[0].ticket)
                while True:  # not read_all(): on CANCELLED pyarrow's client simulates a Ctrl-C
                    stream.read_chunk()
            except BaseException as error:  # noqa: BLE001 - the outcome is what the test checks
                outcome["error"] = error

        reading = threading.Thread(target=read, daemon=True)
        reading.start()
        assert _wait_for(lambda: _sleeping(pg_uri) == 1, 15), "the query never reached PostgreSQL"
        started = time.monotonic()
        request = pb.ActionCancelQueryRequest(info=info.serialize())  # CancelFlightInfoRequest's wire form
        (result,) = control.do_action(flight.Action("CancelFlightInfo", request.SerializeToString()))
        assert pb.ActionCancelQueryResult.FromString(result.body.to_pybytes()).result == pb.ActionCancelQueryResult.CANCEL_RESULT_CANCELLED
        reading.join(15)
        assert isinstance(outcome.get("error"), flight.FlightCancelledError), outcome
        assert _wait_for(lambda: _sleeping(pg_uri) == 0, 5), f"{SLEEP} still running at the source"
        assert time.monotonic() - started < 10


# --- GetSqlInfo -------------------------------------------------------------------------------


def test_sql_info_answers_every_id_clients_ask_on_connect(client: flight.FlightClient) -> None:
    """JDBC asks for every id at once and reads each with its spec type; ADBC asks for the vendor
    ones.  Only the Substrait versions are left unanswered (no Substrait support: NULL)."""
    table = fetch(client, pb.CommandGetSqlInfo())
    assert table.schema.equals(SQL_INFO_SCHEMA)
    answered = set(table.column("info_name").to_pylist())
    unanswered = {name for name in pb.SqlInfo.keys() if pb.SqlInfo.Value(name) not in answered}
    assert unanswered == {"FLIGHT_SQL_SERVER_SUBSTRAIT_MIN_VERSION", "FLIGHT_SQL_SERVER_SUBSTRAIT_MAX_VERSION"}
    values = dict(zip(table.column("info_name").to_pylist(), table.column("value").to_pylist()))
    assert values[pb.FLIGHT_SQL_SERVER_CANCEL] is True and values[pb.SQL_TRANSACTIONS_SUPPORTED] is False
